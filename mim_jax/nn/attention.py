"""The one attention entry point, and the masks it takes.

Every attention in the project goes through `dot_product_attention` with an
explicit boolean mask (True = may attend). TextBind's caption branches (spec §3)
need tree-shaped masks and re-used positions, so nothing here assumes a plain
causal layout; `causal_mask` is just the common case.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "cudnn")


def causal_mask(query_positions_bt: jax.Array, key_positions_bs: jax.Array) -> jax.Array:
  """Mask (b, t, s): a query may see keys at the same or an earlier position."""
  return key_positions_bs[:, None, :] <= query_positions_bt[:, :, None]


def dot_product_attention(
    q_btnh: jax.Array,
    k_bskh: jax.Array,
    v_bskh: jax.Array,
    mask_bts: jax.Array | None,
    *,
    impl: str = "xla",
) -> jax.Array:
  """Scaled dot-product attention with grouped KV heads.

  q has n heads, k/v have k heads with n % k == 0 (k == n is MHA, k == 1 MQA).
  `mask_bts` is boolean; rows with no allowed key return zeros rather than NaN
  (padding queries). Softmax runs in float32 whatever the compute dtype.
  """
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"attention impl {impl!r} is not one of {IMPLEMENTATIONS}")
  b, t, n, h = q_btnh.shape
  num_kv = k_bskh.shape[2]
  if n % num_kv:
    raise ValueError(f"query heads ({n}) must be a multiple of kv heads ({num_kv})")
  if impl == "cudnn":
    return _cudnn_attention(q_btnh, k_bskh, v_bskh, mask_bts)

  # Fold each KV head's query group into the query axis: every score is then a
  # plain 4-D batched matmul (b, kv head) x (g*t, s), which XLA lays out without
  # the transposes of the full (t, s) matrices a 5-D einsum needs.
  groups = n // num_kv
  q_bkqh = q_btnh.reshape(b, t, num_kv, groups, h).transpose(0, 2, 3, 1, 4).reshape(b, num_kv, groups * t, h)
  scale = jnp.asarray(h**-0.5, q_btnh.dtype)
  logits_bkqs = jnp.einsum("bkqh,bskh->bkqs", q_bkqh * scale, k_bskh, preferred_element_type=jnp.float32)
  if mask_bts is not None:
    mask_b1qs = jnp.tile(mask_bts[:, None], (1, 1, groups, 1))
    logits_bkqs = jnp.where(mask_b1qs, logits_bkqs, jnp.finfo(jnp.float32).min)
  weights_bkqs = jax.nn.softmax(logits_bkqs, axis=-1)
  out_bkqh = jnp.einsum("bkqs,bskh->bkqh", weights_bkqs.astype(v_bskh.dtype), v_bskh)
  if mask_bts is not None:
    # A fully masked row would be a uniform average of garbage; make it zero.
    out_bkqh = out_bkqh * jnp.any(mask_b1qs, axis=-1, keepdims=True).astype(out_bkqh.dtype)
  return out_bkqh.reshape(b, num_kv, groups, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _cudnn_attention(q_btnh, k_bskh, v_bskh, mask_bts):
  mask_b1ts = None if mask_bts is None else mask_bts[:, None, :, :]
  return jax.nn.dot_product_attention(
      q_btnh, k_bskh, v_bskh, mask=mask_b1ts, implementation="cudnn"
  )
