"""diffusers' Transformer2DModel as SD uses it: GroupNorm, a projection in
(1x1 conv, or Linear for SD 2.x/XL's use_linear_projection), BasicTransformerBlocks
(self-attention, cross-attention to the text, GEGLU feed-forward, pre-LayerNorm
residuals), a projection out, and the residual around all of it."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models.diffusion.layers import conv, group_norm
from mim_jax.nn.attention import dot_product_attention

Dtype = Any


class Attention(nn.Module):
  """Multi-head attention with diffusers' names (to_q, to_k, to_v, to_out_0), no
  q/k/v biases; self-attention when `context_bsd` is None."""

  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x_btd: jax.Array, context_bsd: jax.Array | None = None) -> jax.Array:
    context_bsd = x_btd if context_bsd is None else context_bsd
    inner = self.num_heads * self.head_dim
    project = lambda name, y: nn.Dense(inner, use_bias=False, dtype=self.dtype, name=name)(y).reshape(
        *y.shape[:2], self.num_heads, self.head_dim)
    q_btnh, k_bsnh, v_bsnh = project("to_q", x_btd), project("to_k", context_bsd), project("to_v", context_bsd)
    out_btnh = dot_product_attention(q_btnh, k_bsnh, v_bsnh, None, impl=self.attention_impl)
    return nn.Dense(x_btd.shape[-1], dtype=self.dtype, name="to_out_0")(out_btnh.reshape(*x_btd.shape[:2], inner))


class GEGLU(nn.Module):
  """proj to 2f, then value * gelu(gate) (exact GELU), as diffusers' GEGLU."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_btd: jax.Array) -> jax.Array:
    value_btf, gate_btf = jnp.split(nn.Dense(2 * self.features, dtype=self.dtype, name="proj")(x_btd), 2, axis=-1)
    return value_btf * nn.gelu(gate_btf, approximate=False)


class FeedForward(nn.Module):
  """net_0 (GEGLU to 4d) → net_2 (Linear back to d); net_1 is diffusers' dropout."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_btd: jax.Array) -> jax.Array:
    d = x_btd.shape[-1]
    hidden_btf = GEGLU(4 * d, self.dtype, name="net_0")(x_btd)
    return nn.Dense(d, dtype=self.dtype, name="net_2")(hidden_btf)


class BasicTransformerBlock(nn.Module):
  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x_btd: jax.Array, context_bsd: jax.Array) -> jax.Array:
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)
    attention = lambda name: Attention(self.num_heads, self.head_dim, self.dtype, self.attention_impl, name=name)
    x_btd = x_btd + attention("attn1")(norm("norm1")(x_btd))
    x_btd = x_btd + attention("attn2")(norm("norm2")(x_btd), context_bsd)
    return x_btd + FeedForward(self.dtype, name="ff")(norm("norm3")(x_btd))


class Transformer2DModel(nn.Module):
  num_heads: int
  head_dim: int
  num_layers: int
  groups: int
  use_linear_projection: bool
  dtype: Dtype = jnp.float32
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x_bhwc: jax.Array, context_bsd: jax.Array) -> jax.Array:
    b, h, w, c = x_bhwc.shape
    inner = self.num_heads * self.head_dim
    # A 1x1 conv and a Linear are the same map in NHWC; the module type only
    # decides the checkpoint's weight shape ((out, in, 1, 1) vs (out, in)).
    project = lambda features, name: (nn.Dense(features, dtype=self.dtype, name=name) if self.use_linear_projection
                                      else conv(features, 1, self.dtype, name))
    hidden = project(inner, "proj_in")(group_norm(self.groups, 1e-6, self.dtype, "norm")(x_bhwc))
    hidden_btd = hidden.reshape(b, h * w, inner)
    for i in range(self.num_layers):
      hidden_btd = BasicTransformerBlock(self.num_heads, self.head_dim, self.dtype, self.attention_impl,
                                         name=f"transformer_blocks_{i}")(hidden_btd, context_bsd)
    return x_bhwc + project(c, "proj_out")(hidden_btd.reshape(b, h, w, inner))
