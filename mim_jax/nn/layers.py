"""Norms and feed-forward blocks with logical-axis annotated params."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.nn.sharding import constrain

Dtype = Any


class RMSNorm(nn.Module):
  """Llama's RMSNorm: normalise in float32, scale in the input dtype."""

  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],), self.param_dtype
    )
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * normed.astype(self.dtype)


def dense_param(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...], dtype: Dtype,
                fan_in: int) -> jax.Array:
  """A kernel with logical axes, initialised N(0, 1/fan_in) (scaled normal)."""
  init = nn.initializers.normal(stddev=fan_in**-0.5)
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class SwiGLU(nn.Module):
  """down(silu(gate(x)) * up(x)), Llama's feed-forward block."""

  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_btd: jax.Array) -> jax.Array:
    d = x_btd.shape[-1]
    gate_df = dense_param(self, "gate_kernel", (d, self.mlp_dim), ("embed", "mlp"), self.param_dtype, d)
    up_df = dense_param(self, "up_kernel", (d, self.mlp_dim), ("embed", "mlp"), self.param_dtype, d)
    down_fd = dense_param(self, "down_kernel", (self.mlp_dim, d), ("mlp", "embed"), self.param_dtype, self.mlp_dim)
    x_btd = x_btd.astype(self.dtype)
    gate_btf = jnp.einsum("btd,df->btf", x_btd, gate_df.astype(self.dtype))
    up_btf = jnp.einsum("btd,df->btf", x_btd, up_df.astype(self.dtype))
    hidden_btf = constrain(nn.silu(gate_btf) * up_btf, ("batch", "length", "act_mlp"))
    return jnp.einsum("btf,fd->btd", hidden_btf, down_fd.astype(self.dtype))
