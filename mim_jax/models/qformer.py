"""BLIP-2's Q-Former, as transformers' Blip2QFormerModel computes it when fed
query embeddings only (no text): LayerNorm + dropout on the queries, then BERT
layers (post-LN) with self-attention, cross-attention to the image features in
every `cross_attention_frequency`-th layer (0, 2, 4, ...) and the query FFN
(`intermediate_query` / `output_query`).

Dropout (rate `dropout_rate`, HF's hidden_dropout_prob) is active only with
`deterministic=False` and an rng named "dropout". HF also drops attention
probabilities; the shared attention entry point has no dropout, so that one is
not applied here.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models import config_checks
from mim_jax.models.config_base import from_preset
from mim_jax.nn.attention import dot_product_attention
from mim_jax.nn.encoder_layers import GeluMLP, LayerNorm, bias_param
from mim_jax.nn.layers import dense_param
from mim_jax.nn.sharding import constrain

_SECTION = "qformer"


@dataclasses.dataclass(frozen=True)
class QFormerConfig(config_checks.TowerConfig):
  SECTION: ClassVar[str] = _SECTION

  num_queries: int = 32
  embed_dim: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  encoder_dim: int = 1408
  cross_attention_frequency: int = 2
  norm_eps: float = 1e-12
  dropout_rate: float = 0.1
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "xla"

  def __post_init__(self):
    self.check_dtypes_and_attention()
    config_checks.check_positive_ints(
        _SECTION, self,
        ("num_queries", "embed_dim", "num_layers", "num_heads", "mlp_dim", "encoder_dim", "cross_attention_frequency"))
    config_checks.check_divides(_SECTION, self, "embed_dim", "num_heads")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"{_SECTION}.dropout_rate must be in [0, 1), got {self.dropout_rate!r}")

  @classmethod
  def preset(cls, name: str, **overrides) -> "QFormerConfig":
    return from_preset(cls, PRESETS, name, overrides)

  def has_cross_attention(self, layer: int) -> bool:
    return layer % self.cross_attention_frequency == 0

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads


PRESETS = {
    # Salesforce/blip2-* qformer_config: BERT-base with cross-attention to EVA ViT-g (1408).
    "blip2": dict(num_queries=32, embed_dim=768, num_layers=12, num_heads=12, mlp_dim=3072, encoder_dim=1408,
                  cross_attention_frequency=2, norm_eps=1e-12, dropout_rate=0.1),
    "tiny": dict(num_queries=4, embed_dim=32, num_layers=2, num_heads=4, mlp_dim=64, encoder_dim=32,
                 cross_attention_frequency=2, norm_eps=1e-12, dropout_rate=0.1),
}


class QFormerAttention(nn.Module):
  """Biased q/k/v/o projections; keys and values come from `kv_bse` (the queries
  themselves, or the image features of width `encoder_dim` for cross-attention)."""

  config: QFormerConfig
  kv_axis: str

  @nn.compact
  def __call__(self, x_bqd, kv_bse):
    cfg = self.config
    d, e, n, h = cfg.embed_dim, kv_bse.shape[-1], cfg.num_heads, cfg.head_dim
    pd, cd = cfg.weight_dtype, cfg.compute_dtype
    heads = ("qformer_heads", "head_dim")

    def project(name, x, width, axis):
      kernel = dense_param(self, f"{name}_kernel", (width, n, h), (axis,) + heads, pd, width)
      bias = bias_param(self, f"{name}_bias", (n, h), heads, pd)
      y = jnp.einsum("bte,enh->btnh", x, kernel.astype(cd)) + bias.astype(cd)
      return constrain(y, ("batch", "length", "act_heads", "head_dim"))

    q_bqnh = project("q", x_bqd, d, "qformer_embed")
    k_bsnh = project("k", kv_bse, e, self.kv_axis)
    v_bsnh = project("v", kv_bse, e, self.kv_axis)
    out_bqnh = dot_product_attention(q_bqnh, k_bsnh, v_bsnh, None, impl=cfg.attention_impl)
    o_nhd = dense_param(self, "o_kernel", (n, h, d), heads + ("qformer_embed",), pd, d)
    o_bias_d = bias_param(self, "o_bias", (d,), ("qformer_embed",), pd)
    return jnp.einsum("bqnh,nhd->bqd", out_bqnh, o_nhd.astype(cd)) + o_bias_d.astype(cd)


class QFormerLayer(nn.Module):
  """Post-LN BERT layer: each sublayer is LN(x + dropout(sublayer(x)))."""

  config: QFormerConfig
  cross_attention: bool

  @nn.compact
  def __call__(self, x_bqd, image_bse, deterministic: bool):
    cfg = self.config
    norm = lambda name: LayerNorm(cfg.norm_eps, cfg.compute_dtype, cfg.weight_dtype, name=name)
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    x_bqd = norm("self_attn_norm")(x_bqd + drop(QFormerAttention(cfg, "qformer_embed", name="self_attn")(x_bqd, x_bqd)))
    if self.cross_attention:
      cross = QFormerAttention(cfg, "vit_embed", name="cross_attn")
      x_bqd = norm("cross_attn_norm")(x_bqd + drop(cross(x_bqd, image_bse)))
    mlp = GeluMLP(cfg.mlp_dim, "qformer_embed", "qformer_mlp", cfg.compute_dtype, cfg.weight_dtype, name="mlp")
    x_bqd = norm("mlp_norm")(x_bqd + drop(mlp(x_bqd)))
    return constrain(x_bqd, ("batch", "length", "act_qformer_embed"))


class QFormer(nn.Module):
  """(queries (b, q, embed_dim), image features (b, s, encoder_dim)) → (b, q, embed_dim)."""

  config: QFormerConfig

  @nn.compact
  def __call__(self, queries_bqd: jax.Array, image_bse: jax.Array, deterministic: bool = True) -> jax.Array:
    cfg = self.config
    if image_bse.shape[-1] != cfg.encoder_dim:
      raise ValueError(
          f"image features have width {image_bse.shape[-1]}, qformer.encoder_dim is {cfg.encoder_dim}; "
          "the vision tower and the Q-Former configs disagree"
      )
    cd = cfg.compute_dtype
    image_bse = constrain(image_bse.astype(cd), ("batch", "length", "act_vit_embed"))
    x_bqd = LayerNorm(cfg.norm_eps, cd, cfg.weight_dtype, name="embed_norm")(queries_bqd)
    x_bqd = nn.Dropout(cfg.dropout_rate)(x_bqd, deterministic=deterministic)
    for i in range(cfg.num_layers):
      layer = QFormerLayer(cfg, cfg.has_cross_attention(i), name=f"layers_{i}")
      x_bqd = layer(x_bqd, image_bse, deterministic)
    return x_bqd


def boxed_init_fn(cfg: QFormerConfig):
  """rng -> boxed params, for `sharding.sharded_init`."""
  queries = jnp.zeros((1, cfg.num_queries, cfg.embed_dim), jnp.float32)
  image = jnp.zeros((1, 1, cfg.encoder_dim), jnp.float32)
  return lambda rng: QFormer(cfg).init(rng, queries, image)["params"]


def abstract_params(cfg: QFormerConfig):
  return nn.unbox(jax.eval_shape(boxed_init_fn(cfg), jax.random.key(0)))
