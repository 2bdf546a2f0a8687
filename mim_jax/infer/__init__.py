"""Inference: KV-cache decoding and sampling."""
