"""Growing the vocabulary (MIM adds `<image>`, `<start>`, `<end>`)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mim_jax.models.llama_config import LlamaConfig

INIT_MODES = ("normal", "mean")


def resize_vocab(cfg: LlamaConfig, params: dict, new_vocab_size: int, rng: jax.Array, *,
                 init: str = "normal", std: float = 0.02) -> tuple[LlamaConfig, dict]:
  """Adds rows to the embedding (and columns to an untied LM head).

  `normal`: new rows ~ N(0, std) (TextBind's choice, spec §2); `mean`: each new
  row is the mean of the existing rows, which keeps the new tokens' initial
  logits close to the average token's.
  """
  if init not in INIT_MODES:
    raise ValueError(f"resize init {init!r} is not one of {INIT_MODES}")
  extra = new_vocab_size - cfg.vocab_size
  if extra < 0:
    raise ValueError(f"cannot shrink the vocabulary from {cfg.vocab_size} to {new_vocab_size}")
  if extra == 0:
    return cfg, params

  def grow(table_vd, key):
    if init == "mean":
      rows = jnp.broadcast_to(table_vd.mean(axis=0, dtype=jnp.float32), (extra, table_vd.shape[1]))
    else:
      rows = std * jax.random.normal(key, (extra, table_vd.shape[1]), jnp.float32)
    return jnp.concatenate([table_vd, rows.astype(table_vd.dtype)], axis=0)

  embed_key, head_key = jax.random.split(rng)
  params = dict(params)
  params["embedding"] = grow(params["embedding"], embed_key)
  if not cfg.tie_embeddings:
    params["lm_head"] = grow(params["lm_head"].T, head_key).T
  return dataclasses.replace(cfg, vocab_size=new_vocab_size), params
