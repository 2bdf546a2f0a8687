"""The compiled pieces of MIM generation: prefill, decode segments, and the
image insertion that replaces a description by its rendered image (spec §2).

Each row moves through phases. TEXT: writing the reply; `<start>` opens an
image. DESCRIBING (language medium): writing the description; `<end>` makes
the row READY without being written to the cache. With the qformer medium the
row is READY right after `<start>` (the prompt embeddings follow at render
time). DONE: a stop token was written, or the token budget is spent.

`decode_segment` is one `while_loop` that runs until some row is READY or no
row is active; the host then renders, and `insert_images` rolls each READY row
back to its `<start>` slot, compacts the cache (see KVCache.compact) and
prefills the 32 embeddings of its image at the positions `<start>` had, so the
cache holds what a fresh prefill of the interleaved sequence would.

Sampling is constrained per phase, so the stream is always well formed:
`<image>` and `<s>` are never sampled; `<end>` only while describing; `<start>`
only in text and only while the row has images left; stop tokens only in text;
a description at `max_description_tokens` must end.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import struct

from mim_jax.infer.generate import SamplingConfig, sample_token
from mim_jax.models.mim import MIM, MIMConfig
from mim_jax.nn.kv_cache import KVCache

TEXT, DESCRIBING, READY, DONE = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class ControlIds:
  """Token ids the loop treats specially (hashable: a static jit argument)."""
  bos: int
  eos: int
  image: int
  start: int
  end: int

  @classmethod
  def from_tokenizer(cls, tokenizer) -> "ControlIds":
    return cls(tokenizer.bos_id, tokenizer.eos_id, tokenizer.image_id, tokenizer.start_id, tokenizer.end_id)


@dataclasses.dataclass(frozen=True)
class TurnLimits:
  """Per generated turn, on top of SamplingConfig.max_new_tokens (which counts
  every sampled token, descriptions and `<start>`/`<end>` included). A
  description is cut at `max_description_tokens`: SD's CLIP reads 75 tokens
  plus its own start/end, and longer prompts would be truncated there anyway."""
  max_images: int = 4
  max_description_tokens: int = 75

  def __post_init__(self):
    if self.max_images < 0 or self.max_description_tokens < 1:
      raise ValueError(f"TurnLimits needs max_images >= 0 and max_description_tokens >= 1, got {self}")


@struct.dataclass
class DecodeState:
  cache: KVCache
  logits_bv: jax.Array  # what each row samples next
  position_b: jax.Array  # position of the next written token
  phase_b: jax.Array  # TEXT / DESCRIBING / READY / DONE
  start_slot_b: jax.Array  # cache slot of the open `<start>`
  start_position_b: jax.Array  # and its position: the image takes positions from here
  description_length_b: jax.Array
  images_b: jax.Array  # images inserted so far
  count_b: jax.Array  # tokens sampled so far (into tokens_bn)
  tokens_bn: jax.Array  # every sampled token, pad after the row's count
  rng: jax.Array
  # TurnLimits as traced scalars: changing a limit does not recompile.
  max_images: jax.Array
  max_description_tokens: jax.Array


def cache_length(prompt_width: int, config: MIMConfig, sampling: SamplingConfig, limits: TurnLimits,
                 bucket: int = 1) -> int:
  """Slots the cache needs, rounded up to a multiple of `bucket`. After a
  compaction the longest row holds at most prompt + its tokens + its images;
  the next segment adds at most the largest budget left of any row, and an
  insertion adds one image run (the qformer medium first writes its prompt
  tokens). Rows differ, so the two token terms do not cancel: 2 × max_new_tokens."""
  prompts = config.medium.num_prompt_tokens if config.medium.kind == "qformer" else 0
  slots = prompt_width + 2 * sampling.max_new_tokens + config.num_image_tokens * (limits.max_images + 1) + prompts
  return bucket * -(-slots // bucket)


@functools.partial(jax.jit, static_argnames=("config", "sampling", "cache_slots"))
def prefill(params, tokens_bt, positions_bt, valid_bt, image_starts_bm, image_rows_bm, pixels_nhwc, rng,
            max_images, max_description_tokens, *, config: MIMConfig, sampling: SamplingConfig, cache_slots: int) -> DecodeState:
  """The prompt through MIM's training path (tokens + images scattered into
  their runs); the two limits are TurnLimits' fields."""
  model = MIM(config)
  b = tokens_bt.shape[0]
  cache = _init_cache(config, b, cache_slots)
  images = pixels_nhwc if pixels_nhwc.shape[0] else None
  logits_btv, cache = model.apply({"params": params}, tokens_bt, positions_bt, None, image_starts_bm, image_rows_bm,
                                  images=images, valid_bt=valid_bt, cache=cache)
  zeros_b = jnp.zeros((b,), jnp.int32)
  return DecodeState(
      cache=cache, logits_bv=logits_btv[:, -1], position_b=positions_bt[:, -1] + 1, phase_b=zeros_b + TEXT,
      start_slot_b=zeros_b, start_position_b=zeros_b, description_length_b=zeros_b, images_b=zeros_b,
      count_b=zeros_b, tokens_bn=jnp.full((b, sampling.max_new_tokens), sampling.pad_id, jnp.int32), rng=rng,
      max_images=jnp.asarray(max_images, jnp.int32),
      max_description_tokens=jnp.asarray(max_description_tokens, jnp.int32))


