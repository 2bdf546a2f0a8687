"""Model definitions (Flax Linen). Params are plain nested dicts."""
