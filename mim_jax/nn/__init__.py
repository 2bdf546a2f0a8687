"""Shared neural-network building blocks: attention, norms, RoPE, MLP, sharding."""
