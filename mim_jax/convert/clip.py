"""HF CLIP checkpoints → ours (models/clip.py), read without torch.

Loads, from a directory with config.json and safetensors:
- `CLIPModel` (model_type "clip"): `load_hf_clip` → (ClipConfig, params with
  "vision", "text", "logit_scale"); either tower alone with
  `load_hf_clip_vision` / `load_hf_clip_text`.
- `CLIPTextModel` / `CLIPTextModelWithProjection` (model_type
  "clip_text_model"; Stable Diffusion's `text_encoder`, SDXL's
  `text_encoder` and `text_encoder_2`): `load_hf_clip_text`. A text tower
  without `text_projection.weight` gets projection_dim 0.
- `CLIPVisionModel(WithProjection)` (model_type "clip_vision_model"):
  `load_hf_clip_vision`.

Layouts: HF Linear weights are (out, in), ours (in, out) with heads split:
q/k/v kernels (in, heads, head_dim), o kernel (heads, head_dim, out). The patch
conv (d, 3, p, p) becomes (p, p, 3, d). Tensors HF no longer reads
(`position_ids` buffers in old SD checkpoints) are ignored.

Tower prefixes: `text_model.` / `vision_model.` everywhere except bare
CLIPTextModel / CLIPVisionModel saved by transformers >= 5, which drop them;
SD 1.x's text_encoder (older transformers) keeps `text_model.`. Both load.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping


from mim_jax.convert.safetensors_io import CheckpointReader
from mim_jax.convert.table import (
  Entry,
  conv_kernel,
  head_bias,
  heads_in,
  heads_out,
  linear_entries,
  load_layered,
  norm_entries,
  read_config_json,
  read_tensor,
  shapes_of,
  transpose,
)
from mim_jax.models import clip
from mim_jax.models.clip_config import ACTIVATIONS, ClipConfig, ClipTextConfig, ClipVisionConfig

def _attention(hf: str) -> tuple[Entry, ...]:
  entries = []
  for name in ("q", "k", "v"):
    entries.append(Entry(f"{hf}.{name}_proj.weight", ("attn", f"{name}_kernel"), *heads_in))
    entries.append(Entry(f"{hf}.{name}_proj.bias", ("attn", f"{name}_bias"), *head_bias))
  entries.append(Entry(f"{hf}.out_proj.weight", ("attn", "o_kernel"), *heads_out))
  entries.append(Entry(f"{hf}.out_proj.bias", ("attn", "o_bias")))
  return tuple(entries)


LAYER_TABLE: tuple[Entry, ...] = (
    *norm_entries("encoder.layers.{i}.layer_norm1", "attn_norm"),
    *_attention("encoder.layers.{i}.self_attn"),
    *norm_entries("encoder.layers.{i}.layer_norm2", "mlp_norm"),
    *linear_entries("encoder.layers.{i}.mlp.fc1", ("mlp", "fc1")),
    *linear_entries("encoder.layers.{i}.mlp.fc2", ("mlp", "fc2")),
)
VISION_TABLE: tuple[Entry, ...] = (
    Entry("embeddings.class_embedding", ("class_embedding",)),
    Entry("embeddings.patch_embedding.weight", ("patch_kernel",), *conv_kernel),
    Entry("embeddings.position_embedding.weight", ("position_embedding",)),
    *norm_entries("pre_layrnorm", "pre_norm"),
    *norm_entries("post_layernorm", "post_norm"),
    *LAYER_TABLE,
)
TEXT_TABLE: tuple[Entry, ...] = (
    Entry("embeddings.token_embedding.weight", ("token_embedding",)),
    Entry("embeddings.position_embedding.weight", ("position_embedding",)),
    *norm_entries("final_layer_norm", "final_norm"),
    *LAYER_TABLE,
)
VISION_PROJECTION = Entry("visual_projection.weight", ("projection",), transpose, transpose)
TEXT_PROJECTION = Entry("text_projection.weight", ("projection",), transpose, transpose)
LOGIT_SCALE = Entry("logit_scale", ("logit_scale",))

# CLIPVisionConfig / CLIPTextConfig / CLIPConfig defaults: config.json files may list only non-default fields.
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5, num_channels=3,
                        projection_dim=512)
_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                      layer_norm_eps=1e-5, eos_token_id=49407, projection_dim=512)
_CLIP_PROJECTION_DIM = 512

_KINDS = {"clip": "CLIPModel", "clip_text_model": "CLIPTextModel(WithProjection)",
          "clip_vision_model": "CLIPVisionModel(WithProjection)"}

# --------------------------------------------------------------------------- config


def _activation(values: Mapping[str, Any], section: str, source: str) -> str:
  if values["hidden_act"] not in ACTIVATIONS:
    raise ValueError(f"{source}: {section}.hidden_act {values['hidden_act']!r} is not supported; "
                     f"CLIP checkpoints use one of {ACTIVATIONS}")
  return values["hidden_act"]


def vision_config_from_hf(hf: Mapping[str, Any], *, projection_dim: int | None = None,
                          source: str = "config.json", **overrides) -> ClipVisionConfig:
  """ClipVisionConfig from a CLIPVisionConfig dict; `projection_dim` overrides its own (CLIPModel's is global)."""
  values = {**_VISION_DEFAULTS, **hf}
  if values["num_channels"] != 3:
    raise ValueError(f"{source}: vision_config.num_channels is {values['num_channels']}; only RGB (3) is supported")
  config = dict(
      image_size=int(values["image_size"]), patch_size=int(values["patch_size"]), embed_dim=values["hidden_size"],
      num_layers=values["num_hidden_layers"], num_heads=values["num_attention_heads"],
      mlp_dim=values["intermediate_size"], activation=_activation(values, "vision_config", source),
      norm_eps=float(values["layer_norm_eps"]),
      projection_dim=values["projection_dim"] if projection_dim is None else projection_dim,
  )
  return ClipVisionConfig.from_dict({**config, **overrides})


def text_config_from_hf(hf: Mapping[str, Any], *, projection_dim: int | None = None,
                        source: str = "config.json", **overrides) -> ClipTextConfig:
  """ClipTextConfig from a CLIPTextConfig dict; `projection_dim` overrides its own (0: no projection)."""
  values = {**_TEXT_DEFAULTS, **hf}
  config = dict(
      vocab_size=values["vocab_size"], max_positions=values["max_position_embeddings"],
      embed_dim=values["hidden_size"], num_layers=values["num_hidden_layers"],
      num_heads=values["num_attention_heads"], mlp_dim=values["intermediate_size"],
      activation=_activation(values, "text_config", source), norm_eps=float(values["layer_norm_eps"]),
      eos_token_id=values["eos_token_id"],
      projection_dim=values["projection_dim"] if projection_dim is None else projection_dim,
  )
  return ClipTextConfig.from_dict({**config, **overrides})


def _read_hf_config(directory, accepted: tuple[str, ...], loader: str) -> tuple[dict, str]:
  hf, path = read_config_json(directory, " or ".join(_KINDS[kind] for kind in accepted))
  if hf.get("model_type") not in accepted:
    raise ValueError(
        f"{path}: model_type is {hf.get('model_type')!r}, architectures {hf.get('architectures')}; {loader} reads "
        f"{' or '.join(_KINDS[kind] for kind in accepted)} checkpoints (model_type {' or '.join(map(repr, accepted))})"
    )
  return hf, str(path)


# --------------------------------------------------------------------------- weights


def load_tower_params(reader: CheckpointReader, cfg: ClipVisionConfig | ClipTextConfig, *, prefix: str) -> dict:
  """One tower's params (host numpy, `cfg.param_dtype`). `prefix` is "vision_model." or "text_model.";
  a checkpoint whose tower tensors carry no prefix (see the module docstring) is read without it."""
  vision = isinstance(cfg, ClipVisionConfig)
  probe = (VISION_TABLE if vision else TEXT_TABLE)[0].hf
  if prefix + probe not in reader and probe in reader:
    prefix = ""
  shapes = shapes_of(clip.abstract_params(cfg))
  params = load_layered(reader, VISION_TABLE if vision else TEXT_TABLE, cfg, shapes, prefix=prefix,
                        num_layers=cfg.num_layers, scan_layers=cfg.scan_layers)
  if cfg.projection_dim:
    entry = VISION_PROJECTION if vision else TEXT_PROJECTION
    params["projection"] = read_tensor(reader, entry, entry.hf, shapes["projection"], cfg)
  return params


def load_hf_clip(directory: str | os.PathLike, **tower_overrides) -> tuple[ClipConfig, dict]:
  """HF CLIPModel → (ClipConfig, {"vision", "text", "logit_scale"}). `tower_overrides` (dtype,
  param_dtype, scan_layers, remat_policy, attention_impl) apply to both towers."""
  hf, source = _read_hf_config(directory, ("clip",), "load_hf_clip")
  projection_dim = hf.get("projection_dim", _CLIP_PROJECTION_DIM)
  cfg = ClipConfig(
      vision=vision_config_from_hf(hf.get("vision_config") or {}, projection_dim=projection_dim, source=source,
                                   **tower_overrides),
      text=text_config_from_hf(hf.get("text_config") or {}, projection_dim=projection_dim, source=source,
                               **tower_overrides),
      logit_scale_init=float(hf.get("logit_scale_init_value", ClipConfig.logit_scale_init)),
  )
  reader = CheckpointReader(directory)
  # The temperature stays float32 whatever the towers' param dtype, as ClipModel creates it.
  logit_scale_cfg = dataclasses.replace(cfg.text, param_dtype="float32")
  params = {
      "vision": load_tower_params(reader, cfg.vision, prefix="vision_model."),
      "text": load_tower_params(reader, cfg.text, prefix="text_model."),
      "logit_scale": read_tensor(reader, LOGIT_SCALE, LOGIT_SCALE.hf, (), logit_scale_cfg),
  }
  return cfg, params


def _has_projection(hf: Mapping[str, Any], reader: CheckpointReader, projection: Entry,
                    plain_architecture: str) -> bool:
  """From config.json's architectures (`plain_architecture` has none), else from the tensors."""
  architectures = hf.get("architectures") or []
  if architectures:
    return plain_architecture not in architectures
  return projection.hf in reader


def load_hf_clip_text(directory: str | os.PathLike, **overrides) -> tuple[ClipTextConfig, dict]:
  """The text tower of a CLIPTextModel, CLIPTextModelWithProjection or CLIPModel → (ClipTextConfig, params)."""
  hf, source = _read_hf_config(directory, ("clip_text_model", "clip"), "load_hf_clip_text")
  reader = CheckpointReader(directory)
  if hf["model_type"] == "clip":
    projection_dim = hf.get("projection_dim", _CLIP_PROJECTION_DIM)
    cfg = text_config_from_hf(hf.get("text_config") or {}, projection_dim=projection_dim, source=source, **overrides)
  else:
    with_projection = _has_projection(hf, reader, TEXT_PROJECTION, "CLIPTextModel")
    cfg = text_config_from_hf(hf, projection_dim=None if with_projection else 0, source=source, **overrides)
  return cfg, load_tower_params(reader, cfg, prefix="text_model.")


def load_hf_clip_vision(directory: str | os.PathLike, **overrides) -> tuple[ClipVisionConfig, dict]:
  """The vision tower of a CLIPVisionModel(WithProjection) or CLIPModel → (ClipVisionConfig, params)."""
  hf, source = _read_hf_config(directory, ("clip_vision_model", "clip"), "load_hf_clip_vision")
  reader = CheckpointReader(directory)
  if hf["model_type"] == "clip":
    projection_dim = hf.get("projection_dim", _CLIP_PROJECTION_DIM)
    cfg = vision_config_from_hf(hf.get("vision_config") or {}, projection_dim=projection_dim, source=source,
                                **overrides)
  else:
    with_projection = _has_projection(hf, reader, VISION_PROJECTION, "CLIPVisionModel")
    cfg = vision_config_from_hf(hf, projection_dim=None if with_projection else 0, source=source, **overrides)
  return cfg, load_tower_params(reader, cfg, prefix="vision_model.")
