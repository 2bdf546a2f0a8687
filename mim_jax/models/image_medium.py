"""The image medium between the LLM and the image decoder (spec §2 ablation).

`language` (TextBind's choice, the default): the LLM writes `<start> description
<end>` and the description is Stable Diffusion's prompt; nothing to train here.

`qformer` (GILL-like): after `<start>` the LLM reads N learned prompt
embeddings; its final hidden states at those N positions go through a small
Q-Former-style mapper (learned queries cross-attending to the N states) into
Stable Diffusion's text-conditioning space, a (cond_length, cond_dim) sequence
(77 × 1024 for SD-2.1, whose prompt embeddings the release's traces regress
onto). It is trained with `medium_loss`, the MSE to the SD text encoder's
embeddings of the caption, and rendered by an `EmbeddingRenderer`
(infer/renderers.py) that takes those embeddings instead of text.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models import config_checks
from mim_jax.models.qformer import QFormer, QFormerConfig
from mim_jax.nn.encoder_layers import Dense

MEDIA = ("language", "qformer")
_SECTION = "medium"


@dataclasses.dataclass(frozen=True)
class MediumConfig(config_checks.TowerConfig):
  SECTION: ClassVar[str] = _SECTION

  kind: str = "language"
  num_prompt_tokens: int = 8
  cond_length: int = 77
  cond_dim: int = 1024
  mapper_width: int = 512
  mapper_layers: int = 4
  mapper_heads: int = 8
  mapper_mlp_dim: int = 2048
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "xla"

  def __post_init__(self):
    config_checks.check_choice(_SECTION, "kind", self.kind, MEDIA)
    self.check_dtypes_and_attention()
    config_checks.check_positive_ints(
        _SECTION, self, ("num_prompt_tokens", "cond_length", "cond_dim", "mapper_width", "mapper_layers",
                         "mapper_heads", "mapper_mlp_dim"))
    config_checks.check_divides(_SECTION, self, "mapper_width", "mapper_heads")

  def mapper_config(self, llm_width: int) -> QFormerConfig:
    """The mapper is a Q-Former whose queries are SD's 77 conditioning slots and
    whose "image" is the N prompt hidden states; it cross-attends in every layer."""
    return QFormerConfig(
        num_queries=self.cond_length, embed_dim=self.mapper_width, num_layers=self.mapper_layers,
        num_heads=self.mapper_heads, mlp_dim=self.mapper_mlp_dim, encoder_dim=llm_width,
        cross_attention_frequency=1, norm_eps=1e-5, dropout_rate=0.0, init_std=self.init_std, dtype=self.dtype,
        param_dtype=self.param_dtype, attention_impl=self.attention_impl)


class ImageMedium(nn.Module):
  """Params: {"prompt_embeddings": (N, llm width), "queries": (77, w), "mapper": QFormer, "output": Dense}."""

  config: MediumConfig
  llm_width: int

  def setup(self):
    cfg = self.config
    mapper = cfg.mapper_config(self.llm_width)
    init = nn.initializers.normal(stddev=cfg.init_std)
    self.prompt_embeddings = self.param(
        "prompt_embeddings", nn.with_logical_partitioning(init, (None, "embed")),
        (cfg.num_prompt_tokens, self.llm_width), cfg.weight_dtype)
    self.queries = self.param(
        "queries", nn.with_logical_partitioning(init, (None, "qformer_embed")), (cfg.cond_length, cfg.mapper_width),
        cfg.weight_dtype)
    self.mapper = QFormer(mapper)
    self.output = Dense(cfg.cond_dim, ("qformer_embed", None), cfg.compute_dtype, cfg.weight_dtype)

  @property
  def config_shape(self) -> tuple[int, int]:
    """The conditioning's (length, width) per image."""
    return self.config.cond_length, self.config.cond_dim

  def prompts(self) -> jax.Array:
    """The N learned embeddings the LLM reads after `<start>`, (N, llm width)."""
    return self.prompt_embeddings

  def __call__(self, hidden_bnd: jax.Array) -> jax.Array:
    """LLM hidden states at the N prompt positions → SD conditioning (b, cond_length, cond_dim), float32."""
    b = hidden_bnd.shape[0]
    cfg = self.config
    queries_bqw = jnp.broadcast_to(self.queries.astype(cfg.compute_dtype), (b,) + self.queries.shape)
    out_bqw = self.mapper(queries_bqw, hidden_bnd.astype(cfg.compute_dtype), deterministic=True)
    return self.output(out_bqw).astype(jnp.float32)


def medium_loss(cond_bld: jax.Array, target_bld: jax.Array, weights_b: jax.Array | None = None, *,
                total_weight: jax.Array | None = None) -> jax.Array:
  """Mean squared error to the SD text encoder's caption embeddings, averaged
  over (length, width) and then over the images with weight (0 = padding).
  Leading axes may be (b,) or (b, K). `total_weight` (the whole batch's, for
  gradient accumulation) makes it this microbatch's share of that mean."""
  if cond_bld.shape != target_bld.shape:
    raise ValueError(f"medium conditioning has shape {cond_bld.shape} but the target embeddings have "
                     f"{target_bld.shape}; medium.cond_length / cond_dim must match the SD text encoder")
  per_image = jnp.mean(jnp.square(cond_bld.astype(jnp.float32) - target_bld.astype(jnp.float32)), axis=(-2, -1))
  weights = jnp.ones_like(per_image) if weights_b is None else weights_b.astype(jnp.float32)
  total = weights.sum() if total_weight is None else total_weight
  return (per_image * weights).sum() / jnp.maximum(total, 1.0)
