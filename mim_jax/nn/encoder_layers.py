"""Pieces of the BERT/ViT-style encoder towers (EVA ViT, Q-Former): LayerNorm
with a bias, biased projections and the exact-GELU MLP, all with logical axes.

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
