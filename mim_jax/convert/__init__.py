"""Checkpoint conversion: one mapping table per model family, HF/diffusers <-> ours."""
