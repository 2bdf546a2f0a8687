"""Offline pipeline: image–caption pairs → multi-turn interleaved conversations → TFDS.

May import mim_jax (CLIP, formats); mim_jax never imports data_gen.
"""