def _init_cache(config: MIMConfig, batch: int, slots: int) -> KVCache:
  llm = config.llm
  return KVCache.create(llm.num_layers, batch, slots, llm.num_kv_heads, llm.head_dim, llm.compute_dtype)


def _allowed_logits(state: DecodeState, ids: ControlIds, sampling: SamplingConfig):
  vocab = state.logits_bv.shape[-1]
  token_v = jnp.arange(vocab)
  text_b = state.phase_b == TEXT
  describing_b = state.phase_b == DESCRIBING
  stop_v = jnp.isin(token_v, jnp.asarray(sampling.stop_ids, jnp.int32))
  banned_bv = jnp.broadcast_to((token_v == ids.image) | (token_v == ids.bos), state.logits_bv.shape)
  banned_bv |= text_b[:, None] & ((token_v == ids.end)
                                  | ((token_v == ids.start) & (state.images_b >= state.max_images)[:, None]))
  banned_bv |= describing_b[:, None] & ((token_v == ids.start) | stop_v)
  must_end_b = describing_b & (state.description_length_b >= state.max_description_tokens)
  banned_bv |= must_end_b[:, None] & (token_v != ids.end)
  return jnp.where(banned_bv, -jnp.inf, state.logits_bv)


@functools.partial(jax.jit, static_argnames=("config", "ids", "sampling"), donate_argnums=(1,))
def decode_segment(params, state: DecodeState, *, config: MIMConfig, ids: ControlIds,
                   sampling: SamplingConfig) -> DecodeState:
  """Samples one token per active row per step until a row is READY or none is active."""
  model = MIM(config)
  n = sampling.max_new_tokens
  opens_to = READY if config.medium.kind == "qformer" else DESCRIBING

  def step(state: DecodeState) -> DecodeState:
    rng, key = jax.random.split(state.rng)
    active_b = state.phase_b <= DESCRIBING
    token_b = sample_token(_allowed_logits(state, ids, sampling), key, sampling.temperature, sampling.top_p)
    token_b = jnp.where(active_b, token_b, sampling.pad_id)
    rows = jnp.arange(token_b.shape[0])
    tokens_bn = state.tokens_bn.at[rows, jnp.where(active_b, state.count_b, n)].set(token_b, mode="drop")
    count_b = state.count_b + active_b
    text_b = active_b & (state.phase_b == TEXT)
    describing_b = active_b & (state.phase_b == DESCRIBING)
    opens_b = text_b & (token_b == ids.start)
    closes_b = describing_b & (token_b == ids.end)
    stops_b = text_b & jnp.isin(token_b, jnp.asarray(sampling.stop_ids, jnp.int32))

    phase_b = jnp.where(opens_b, opens_to, state.phase_b)
    phase_b = jnp.where(closes_b, READY, phase_b)
    phase_b = jnp.where(stops_b | ((phase_b <= DESCRIBING) & (count_b >= n)), DONE, phase_b)
    # `<end>` is never written: the whole span is rolled back at insertion.
    write_b = active_b & ~closes_b
    logits_b1v, cache = model.apply({"params": params}, token_b[:, None], state.position_b[:, None],
                                    valid_bt=write_b[:, None], cache=state.cache)
    return state.replace(
        cache=cache, logits_bv=jnp.where(write_b[:, None], logits_b1v[:, 0], state.logits_bv),
        position_b=state.position_b + write_b, phase_b=phase_b,
        start_slot_b=jnp.where(opens_b, state.cache.length, state.start_slot_b),
        start_position_b=jnp.where(opens_b, state.position_b, state.start_position_b),
        description_length_b=jnp.where(opens_b, 0, state.description_length_b + describing_b),
        count_b=count_b, tokens_bn=tokens_bn, rng=rng)

  def keep_going(state: DecodeState):
    room = state.cache.length < state.cache.max_length
    return room & jnp.any(state.phase_b <= DESCRIBING) & ~jnp.any(state.phase_b == READY)

  return jax.lax.while_loop(keep_going, step, state)


