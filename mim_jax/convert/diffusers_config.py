"""diffusers config.json → our diffusion configs (models/diffusion/): the UNet's
`unet/config.json`, the VAE's `vae/config.json` and a `scheduler_config.json`,
with diffusers' defaults filled in and per-block values normalised to one entry
per block (diffusers accepts ints or lists).

Only what SD 1.x, SD 2.x, SDXL base and SDXL refiner use is supported; any
other option is rejected by name rather than silently ignored.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from mim_jax.models import config_checks
from mim_jax.models.diffusion.schedulers import BETA_SCHEDULES, PREDICTION_TYPES, SPACINGS, SchedulerConfig
from mim_jax.models.diffusion.unet_config import UNetConfig
from mim_jax.models.diffusion.vae import VAEConfig
from mim_jax.nn.attention import IMPLEMENTATIONS

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCK = "UNetMidBlock2DCrossAttn"

# diffusers defaults for every field we read; release configs list them all, tiny test configs may not.
_DEFAULTS = dict(
    in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    mid_block_type=MID_BLOCK, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    downsample_padding=1, mid_block_scale_factor=1.0, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=1280, transformer_layers_per_block=1, attention_head_dim=8, num_attention_heads=None,
    use_linear_projection=False, addition_embed_type=None, sample_size=None, addition_time_embed_dim=None,
    projection_class_embeddings_input_dim=None, conv_in_kernel=3, conv_out_kernel=3,
)
# Options that change the network; the value every supported release uses.
_FIXED = dict(
    center_input_sample=False, only_cross_attention=False, dual_cross_attention=False, class_embed_type=None,
    num_class_embeds=None, resnet_time_scale_shift="default", resnet_skip_time_act=False,
    resnet_out_scale_factor=1.0, time_embedding_type="positional", time_embedding_dim=None,
    time_embedding_act_fn=None, timestep_post_act=None, time_cond_proj_dim=None, encoder_hid_dim=None,
    encoder_hid_dim_type=None, attention_type="default", class_embeddings_concat=False,
    mid_block_only_cross_attention=None, cross_attention_norm=None, reverse_transformer_layers_per_block=None,
)
# diffusers scheduler classes → the SchedulerConfig kind that computes them.
SCHEDULER_KINDS = {"EulerDiscreteScheduler": "euler", "DDIMScheduler": "ddim"}


def unet_config_from_diffusers(values: Mapping[str, Any], source: str = "unet/config.json", **overrides) -> UNetConfig:
  if values.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
    raise ValueError(f"{source}: _class_name is {values['_class_name']!r}; expected 'UNet2DConditionModel'")
  v = {**_DEFAULTS, **values}
  for field, allowed in _FIXED.items():
    if v.get(field, allowed) != allowed and not (field == "mid_block_only_cross_attention" and v[field] is False):
      raise ValueError(f"{source}: {field}={v[field]!r} is not supported (SD 1.x/2.x/XL use {allowed!r})")
  if v["act_fn"] != "silu":
    raise ValueError(f"{source}: act_fn {v['act_fn']!r} is not supported; Stable Diffusion uses 'silu'")
  down, up = tuple(v["down_block_types"]), tuple(v["up_block_types"])
  for kind, types, allowed in (("down", down, DOWN_BLOCKS), ("up", up, UP_BLOCKS)):
    bad = [t for t in types if t not in allowed]
    if bad:
      raise ValueError(f"{source}: {kind}_block_types {bad} are not supported; supported: {allowed}")
  if v["mid_block_type"] != MID_BLOCK:
    raise ValueError(f"{source}: mid_block_type {v['mid_block_type']!r} is not supported; only {MID_BLOCK!r}")
  n = len(down)
  if len(up) != n or len(v["block_out_channels"]) != n:
    raise ValueError(f"{source}: down_block_types, up_block_types and block_out_channels must have equal lengths")
  if v["addition_embed_type"] not in (None, "text_time"):
    raise ValueError(f"{source}: addition_embed_type {v['addition_embed_type']!r} is not supported "
                     "(None for SD 1.x/2.x, 'text_time' for SDXL)")
  if isinstance(v["cross_attention_dim"], (list, tuple)):
    if len(set(v["cross_attention_dim"])) != 1:
      raise ValueError(f"{source}: per-block cross_attention_dim {v['cross_attention_dim']} is not supported")
    v["cross_attention_dim"] = v["cross_attention_dim"][0]
  heads = v["num_attention_heads"] or v["attention_head_dim"]
  config = UNetConfig(
      in_channels=v["in_channels"], out_channels=v["out_channels"],
      block_out_channels=tuple(v["block_out_channels"]), down_block_types=down, up_block_types=up,
      layers_per_block=_per_block(v, "layers_per_block", n, source),
      transformer_layers_per_block=_per_block(v, "transformer_layers_per_block", n, source),
      num_heads=_per_block({"heads": heads}, "heads", n, source), cross_attention_dim=v["cross_attention_dim"],
      use_linear_projection=bool(v["use_linear_projection"]), flip_sin_to_cos=bool(v["flip_sin_to_cos"]),
      freq_shift=v["freq_shift"], norm_num_groups=v["norm_num_groups"], norm_eps=v["norm_eps"],
      downsample_padding=v["downsample_padding"], mid_block_scale_factor=float(v["mid_block_scale_factor"]),
      addition_embed_type=v["addition_embed_type"], addition_time_embed_dim=v["addition_time_embed_dim"],
      projection_class_embeddings_input_dim=v["projection_class_embeddings_input_dim"],
      conv_in_kernel=v["conv_in_kernel"], conv_out_kernel=v["conv_out_kernel"], sample_size=v.get("sample_size"),
      **overrides)
  config_checks.check_choice("unet", "attention_impl", config.attention_impl, IMPLEMENTATIONS)
  config_checks.check_choice("unet", "dtype", config.dtype, config_checks.DTYPES)
  for channels, num_heads in zip(config.block_out_channels, config.num_heads):
    if channels % num_heads:
      raise ValueError(f"{source}: block width {channels} is not divisible by its {num_heads} attention heads")
  if config.addition_embed_type == "text_time" and not (
      config.addition_time_embed_dim and config.projection_class_embeddings_input_dim):
    raise ValueError(f"{source}: addition_embed_type 'text_time' needs addition_time_embed_dim and "
                     "projection_class_embeddings_input_dim")
  return config


def _per_block(values: Mapping[str, Any], field: str, n: int, source: str) -> tuple[int, ...]:
  value = values[field]
  if isinstance(value, int):
    return (value,) * n
  if len(value) != n or not all(isinstance(x, int) for x in value):
    raise ValueError(f"{source}: {field} {value!r} must be an int or one int per block ({n} blocks)")
  return tuple(value)


def vae_config_from_diffusers(values: Mapping[str, Any], source: str = "vae/config.json", **overrides) -> VAEConfig:
  if values.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
    raise ValueError(f"{source}: _class_name is {values['_class_name']!r}; expected 'AutoencoderKL'")
  for field, allowed in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
    bad = [t for t in values.get(field, ()) if t != allowed]
    if bad:
      raise ValueError(f"{source}: {field} {bad} are not supported; only {allowed!r}")
  if values.get("act_fn", "silu") != "silu":
    raise ValueError(f"{source}: act_fn {values['act_fn']!r} is not supported; the SD VAE uses 'silu'")
  if values.get("latents_mean") is not None or values.get("latents_std") is not None:
    raise ValueError(f"{source}: latents_mean/latents_std normalisation is not supported")
  known = {f.name for f in dataclasses.fields(VAEConfig)}
  picked = {k: v for k, v in values.items() if k in known}
  picked["block_out_channels"] = tuple(picked.get("block_out_channels", VAEConfig.block_out_channels))
  picked = {k: v for k, v in picked.items() if v is not None or k == "shift_factor"}
  return VAEConfig(**{**picked, **overrides})


def scheduler_config_from_diffusers(values: Mapping[str, Any], source: str = "scheduler_config.json",
                                    kind: str | None = None) -> SchedulerConfig:
  """From a diffusers scheduler config; `kind` ("euler"/"ddim") overrides its `_class_name`,
  as swapping a pipeline's scheduler in diffusers does."""
  if kind is None:
    name = values.get("_class_name")
    if name not in SCHEDULER_KINDS:
      raise ValueError(f"{source}: scheduler {name!r} is not supported; supported: {', '.join(SCHEDULER_KINDS)} "
                       "(pass kind='euler' or kind='ddim' to use one of them with this config)")
    kind = SCHEDULER_KINDS[name]
  if kind not in SCHEDULER_KINDS.values():
    raise ValueError(f"scheduler kind {kind!r} is not one of {sorted(SCHEDULER_KINDS.values())}")
  _reject(values, source, trained_betas=None, thresholding=False, rescale_betas_zero_snr=False,
          use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
          interpolation_type="linear", timestep_type="discrete", final_sigmas_type="zero")
  defaults = {"ddim": dict(clip_sample=True, timestep_spacing="leading"), "euler": {}}[kind]
  known = {f.name for f in dataclasses.fields(SchedulerConfig)} - {"kind"}
  config = SchedulerConfig(kind=kind, **{**defaults, **{k: v for k, v in values.items() if k in known}})
  for field, allowed in (("timestep_spacing", SPACINGS), ("beta_schedule", BETA_SCHEDULES),
                         ("prediction_type", PREDICTION_TYPES)):
    if getattr(config, field) not in allowed:
      raise ValueError(f"{source}: {field} {getattr(config, field)!r} is not supported; use one of {allowed}")
  return config


def _reject(values: Mapping[str, Any], source: str, **supported) -> None:
  for field, value in supported.items():
    if values.get(field) is not None and values[field] != value:  # None (JSON null) means the default
      raise ValueError(f"{source}: {field}={values[field]!r} is not supported (only {value!r})")
