"""Rotary position embeddings (HF Llama's rotate-half layout).

Positions are always explicit: caption branches re-use the positions of the
image they describe, so positions are not `arange(length)` in general.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

SCALING_TYPES = ("default", "linear", "llama3")


def inverse_frequencies(
    head_dim: int,
    theta: float,
    scaling_type: str = "default",
    factor: float = 1.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    original_max_positions: int = 8192,
) -> np.ndarray:
  """The per-pair rotation frequencies, float32, shape (head_dim // 2,)."""
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
  if scaling_type == "default":
    return inv_freq.astype(np.float32)
  if scaling_type == "linear":
    return (inv_freq / factor).astype(np.float32)
  if scaling_type == "llama3":
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend between.
    low_freq_wavelen = original_max_positions / low_freq_factor
    high_freq_wavelen = original_max_positions / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max_positions / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)
  raise ValueError(f"rope scaling type {scaling_type!r} is not one of {SCALING_TYPES}")


def apply_rope(x_btnh: jax.Array, positions_bt: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates pairs (i, i + h/2) of each head by position * frequency."""
  angles_bth = positions_bt[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
  angles_bth = jnp.concatenate([angles_bth, angles_bth], axis=-1)
  cos = jnp.cos(angles_bth)[:, :, None, :].astype(x_btnh.dtype)
  sin = jnp.sin(angles_bth)[:, :, None, :].astype(x_btnh.dtype)
  first, second = jnp.split(x_btnh, 2, axis=-1)
  rotated = jnp.concatenate([-second, first], axis=-1)
  return x_btnh * cos + rotated * sin
