"""MIM (spec §2): images → ImageEncoder → 32 embeddings each, written in place of
the `<image>` tokens of the LLM input; the LLM runs with explicit positions and
an explicit mask (caption branches, spec §3).

Images are passed *packed per batch*: `images` holds only real images (n of
them, a static budget), and `image_rows_bm` says which packed row fills slot m
of example b (-1: no image). Padding slots therefore cost no ViT/Q-Former
compute; only the budget's padding rows do (see `pack_images`).

With the `qformer` image medium (models/image_medium.py) MIM also owns the
learned prompt embeddings and the mapper to SD conditioning: `medium_forward`
is the training view, `condition` the inference one.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.models.config_base import ConfigBase, from_preset
from mim_jax.models.eva_vit import PRESETS as VISION_PRESETS
from mim_jax.models.eva_vit import VisionConfig
from mim_jax.models.image_encoder import ImageEncoder
from mim_jax.models.image_medium import ImageMedium, MediumConfig
from mim_jax.models.llama import Llama
from mim_jax.models.llama_config import PRESETS as LLAMA_PRESETS
from mim_jax.models.llama_config import LlamaConfig
from mim_jax.models.qformer import PRESETS as QFORMER_PRESETS
from mim_jax.models.qformer import QFormerConfig
from mim_jax.nn.kv_cache import KVCache


@dataclasses.dataclass(frozen=True)
class MIMConfig(ConfigBase):
  """The four towers. `medium` defaults to the language medium, so run configs
  and exports written before the image medium existed still load."""

  llm: LlamaConfig
  vision: VisionConfig
  qformer: QFormerConfig
  medium: MediumConfig = MediumConfig()

  def __post_init__(self):
    if self.qformer.encoder_dim != self.vision.embed_dim:
      raise ValueError(f"model.qformer.encoder_dim ({self.qformer.encoder_dim}) must equal model.vision.embed_dim "
                       f"({self.vision.embed_dim})")

  @classmethod
  def preset(cls, name: str, **overrides) -> "MIMConfig":
    return from_preset(cls, PRESETS, name, overrides)

  @property
  def num_image_tokens(self) -> int:
    return self.qformer.num_queries


NEW_TOKENS = 3  # <image>, <start>, <end> (spec §2)
_FULL_COMPUTE = dict(dtype="bfloat16", remat_policy="dots_no_batch")


def _llm_with_new_tokens(name: str) -> dict:
  preset = LLAMA_PRESETS[name]
  return dict(preset, vocab_size=preset["vocab_size"] + NEW_TOKENS)


PRESETS = {
    # EVA ViT-g + BLIP-2 Q-Former + Llama-2-7b (spec §2), bf16 compute, remat on the two big towers.
    "full": dict(llm=dict(_llm_with_new_tokens("llama2_7b"), **_FULL_COMPUTE),
                 vision=dict(VISION_PRESETS["eva_vit_g"], **_FULL_COMPUTE),
                 qformer=dict(QFORMER_PRESETS["blip2"], dtype="bfloat16")),
    # CPU-sized, the same structure.
    "tiny": dict(llm=_llm_with_new_tokens("tiny"), vision=VISION_PRESETS["tiny"], qformer=QFORMER_PRESETS["tiny"]),
}


def scatter_image_embeddings(embeds_btd: jax.Array, image_embeds_nkd: jax.Array, image_starts_bm: jax.Array,
                             image_rows_bm: jax.Array) -> jax.Array:
  """Writes image row `image_rows_bm[b, m]` at positions starts[b, m] .. +k-1 of example b."""
  b, t, _ = embeds_btd.shape
  k = image_embeds_nkd.shape[1]
  valid_bm = image_rows_bm >= 0
  index_bmk = image_starts_bm[:, :, None] + jnp.arange(k)
  index_bmk = jnp.where(valid_bm[:, :, None], index_bmk, t)  # out of range: dropped
  values_bmkd = image_embeds_nkd[jnp.maximum(image_rows_bm, 0)].astype(embeds_btd.dtype)
  batch_bmk = jnp.broadcast_to(jnp.arange(b)[:, None, None], index_bmk.shape)
  return embeds_btd.at[batch_bmk, index_bmk].set(values_bmkd, mode="drop")


class MIM(nn.Module):
  """Params: {"image_encoder": {vision, query_tokens, qformer, projection}, "llm": Llama}
  and, with the `qformer` medium, "image_medium": ImageMedium."""

  config: MIMConfig
  train_vision: bool = False

  def setup(self):
    cfg = self.config
    self.image_encoder = ImageEncoder(cfg.vision, cfg.qformer, cfg.llm.embed_dim, self.train_vision)
    self.llm = Llama(cfg.llm)
    self.image_medium = ImageMedium(cfg.medium, cfg.llm.embed_dim) if cfg.medium.kind == "qformer" else None

  def encode_images(self, images: jax.Array | None = None, vit_features: jax.Array | None = None,
                    deterministic: bool = True) -> jax.Array:
    """(n, 224, 224, 3) pixels or (n, 257, vision width) cached ViT features → (n, 32, llm width)."""
    return self.image_encoder(images, vit_features, deterministic)

  def embed(self, tokens_bt, image_starts_bm=None, image_rows_bm=None, *, images=None, vit_features=None,
            deterministic: bool = True) -> jax.Array:
    embeds_btd = self.llm.embed(tokens_bt)
    if images is None and vit_features is None:
      return embeds_btd
    image_embeds_nkd = self.encode_images(images, vit_features, deterministic)
    return scatter_image_embeddings(embeds_btd, image_embeds_nkd, image_starts_bm, image_rows_bm)

  def __call__(self, tokens_bt, positions_bt=None, mask_bts=None, image_starts_bm=None, image_rows_bm=None, *,
               images=None, vit_features=None, valid_bt=None, cache=None, deterministic: bool = True):
    """Logits (b, t, vocab) float32 (and the cache, when given), as Llama.__call__."""
    embeds_btd = self.embed(tokens_bt, image_starts_bm, image_rows_bm, images=images, vit_features=vit_features,
                            deterministic=deterministic)
    if self.image_medium is not None and self.is_initializing():
      self.image_medium(jnp.zeros((1, self.config.medium.num_prompt_tokens, self.config.llm.embed_dim)))
    return self.llm(positions_bt=positions_bt, mask_bts=mask_bts, embeds_btd=embeds_btd, valid_bt=valid_bt,
                    cache=cache)

  def _require_medium(self) -> ImageMedium:
    if self.image_medium is None:
      raise ValueError("this MIM uses the `language` image medium; the prompt-token mapper needs "
                       "medium.kind = 'qformer'")
    return self.image_medium

  def medium_forward(self, tokens_bt, prompt_starts, positions_bt=None, mask_bts=None, image_starts_bm=None,
                     image_rows_bm=None, *, prompt_valid_bk=None, images=None, vit_features=None,
                     deterministic: bool = True):
    """Training view of the `qformer` medium: the N inputs from each prompt start
    on (placeholders in `tokens_bt`) are replaced by the learned prompt
    embeddings. `prompt_starts` is (b,) (one image per example) or (b, K) with
    `prompt_valid_bk` (False: no image there; its slots are left alone).
    Returns (logits (b, t, vocab), SD conditioning (b, 77, D) or (b, K, 77, D))."""
    medium = self._require_medium()
    single = prompt_starts.ndim == 1
    starts_bk = prompt_starts[:, None] if single else prompt_starts
    valid_bk = jnp.ones(starts_bk.shape, bool) if prompt_valid_bk is None else prompt_valid_bk
    embeds_btd = self.embed(tokens_bt, image_starts_bm, image_rows_bm, images=images, vit_features=vit_features,
                            deterministic=deterministic)
    prompts_1nd = medium.prompts()[None]
    embeds_btd = scatter_image_embeddings(embeds_btd, prompts_1nd, starts_bk, jnp.where(valid_bk, 0, -1))
    logits_btv, hidden_btd = self.llm(positions_bt=positions_bt, mask_bts=mask_bts, embeds_btd=embeds_btd,
                                      return_hidden=True)
    b, k = starts_bk.shape
    n = prompts_1nd.shape[1]
    index_bkn = jnp.minimum(starts_bk[:, :, None] + jnp.arange(n), tokens_bt.shape[1] - 1)
    hidden_bknd = hidden_btd[jnp.arange(b)[:, None, None], index_bkn]
    cond_bkld = medium(hidden_bknd.reshape(b * k, n, -1)).reshape(b, k, *medium.config_shape)
    return logits_btv, cond_bkld[:, 0] if single else cond_bkld

  def condition(self, cache: KVCache, positions_bn: jax.Array, valid_b: jax.Array) -> tuple[jax.Array, KVCache]:
    """Inference view of the `qformer` medium: writes the N prompt embeddings at
    `positions_bn` into the cache (valid in rows `valid_b`) and maps their
    hidden states. Returns (SD conditioning (b, 77, D), cache)."""
    medium = self._require_medium()
    b, n = positions_bn.shape
    prompts_bnd = jnp.broadcast_to(medium.prompts()[None], (b, n, self.config.llm.embed_dim))
    valid_bn = jnp.broadcast_to(valid_b[:, None], (b, n))
    _, hidden_bnd, cache = self.llm(positions_bt=positions_bn, embeds_btd=prompts_bnd, valid_bt=valid_bn, cache=cache,
                                    return_hidden=True)
    return medium(hidden_bnd), cache


def pack_images(image_valid_bm: np.ndarray, budget: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Host-side packing for a batch: (image_rows_bm, which_bm_n) where `which` lists the
  (b, m) of each packed row in order, padded with -1 up to `budget` rows."""
  image_valid_bm = np.asarray(image_valid_bm, bool)
  count = int(image_valid_bm.sum())
  budget = image_valid_bm.size if budget is None else budget
  if count > budget:
    raise ValueError(f"batch has {count} images but the image budget is {budget}; raise the budget "
                     "(train.images_per_batch) or lower max_images / the batch size")
  rows_bm = np.full(image_valid_bm.shape, -1, np.int32)
  rows_bm[image_valid_bm] = np.arange(count, dtype=np.int32)
  which = np.full((budget, 2), -1, np.int32)
  which[:count] = np.argwhere(image_valid_bm)
  return rows_bm, which


def _init_fn(cfg: MIMConfig, train_vision: bool = False):
  model = MIM(cfg, train_vision)
  k = cfg.num_image_tokens
  tokens = jnp.zeros((1, k + 1), jnp.int32)
  pixels = jnp.zeros((1, cfg.vision.image_size, cfg.vision.image_size, 3), jnp.float32)
  starts, rows = jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32)
  return lambda rng: model.init(rng, tokens, None, None, starts, rows, images=pixels)["params"]


def boxed_init_fn(cfg: MIMConfig):
  """rng -> boxed params, for `sharding.sharded_init`."""
  return _init_fn(cfg)


def abstract_params(cfg: MIMConfig):
  return nn.unbox(jax.eval_shape(_init_fn(cfg), jax.random.key(0)))


def init_params(cfg: MIMConfig, rng: jax.Array):
  return nn.unbox(_init_fn(cfg)(rng))
