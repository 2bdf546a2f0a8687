"""CLIP's vision and text towers, numerically equal to transformers' CLIP models.

- `ClipVisionTower`: NHWC pixels (b, size, size, 3), normalised by
  `mim_jax.data.clip_images` → patch conv (no bias) + class token + learned
  positions → pre LayerNorm → pre-LN blocks. Pooled = post LayerNorm of the class
  token; `embeds` = pooled @ visual projection.
- `ClipTextTower`: token ids (b, t ≤ max_positions) → token + position
  embeddings → causal pre-LN blocks → final LayerNorm. Pooled = the final state
  at the end-of-text token (`ClipTextConfig.eos_token_id` has the rule);
  `embeds` = pooled @ text projection.
- `ClipModel`: both towers and `logit_scale` (HF `CLIPModel`), with
  `encode_image` / `encode_text` methods and a call giving the similarity logits.

Both towers return every HF output: `last_hidden_state`, `pooled`, `embeds`
(projected, unnormalised; None without a projection), `penultimate_hidden_state`
(HF `hidden_states[-2]`, the input of the last block, before any final norm: what
SDXL conditions on) and, with `output_hidden_states=True`, `hidden_states`
stacked (num_layers + 1, b, t, d) like HF's tuple.

Params: q/k/v kernels (d, heads, head_dim) with (heads, head_dim) biases, o
kernel (heads, head_dim, d); both towers use the `vit_*` logical axes.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from mim_jax.models.clip_config import ClipConfig, ClipTextConfig, ClipVisionConfig
from mim_jax.nn.attention import dot_product_attention
from mim_jax.nn.encoder_layers import Dense, LayerNorm, bias_param, embed_patches
from mim_jax.nn.layers import dense_param
from mim_jax.nn.remat import remat_layer
from mim_jax.nn.sharding import constrain

TowerConfig = ClipVisionConfig | ClipTextConfig

_ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: nn.gelu(x, approximate=False),
}


@flax.struct.dataclass
class ClipTowerOutput:
  last_hidden_state: jax.Array  # text: after the final LayerNorm; vision: raw encoder output, as in HF
  pooled: jax.Array  # (b, d)
  embeds: Optional[jax.Array]  # (b, projection_dim), not normalised; None without a projection
  penultimate_hidden_state: jax.Array  # HF hidden_states[-2]
  hidden_states: Optional[jax.Array] = None  # (num_layers + 1, b, t, d) when asked for


class ClipAttention(nn.Module):
  config: TowerConfig

  @nn.compact
  def __call__(self, x_btd, mask_bts):
    cfg = self.config
    d, n, h = cfg.embed_dim, cfg.num_heads, cfg.head_dim
    pd, cd = cfg.weight_dtype, cfg.compute_dtype
    names = ("batch", "length", "act_heads", "head_dim")

    def project(name):
      kernel_dnh = dense_param(self, f"{name}_kernel", (d, n, h), ("vit_embed", "vit_heads", "head_dim"), pd, d)
      bias_nh = bias_param(self, f"{name}_bias", (n, h), ("vit_heads", "head_dim"), pd)
      return constrain(jnp.einsum("btd,dnh->btnh", x_btd, kernel_dnh.astype(cd)) + bias_nh.astype(cd), names)

    out_btnh = dot_product_attention(project("q"), project("k"), project("v"), mask_bts, impl=cfg.attention_impl)
    o_nhd = dense_param(self, "o_kernel", (n, h, d), ("vit_heads", "head_dim", "vit_embed"), pd, d)
    o_bias_d = bias_param(self, "o_bias", (d,), ("vit_embed",), pd)
    return jnp.einsum("btnh,nhd->btd", out_btnh, o_nhd.astype(cd)) + o_bias_d.astype(cd)


class ClipMLP(nn.Module):
  config: TowerConfig

  @nn.compact
  def __call__(self, x_btd):
    cfg = self.config
    dense = lambda features, axes, name: Dense(features, axes, cfg.compute_dtype, cfg.weight_dtype, name=name)
    hidden_btf = dense(cfg.mlp_dim, ("vit_embed", "vit_mlp"), "fc1")(x_btd)
    hidden_btf = constrain(_ACTIVATIONS[cfg.activation](hidden_btf), ("batch", "length", "act_mlp"))
    return dense(cfg.embed_dim, ("vit_mlp", "vit_embed"), "fc2")(hidden_btf)


class ClipLayer(nn.Module):
  """Pre-LN block. The carry is (x, this block's input) so that after the last
  block the second half is the penultimate hidden state; the scanned output is
  the block's result when `keep_hidden_states`, for HF's `hidden_states`."""

  config: TowerConfig
  keep_hidden_states: bool = False

  @nn.compact
  def __call__(self, carry, mask_bts):
    x_btd, _ = carry
    cfg = self.config
    norm = lambda name: LayerNorm(cfg.norm_eps, cfg.compute_dtype, cfg.weight_dtype, name=name)
    y_btd = x_btd + ClipAttention(cfg, name="attn")(norm("attn_norm")(x_btd), mask_bts)
    y_btd = y_btd + ClipMLP(cfg, name="mlp")(norm("mlp_norm")(y_btd))
    y_btd = constrain(y_btd, ("batch", "length", "act_vit_embed"))
    return (y_btd, x_btd), (y_btd if self.keep_hidden_states else None)


def _encode(cfg: TowerConfig, x_btd, mask_bts, output_hidden_states: bool):
  """The stack of blocks (call inside a compact method): (last, penultimate, hidden states or None)."""
  layer = remat_layer(ClipLayer, cfg.remat_policy, cfg.scan_layers)
  carry = (x_btd, x_btd)
  if cfg.scan_layers:
    layers = nn.scan(
        layer,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=nn.broadcast,
        length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, output_hidden_states, name="layers")
    carry, outputs_lbtd = layers(carry, mask_bts)
  else:
    outputs = []
    for i in range(cfg.num_layers):
      carry, output = layer(cfg, output_hidden_states, name=f"layers_{i}")(carry, mask_bts)
      outputs.append(output)
    outputs_lbtd = jnp.stack(outputs) if output_hidden_states else None
  hidden_lbtd = jnp.concatenate([x_btd[None], outputs_lbtd]) if output_hidden_states else None
  return carry[0], carry[1], hidden_lbtd


def _projection(module: nn.Module, name: str, cfg: TowerConfig, pooled_bd):
  if not cfg.projection_dim:
    return None
  d, p = cfg.embed_dim, cfg.projection_dim
  kernel_dp = dense_param(module, name, (d, p), ("vit_embed", None), cfg.weight_dtype, d)
  return jnp.einsum("bd,dp->bp", pooled_bd, kernel_dp.astype(cfg.compute_dtype))


class ClipVisionTower(nn.Module):
  """HF CLIPVisionModel(WithProjection): pixels (b, size, size, 3) → ClipTowerOutput."""

  config: ClipVisionConfig

  @nn.compact
  def __call__(self, pixels_bhwc: jax.Array, output_hidden_states: bool = False) -> ClipTowerOutput:
    cfg = self.config
    x_btd = embed_patches(self, cfg, pixels_bhwc, patch_bias=False, preprocess="mim_jax.data.clip_images")
    cd, pd = cfg.compute_dtype, cfg.weight_dtype
    x_btd = LayerNorm(cfg.norm_eps, cd, pd, name="pre_norm")(x_btd)
    x_btd = constrain(x_btd, ("batch", "length", "act_vit_embed"))

    last_btd, penultimate_btd, hidden_lbtd = _encode(cfg, x_btd, None, output_hidden_states)
    pooled_bd = LayerNorm(cfg.norm_eps, cd, pd, name="post_norm")(last_btd[:, 0])
    return ClipTowerOutput(last_btd, pooled_bd, _projection(self, "projection", cfg, pooled_bd), penultimate_btd,
                           hidden_lbtd)


class ClipTextTower(nn.Module):
  """HF CLIPTextModel(WithProjection): token ids (b, t) → ClipTowerOutput.

  `attention_mask_bt` (1 = token, 0 = padding), as the tokenizer returns it,
  only changes the states at padding positions; the pooled output never sees
  padding because attention is causal and padding follows the end token."""

  config: ClipTextConfig

  @nn.compact
  def __call__(self, token_ids_bt: jax.Array, attention_mask_bt: jax.Array | None = None,
               output_hidden_states: bool = False) -> ClipTowerOutput:
    cfg = self.config
    if token_ids_bt.ndim != 2 or not 0 < token_ids_bt.shape[1] <= cfg.max_positions:
      raise ValueError(
          f"token ids must be (batch, length) with 1 <= length <= {cfg.max_positions} (clip.text.max_positions), "
          f"got shape {token_ids_bt.shape}; tokenize with truncation to {cfg.max_positions}"
      )
    pd, cd = cfg.weight_dtype, cfg.compute_dtype
    d, t = cfg.embed_dim, token_ids_bt.shape[1]
    init = nn.initializers.normal(stddev=cfg.init_std)
    tokens_vd = self.param("token_embedding", nn.with_logical_partitioning(init, ("vocab", "vit_embed")),
                           (cfg.vocab_size, d), pd)
    positions_td = self.param("position_embedding", nn.with_logical_partitioning(init, (None, "vit_embed")),
                              (cfg.max_positions, d), pd)
    x_btd = jnp.take(tokens_vd, token_ids_bt, axis=0).astype(cd) + positions_td[:t].astype(cd)
    x_btd = constrain(x_btd, ("batch", "length", "act_vit_embed"))

    positions_bt = jnp.broadcast_to(jnp.arange(t), token_ids_bt.shape)
    mask_bts = positions_bt[:, None, :] <= positions_bt[:, :, None]
    if attention_mask_bt is not None:
      mask_bts = mask_bts & attention_mask_bt.astype(bool)[:, None, :]
    last_btd, penultimate_btd, hidden_lbtd = _encode(cfg, x_btd, mask_bts, output_hidden_states)
    last_btd = LayerNorm(cfg.norm_eps, cd, pd, name="final_norm")(last_btd)

    if cfg.legacy_eos:
      eos_b = jnp.argmax(token_ids_bt, axis=-1)
    else:
      # The first end token: padding may reuse its id.
      eos_b = jnp.argmax(token_ids_bt == cfg.eos_token_id, axis=-1)
    pooled_bd = jnp.take_along_axis(last_btd, eos_b[:, None, None], axis=1)[:, 0]
    return ClipTowerOutput(last_btd, pooled_bd, _projection(self, "projection", cfg, pooled_bd), penultimate_btd,
                           hidden_lbtd)


def normalize(x_bd: jax.Array) -> jax.Array:
  """x / ||x|| along the last axis, in float32."""
  x_bd = x_bd.astype(jnp.float32)
  return x_bd * jax.lax.rsqrt(jnp.sum(x_bd * x_bd, axis=-1, keepdims=True))


class ClipModel(nn.Module):
  """HF CLIPModel. Params: {"vision": …, "text": …, "logit_scale": ()}.

  `apply(..., method="encode_image" | "encode_text")` runs one tower; the call
  returns (logits_per_image (b_img, b_txt), image_embeds, text_embeds) with the
  embeds L2-normalised and logits = exp(logit_scale) · cosine, as HF."""

  config: ClipConfig

  def setup(self):
    self.vision = ClipVisionTower(self.config.vision)
    self.text = ClipTextTower(self.config.text)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.config.logit_scale_init), (),
                                  jnp.float32)

  def encode_image(self, pixels_bhwc, output_hidden_states: bool = False) -> ClipTowerOutput:
    return self.vision(pixels_bhwc, output_hidden_states)

  def encode_text(self, token_ids_bt, attention_mask_bt=None, output_hidden_states: bool = False) -> ClipTowerOutput:
    return self.text(token_ids_bt, attention_mask_bt, output_hidden_states)

  def __call__(self, pixels_bhwc, token_ids_bt, attention_mask_bt=None):
    image_bp = normalize(self.encode_image(pixels_bhwc).embeds)
    text_bp = normalize(self.encode_text(token_ids_bt, attention_mask_bt).embeds)
    logits_per_image = jnp.exp(self.logit_scale) * jnp.einsum("ip,tp->it", image_bp, text_bp)
    return logits_per_image, image_bp, text_bp


def _dummy_inputs(cfg: ClipVisionConfig | ClipTextConfig):
  if isinstance(cfg, ClipVisionConfig):
    return (jnp.zeros((1, cfg.image_size, cfg.image_size, 3), jnp.float32),)
  return (jnp.zeros((1, cfg.max_positions), jnp.int32),)


def boxed_init_fn(cfg: ClipConfig | ClipVisionConfig | ClipTextConfig):
  """rng -> boxed params of ClipModel or of one tower, for `sharding.sharded_init`."""
  if isinstance(cfg, ClipConfig):
    model, inputs = ClipModel(cfg), _dummy_inputs(cfg.vision) + _dummy_inputs(cfg.text)
  elif isinstance(cfg, ClipVisionConfig):
    model, inputs = ClipVisionTower(cfg), _dummy_inputs(cfg)
  else:
    model, inputs = ClipTextTower(cfg), _dummy_inputs(cfg)
  return lambda rng: model.init(rng, *inputs)["params"]


def abstract_params(cfg: ClipConfig | ClipVisionConfig | ClipTextConfig):
  return nn.unbox(jax.eval_shape(boxed_init_fn(cfg), jax.random.key(0)))


def init_params(cfg: ClipConfig | ClipVisionConfig | ClipTextConfig, rng: jax.Array):
  """Random params as a plain nested dict (unsharded)."""
  return nn.unbox(boxed_init_fn(cfg)(rng))
