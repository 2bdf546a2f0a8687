"""The convolutional pieces diffusers' UNet and VAE share, NHWC: sinusoidal
timestep embeddings, ResnetBlock2D, Downsample2D and Upsample2D.

Module names are diffusers' attribute names (`conv1`, `time_emb_proj`,
`conv_shortcut`), with list indices as `_<i>`, so the weight mapping in
convert/diffusers.py is derived from the parameter tree itself.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def timestep_embedding(timesteps_b: jax.Array, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> jax.Array:
  """diffusers' get_timestep_embedding (max period 10000), float32 (b, dim)."""
  half = dim // 2
  exponent = -math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  angles_bh = timesteps_b.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  sin, cos = jnp.sin(angles_bh), jnp.cos(angles_bh)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def conv(features: int, kernel: int, dtype: Dtype, name: str | None = None, stride: int = 1,
         padding: int | None = None) -> nn.Conv:
  """A square conv with torch's symmetric padding (`(kernel - 1) // 2` unless given); `name` None in setup()."""
  pad = (kernel - 1) // 2 if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 dtype=dtype, name=name)


def group_norm(groups: int, eps: float, dtype: Dtype, name: str) -> nn.GroupNorm:
  # Statistics in float32 whatever `dtype` (flax's force_float32_reductions default).
  return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype, name=name)


class TimestepEmbedding(nn.Module):
  """linear_1 → SiLU → linear_2."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bd: jax.Array) -> jax.Array:
    x_bd = nn.Dense(self.features, dtype=self.dtype, name="linear_1")(x_bd)
    return nn.Dense(self.features, dtype=self.dtype, name="linear_2")(nn.silu(x_bd))


class ResnetBlock2D(nn.Module):
  """norm → SiLU → conv (+ projected time embedding) → norm → SiLU → conv, plus a
  1x1-projected shortcut when the width changes; `temb` None for the VAE."""

  out_channels: int
  groups: int
  eps: float
  output_scale_factor: float = 1.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bhwc: jax.Array, temb_bd: jax.Array | None) -> jax.Array:
    h = nn.silu(group_norm(self.groups, self.eps, self.dtype, "norm1")(x_bhwc))
    h = conv(self.out_channels, 3, self.dtype, "conv1")(h)
    if temb_bd is not None:
      h = h + nn.Dense(self.out_channels, dtype=self.dtype, name="time_emb_proj")(nn.silu(temb_bd))[:, None, None, :]
    h = nn.silu(group_norm(self.groups, self.eps, self.dtype, "norm2")(h))
    h = conv(self.out_channels, 3, self.dtype, "conv2")(h)
    if x_bhwc.shape[-1] != self.out_channels:
      x_bhwc = conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x_bhwc)
    out = x_bhwc + h
    return out if self.output_scale_factor == 1.0 else out / self.output_scale_factor


class Downsample2D(nn.Module):
  """A stride-2 3x3 conv; `padding` 0 (the VAE encoder) pads only bottom/right, as diffusers does."""

  channels: int
  padding: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    if self.padding == 0:
      x_bhwc = jnp.pad(x_bhwc, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return conv(self.channels, 3, self.dtype, "conv", stride=2, padding=self.padding)(x_bhwc)


class Upsample2D(nn.Module):
  """Nearest-neighbour 2x, then a 3x3 conv."""

  channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    x_bhwc = jnp.repeat(jnp.repeat(x_bhwc, 2, axis=1), 2, axis=2)
    return conv(self.channels, 3, self.dtype, "conv")(x_bhwc)
