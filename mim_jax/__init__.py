"""mim-jax: TextBind's MIM (multi-turn interleaved multimodal model) in JAX/Flax."""
