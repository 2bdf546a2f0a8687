"""A functional KV cache with prefill, decode and rollback.

Slots [0, length) are written; `valid_bs` says which of them hold real tokens
(left padding, or a row whose span was rolled back). Rolling back to an earlier
length is exact: later slots become invalid and are overwritten by the next
write. MIM uses this to replace a `<start> … <end>` description with the 32
embeddings of the image rendered from it (spec §2).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
  k_lbskh: jax.Array  # (layers, batch, max_length, kv_heads, head_dim), RoPE applied
  v_lbskh: jax.Array
  valid_bs: jax.Array  # bool (batch, max_length)
  length: jax.Array  # int32 scalar: next slot to write

  @classmethod
  def create(cls, num_layers: int, batch: int, max_length: int, num_kv_heads: int, head_dim: int,
             dtype=jnp.float32) -> "KVCache":
    shape = (num_layers, batch, max_length, num_kv_heads, head_dim)
    return cls(
        k_lbskh=jnp.zeros(shape, dtype),
        v_lbskh=jnp.zeros(shape, dtype),
        valid_bs=jnp.zeros((batch, max_length), bool),
        length=jnp.zeros((), jnp.int32),
    )

  @property
  def max_length(self) -> int:
    return self.valid_bs.shape[1]

  def rollback(self, length: jax.Array | int) -> "KVCache":
    """Forgets every slot at or after `length`."""
    length = jnp.asarray(length, jnp.int32)
    keep_s = jnp.arange(self.max_length) < length
    return self.replace(valid_bs=self.valid_bs & keep_s[None, :], length=length)

  def attention_mask(self, valid_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mask_bts, new valid_bs) for writing t tokens at `length`: each new token
    sees valid earlier slots and the new tokens up to itself."""
    t = valid_bt.shape[1]
    if self.length.ndim:  # traced scalars only; guards against a per-row length
      raise ValueError("KVCache.length must be a scalar")
    valid_bs = jax.lax.dynamic_update_slice(self.valid_bs, valid_bt.astype(bool), (0, self.length))
    slots_s = jnp.arange(self.max_length)
    upto_ts = slots_s[None, :] <= self.length + jnp.arange(t)[:, None]
    return valid_bs[:, None, :] & upto_ts[None, :, :], valid_bs
