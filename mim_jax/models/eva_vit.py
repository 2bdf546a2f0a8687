"""BLIP-2's EVA ViT-g/14, numerically equal to transformers' Blip2VisionModel.

Pixels are NHWC float32 (b, 224, 224, 3), already normalised by
`mim_jax.data.images`. The output is `last_hidden_state` after the post
LayerNorm: (b, 1 + (224/14)**2, width) = (b, 257, 1408).

Pre-LN blocks; attention has a query and a value bias but no key bias (EVA),
stored as one (2, heads, head_dim) `qv_bias`; the MLP uses the exact GELU.
Every LayerNorm uses `norm_eps` (HF's single `layer_norm_eps`, 1e-6 for the
release; LAVIS used 1e-5 for its final `ln_vision`, HF does not).
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
from mim_jax.nn.encoder_layers import GeluMLP, LayerNorm, bias_param, embed_patches
from mim_jax.nn.layers import dense_param
from mim_jax.nn.remat import POLICY_NAMES, remat_layer
from mim_jax.nn.sharding import constrain

_SECTION = "vision"


@dataclasses.dataclass(frozen=True)
class VisionConfig(config_checks.TowerConfig):
  SECTION: ClassVar[str] = _SECTION

  image_size: int = 224
  patch_size: int = 14
  embed_dim: int = 1408
  num_layers: int = 39
  num_heads: int = 16
  mlp_dim: int = 6144
  norm_eps: float = 1e-6
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = True
  remat_policy: str = "none"
  attention_impl: str = "xla"

  def __post_init__(self):
    self.check_dtypes_and_attention()
    config_checks.check_choice(_SECTION, "remat_policy", self.remat_policy, POLICY_NAMES)
    config_checks.check_positive_ints(
        _SECTION, self, ("image_size", "patch_size", "embed_dim", "num_layers", "num_heads", "mlp_dim"))
    config_checks.check_divides(_SECTION, self, "image_size", "patch_size")
    config_checks.check_divides(_SECTION, self, "embed_dim", "num_heads")

  @classmethod
  def preset(cls, name: str, **overrides) -> "VisionConfig":
    return from_preset(cls, PRESETS, name, overrides)

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_positions(self) -> int:
    return self.grid_size**2 + 1


PRESETS = {
    # Salesforce/blip2-* vision_config (Blip2VisionConfig defaults): 39 of EVA-CLIP-g's 40 blocks.
    "eva_vit_g": dict(image_size=224, patch_size=14, embed_dim=1408, num_layers=39, num_heads=16, mlp_dim=6144,
                      norm_eps=1e-6),
    "tiny": dict(image_size=28, patch_size=14, embed_dim=32, num_layers=2, num_heads=4, mlp_dim=64, norm_eps=1e-6),
}


class VisionAttention(nn.Module):
  config: VisionConfig

  @nn.compact
  def __call__(self, x_btd):
    cfg = self.config
    d, n, h = cfg.embed_dim, cfg.num_heads, cfg.head_dim
    pd, cd = cfg.weight_dtype, cfg.compute_dtype
    qkv_dcnh = dense_param(self, "qkv_kernel", (d, 3, n, h), ("vit_embed", None, "vit_heads", "head_dim"), pd, d)
    qv_bias_cnh = bias_param(self, "qv_bias", (2, n, h), (None, "vit_heads", "head_dim"), pd).astype(cd)
    o_nhd = dense_param(self, "o_kernel", (n, h, d), ("vit_heads", "head_dim", "vit_embed"), pd, d)
    o_bias_d = bias_param(self, "o_bias", (d,), ("vit_embed",), pd)

    qkv_btcnh = jnp.einsum("btd,dcnh->btcnh", x_btd, qkv_dcnh.astype(cd))
    names = ("batch", "length", "act_heads", "head_dim")
    q_btnh = constrain(qkv_btcnh[:, :, 0] + qv_bias_cnh[0], names)
    k_btnh = constrain(qkv_btcnh[:, :, 1], names)
    v_btnh = constrain(qkv_btcnh[:, :, 2] + qv_bias_cnh[1], names)
    out_btnh = dot_product_attention(q_btnh, k_btnh, v_btnh, None, impl=cfg.attention_impl)
    return jnp.einsum("btnh,nhd->btd", out_btnh, o_nhd.astype(cd)) + o_bias_d.astype(cd)


class VisionLayer(nn.Module):
  """Pre-LN block; returns (x, None) so that it scans like the LLM's layers."""

  config: VisionConfig

  @nn.compact
  def __call__(self, x_btd):
    cfg = self.config
    norm = lambda name: LayerNorm(cfg.norm_eps, cfg.compute_dtype, cfg.weight_dtype, name=name)
    x_btd = x_btd + VisionAttention(cfg, name="attn")(norm("attn_norm")(x_btd))
    mlp = GeluMLP(cfg.mlp_dim, "vit_embed", "vit_mlp", cfg.compute_dtype, cfg.weight_dtype, name="mlp")
    x_btd = x_btd + mlp(norm("mlp_norm")(x_btd))
    return constrain(x_btd, ("batch", "length", "act_vit_embed")), None


class EvaViT(nn.Module):
  """Patch embedding (14x14 conv as a matmul) + class token + learned positions
  → pre-LN blocks → post LayerNorm. Returns (b, num_positions, embed_dim)."""

  config: VisionConfig

  @nn.compact
  def __call__(self, pixels_bhwc: jax.Array) -> jax.Array:
    cfg = self.config
    x_btd = embed_patches(self, cfg, pixels_bhwc, patch_bias=True, preprocess="mim_jax.data.images")
    pd, cd = cfg.weight_dtype, cfg.compute_dtype
    x_btd = constrain(x_btd, ("batch", "length", "act_vit_embed"))

    layer = remat_layer(VisionLayer, cfg.remat_policy, cfg.scan_layers)
    if cfg.scan_layers:
      layers = nn.scan(
          layer,
          variable_axes={"params": 0},
          split_rngs={"params": True},
          length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )(cfg, name="layers")
      x_btd, _ = layers(x_btd)
    else:
      for i in range(cfg.num_layers):
        x_btd, _ = layer(cfg, name=f"layers_{i}")(x_btd)
    return LayerNorm(cfg.norm_eps, cd, pd, name="post_norm")(x_btd)


def boxed_init_fn(cfg: VisionConfig):
  """rng -> boxed params, for `sharding.sharded_init`."""
  model = EvaViT(cfg)
  pixels = jnp.zeros((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
  return lambda rng: model.init(rng, pixels)["params"]


def abstract_params(cfg: VisionConfig):
  return nn.unbox(jax.eval_shape(boxed_init_fn(cfg), jax.random.key(0)))


def init_params(cfg: VisionConfig, rng: jax.Array):
  """Random params as a plain nested dict (unsharded)."""
  return nn.unbox(boxed_init_fn(cfg)(rng))