@functools.partial(jax.jit, static_argnames=("config",))
def medium_conditioning(params, state: DecodeState, *, config: MIMConfig) -> jax.Array:
  """qformer medium: SD conditioning (b, 77, D) of each READY row, read from the
  prompt embeddings placed after its `<start>`. The cache is not kept: the
  insertion rolls these slots back anyway."""
  ready_b = state.phase_b == READY
  positions_bn = state.position_b[:, None] + jnp.arange(config.medium.num_prompt_tokens)
  cond_bld, _ = MIM(config).apply({"params": params}, state.cache, positions_bn, ready_b, method=MIM.condition)
  return cond_bld


@functools.partial(jax.jit, static_argnames=("config", "sampling"), donate_argnums=(1,))
def insert_images(params, state: DecodeState, pixels_bhwc: jax.Array, *, config: MIMConfig,
                  sampling: SamplingConfig) -> DecodeState:
  """Every READY row: roll back to its `<start>`, prefill its image's embeddings
  at the positions from `<start>` on, and continue in TEXT (or DONE when its
  budget is spent). Other rows keep their state; their slots are compacted."""
  model = MIM(config)
  ready_b = state.phase_b == READY
  cache = state.cache.rollback_rows(state.start_slot_b, ready_b)
  # Where a still-open `<start>` (another row mid-description) lands after compaction.
  start_slot_b = jnp.sum(cache.valid_bs & (jnp.arange(cache.max_length) < state.start_slot_b[:, None]), axis=1,
                         dtype=jnp.int32)
  cache = cache.compact()
  embeds_bkd = model.apply({"params": params}, pixels_bhwc, method=MIM.encode_images)
  k = embeds_bkd.shape[1]
  positions_bk = state.start_position_b[:, None] + jnp.arange(k)
  valid_bk = jnp.broadcast_to(ready_b[:, None], (ready_b.shape[0], k))
  logits_bkv, cache = model.apply({"params": params}, positions_bt=positions_bk, embeds_btd=embeds_bkd,
                                  valid_bt=valid_bk, cache=cache, method=lambda m, **kw: m.llm(**kw))
  done_b = state.count_b >= sampling.max_new_tokens
  return state.replace(
      cache=cache, logits_bv=jnp.where(ready_b[:, None], logits_bkv[:, -1], state.logits_bv),
      position_b=jnp.where(ready_b, state.start_position_b + k, state.position_b),
      phase_b=jnp.where(ready_b, jnp.where(done_b, DONE, TEXT), state.phase_b),
      start_slot_b=start_slot_b, images_b=state.images_b + ready_b)
