"""Pieces of the BERT/ViT-style encoder towers (EVA ViT, CLIP, Q-Former): LayerNorm
with a bias, biased projections, the exact-GELU MLP and the ViT patch embedding,
all with logical axes.

Each tower names its own axes (`vit_embed`, `qformer_mlp`, ...) because its
widths differ from the LLM's, so the modules take axis names as fields.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.nn.layers import dense_param
from mim_jax.nn.sharding import constrain

Dtype = Any


def bias_param(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str | None, ...],
               dtype: Dtype) -> jax.Array:
  return module.param(name, nn.with_logical_partitioning(nn.initializers.zeros, axes), shape, dtype)


class LayerNorm(nn.Module):
  """torch.nn.LayerNorm (biased variance); statistics in float32 whatever the dtype."""

  eps: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (d,), self.param_dtype)
    bias = bias_param(self, "bias", (d,), ("norm",), self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    centered = x32 - mean
    normed = centered * jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + self.eps)
    return (normed * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class Dense(nn.Module):
  """x @ kernel + bias over the last axis; `axes` names (in, out) of the kernel."""

  features: int
  axes: tuple[str, str]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    kernel_df = dense_param(self, "kernel", (d, self.features), self.axes, self.param_dtype, d)
    bias_f = bias_param(self, "bias", (self.features,), self.axes[1:], self.param_dtype)
    y = jnp.einsum("...d,df->...f", x.astype(self.dtype), kernel_df.astype(self.dtype))
    return y + bias_f.astype(self.dtype)


class GeluMLP(nn.Module):
  """fc2(gelu(fc1(x))) with biases and the exact (erf) GELU, HF's "gelu"."""

  mlp_dim: int
  embed_axis: str
  mlp_axis: str
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_btd: jax.Array) -> jax.Array:
    d = x_btd.shape[-1]
    dense = lambda features, axes, name: Dense(features, axes, self.dtype, self.param_dtype, name=name)
    hidden_btf = dense(self.mlp_dim, (self.embed_axis, self.mlp_axis), "fc1")(x_btd)
    hidden_btf = constrain(nn.gelu(hidden_btf, approximate=False), ("batch", "length", "act_mlp"))
    return dense(d, (self.mlp_axis, self.embed_axis), "fc2")(hidden_btf)


def embed_patches(module: nn.Module, cfg, pixels_bhwc: jax.Array, *, patch_bias: bool, preprocess: str) -> jax.Array:
  """A ViT's input: the patch conv (as a matmul over non-overlapping patches,
  row-major over the grid like the conv's flatten(2)), a class token and
  learned positions → (b, 1 + grid², embed_dim). `cfg` has image_size,
  patch_size, embed_dim, grid_size, num_positions, init_std and the dtypes;
  `preprocess` names the module users should preprocess with."""
  size, p, d, g = cfg.image_size, cfg.patch_size, cfg.embed_dim, cfg.grid_size
  if pixels_bhwc.ndim != 4 or pixels_bhwc.shape[1:] != (size, size, 3):
    raise ValueError(f"pixels must be NHWC (batch, {size}, {size}, 3), got shape {pixels_bhwc.shape}; "
                     f"preprocess images with {preprocess}")
  pd, cd = cfg.weight_dtype, cfg.compute_dtype
  init = nn.initializers.normal(stddev=cfg.init_std)
  kernel_ppcd = dense_param(module, "patch_kernel", (p, p, 3, d), (None, None, None, "vit_embed"), pd, p * p * 3)
  bias_d = bias_param(module, "patch_bias", (d,), ("vit_embed",), pd) if patch_bias else None
  class_d = module.param("class_embedding", nn.with_logical_partitioning(init, ("vit_embed",)), (d,), pd)
  positions_td = module.param(
      "position_embedding", nn.with_logical_partitioning(init, (None, "vit_embed")), (cfg.num_positions, d), pd)
  b = pixels_bhwc.shape[0]
  patches_btk = pixels_bhwc.astype(cd).reshape(b, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5)
  patches_btk = patches_btk.reshape(b, g * g, p * p * 3)
  x_btd = jnp.einsum("btk,kd->btd", patches_btk, kernel_ppcd.reshape(p * p * 3, d).astype(cd))
  if bias_d is not None:
    x_btd = x_btd + bias_d.astype(cd)
  class_b1d = jnp.broadcast_to(class_d.astype(cd), (b, 1, d))
  return jnp.concatenate([class_b1d, x_btd], axis=1) + positions_td.astype(cd)
