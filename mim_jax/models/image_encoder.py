"""The MIM image path (spec §2): EVA ViT → Q-Former over learned query tokens →
Linear into the LLM's embedding width; BLIP-2's `get_image_features`.

Params: {"vision": EvaViT, "query_tokens": (q, d), "qformer": QFormer,
"projection": {"kernel": (d, llm_width), "bias"}}. Given cached ViT features
the vision tower is not called, so "vision" params may then be left out.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models.eva_vit import EvaViT, VisionConfig
from mim_jax.models.qformer import QFormer, QFormerConfig
from mim_jax.nn.encoder_layers import Dense
from mim_jax.nn.sharding import constrain


class ImageEncoder(nn.Module):
  """pixels (b, H, W, 3) NHWC float32, or ViT features (b, s, vision width)
  → (b, num_queries, llm_width) embeddings for the `<image>` slots.

  `train_vision=False` (TextBind freezes the ViT in both stages) stops the
  gradient at the ViT output so no backward pass runs through the tower.
  """

  vision: VisionConfig
  qformer: QFormerConfig
  llm_width: int
  train_vision: bool = False

  @nn.compact
  def __call__(self, pixels_bhwc: jax.Array | None = None, vit_features_bse: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    if (pixels_bhwc is None) == (vit_features_bse is None):
      raise ValueError("ImageEncoder takes exactly one of pixels_bhwc and vit_features_bse")
    q = self.qformer
    if pixels_bhwc is not None:
      vit_features_bse = EvaViT(self.vision, name="vision")(pixels_bhwc)
    if not self.train_vision:
      vit_features_bse = jax.lax.stop_gradient(vit_features_bse)
    init = nn.initializers.normal(stddev=q.init_std)
    tokens_qd = self.param(
        "query_tokens", nn.with_logical_partitioning(init, (None, "qformer_embed")), (q.num_queries, q.embed_dim),
        q.weight_dtype,
    )
    b = vit_features_bse.shape[0]
    queries_bqd = jnp.broadcast_to(tokens_qd.astype(q.compute_dtype), (b, q.num_queries, q.embed_dim))
    out_bqd = QFormer(q, name="qformer")(queries_bqd, vit_features_bse, deterministic)
    projection = Dense(self.llm_width, ("qformer_embed", "embed"), q.compute_dtype, q.weight_dtype, name="projection")
    return constrain(projection(out_bqd), ("batch", "length", "act_embed"))


def boxed_init_fn(vision: VisionConfig, qformer: QFormerConfig, llm_width: int):
  """rng -> boxed params (vision tower included), for `sharding.sharded_init`."""
  model = ImageEncoder(vision, qformer, llm_width)
  pixels = jnp.zeros((1, vision.image_size, vision.image_size, 3), jnp.float32)
  return lambda rng: model.init(rng, pixels)["params"]


def abstract_params(vision: VisionConfig, qformer: QFormerConfig, llm_width: int):
  return nn.unbox(jax.eval_shape(boxed_init_fn(vision, qformer, llm_width), jax.random.key(0)))


def init_params(vision: VisionConfig, qformer: QFormerConfig, llm_width: int, rng: jax.Array):
  return nn.unbox(boxed_init_fn(vision, qformer, llm_width)(rng))
