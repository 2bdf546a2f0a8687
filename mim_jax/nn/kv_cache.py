"""A functional KV cache with prefill, decode and rollback.

Slots [0, length) are written; `valid_bs` says which of them hold real tokens
(left padding, or a row whose span was rolled back). Rolling back to an earlier
length is exact: later slots become invalid and are overwritten by the next
write. MIM uses this to replace a `<start> … <end>` description with the 32
embeddings of the image rendered from it (spec §2).

In a batch the write index is shared, so one row cannot move it back alone:
`rollback_rows` forgets a row's slots from its own index on, and `compact`
moves every row's valid slots to the front (in order), which reclaims the gaps
that rollbacks and idle rows leave. Attention only sees valid slots and keys
carry their RoPE position, not their slot, so both are exact.
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

  def rollback_rows(self, length_b: jax.Array, rows_b: jax.Array) -> "KVCache":
    """Forgets the slots at or after `length_b[b]` of each row where `rows_b` is True."""
    drop_bs = rows_b[:, None] & (jnp.arange(self.max_length)[None, :] >= length_b[:, None])
    return self.replace(valid_bs=self.valid_bs & ~drop_bs)

  def compact(self) -> "KVCache":
    """Moves each row's valid slots to the front, keeping their order; the new
    length is the largest count of valid slots. A valid slot s of row b moves to
    `valid_bs[b, :s].sum()`."""
    order_bs = jnp.argsort(~self.valid_bs, axis=1, stable=True)
    gather = lambda x_lbskh: jnp.take_along_axis(x_lbskh, order_bs[None, :, :, None, None], axis=2)
    count_b = self.valid_bs.sum(axis=1, dtype=jnp.int32)
    return self.replace(k_lbskh=gather(self.k_lbskh), v_lbskh=gather(self.v_lbskh),
                        valid_bs=jnp.arange(self.max_length)[None, :] < count_b[:, None],
                        length=jnp.max(count_b))

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
