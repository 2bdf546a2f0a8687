"""Token sampling and the jitted decode loop (prefill → `while_loop` of one-token steps).

Prompts are left-padded to a common length; positions come from the valid
mask, so a padded row decodes exactly as it would alone. The whole generation
is one compiled program: no Python round trip per token.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.models.llama import Llama
from mim_jax.models.llama_config import LlamaConfig
from mim_jax.nn.kv_cache import KVCache


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 256
  temperature: float = 0.0  # 0 means greedy
  top_p: float = 1.0
  stop_ids: tuple[int, ...] = (2,)
  pad_id: int = 0

  def __post_init__(self):
    if self.max_new_tokens <= 0:
      raise ValueError(f"sampling.max_new_tokens must be positive, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")


def sample_token(logits_bv: jax.Array, rng: jax.Array, temperature: float, top_p: float) -> jax.Array:
  """Greedy when temperature == 0, else temperature + nucleus (top-p) sampling."""
  if temperature == 0:
    return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
  logits_bv = logits_bv.astype(jnp.float32) / temperature
  if top_p < 1.0:
    sorted_bv = jnp.sort(logits_bv, axis=-1)[:, ::-1]
    probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (always at least one token).
    before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
    cutoff_b = jnp.min(jnp.where(before_bv < top_p, sorted_bv, jnp.inf), axis=-1)
    logits_bv = jnp.where(logits_bv >= cutoff_b[:, None], logits_bv, -jnp.inf)
  return jax.random.categorical(rng, logits_bv, axis=-1).astype(jnp.int32)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens_bt, valid_bt) with each prompt right-aligned."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token")
  width = max(len(p) for p in prompts)
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  valid = np.zeros((len(prompts), width), bool)
  for row, prompt in enumerate(prompts):
    tokens[row, width - len(prompt):] = prompt
    valid[row, width - len(prompt):] = True
  return tokens, valid


def decode(model: Llama, params, cache: KVCache, logits_bv: jax.Array, next_position_b: jax.Array,
           rng: jax.Array, sampling: SamplingConfig, done_b: jax.Array | None = None):
  """Samples up to `max_new_tokens` after a prefill. Returns (tokens_bn, cache).

  Tokens after a row's stop token are `pad_id`; the stop token itself is kept.
  """
  b = logits_bv.shape[0]
  n = sampling.max_new_tokens
  stop_ids = jnp.asarray(sampling.stop_ids, jnp.int32)

  def step(carry):
    i, cache, logits_bv, position_b, done_b, out_bn, rng = carry
    rng, key = jax.random.split(rng)
    token_b = sample_token(logits_bv, key, sampling.temperature, sampling.top_p)
    token_b = jnp.where(done_b, sampling.pad_id, token_b)
    out_bn = out_bn.at[:, i].set(token_b)
    new_done_b = done_b | jnp.isin(token_b, stop_ids)
    logits_b1v, cache = model.apply(
        {"params": params}, token_b[:, None], position_b[:, None], valid_bt=~done_b[:, None], cache=cache
    )
    return i + 1, cache, logits_b1v[:, 0], position_b + 1, new_done_b, out_bn, rng

  def keep_going(carry):
    i, *_, done_b, _, _ = carry
    return (i < n) & ~jnp.all(done_b)

  done_b = jnp.zeros((b,), bool) if done_b is None else done_b
  out_bn = jnp.full((b, n), sampling.pad_id, jnp.int32)
  carry = (jnp.zeros((), jnp.int32), cache, logits_bv, next_position_b, done_b, out_bn, rng)
  _, cache, *_, out_bn, _ = jax.lax.while_loop(keep_going, step, carry)
  return out_bn, cache


@functools.partial(jax.jit, static_argnames=("config", "sampling"))
def _generate(params, tokens_bt, valid_bt, rng, *, config: LlamaConfig, sampling: SamplingConfig):
  model = Llama(config)
  b, t = tokens_bt.shape
  positions_bt = jnp.maximum(jnp.cumsum(valid_bt, axis=1) - 1, 0).astype(jnp.int32)
  cache = model.init_cache(b, t + sampling.max_new_tokens)
  logits_btv, cache = model.apply({"params": params}, tokens_bt, positions_bt, valid_bt=valid_bt, cache=cache)
  out_bn, _ = decode(model, params, cache, logits_btv[:, -1], positions_bt[:, -1] + 1, rng, sampling)
  return out_bn


def generate(config: LlamaConfig, params, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
             rng: jax.Array | None = None) -> list[list[int]]:
  """Continues each prompt; returns the new tokens per row, up to and including a stop token."""
  tokens_bt, valid_bt = left_pad(prompts, sampling.pad_id)
  rng = jax.random.key(0) if rng is None else rng
  out_bn = np.asarray(_generate(params, tokens_bt, valid_bt, rng, config=config, sampling=sampling))
  results = []
  for row in out_bn:
    stops = np.flatnonzero(np.isin(row, sampling.stop_ids))
    results.append(row[: stops[0] + 1 if len(stops) else len(row)].tolist())
  return results
