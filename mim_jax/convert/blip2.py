"""HF Blip2ForConditionalGeneration (image side) ⇄ ours: config translation and
mapping tables for `vision_model.*`, `query_tokens`, `qformer.*` and
`language_projection.*`. The LLM (`language_model.*`) is convert/llama.py's.

Layouts (see models/eva_vit.py, qformer.py, image_encoder.py): HF Linear
weights are (out, in), ours (in, out) with heads split out: q/k/v kernels
(in, heads, head_dim), o kernels (heads, head_dim, out). The ViT's fused
`qkv.weight` (3d, d) becomes (d, 3, heads, head_dim); its `qkv.bias` is
[q_bias, 0, v_bias] (EVA has no key bias) and becomes qv_bias (2, heads,
head_dim). The patch conv (d, 3, p, p) becomes (p, p, 3, d). Prefixes are
arguments, so a bare Blip2VisionModel/Blip2QFormerModel directory (prefix "")
and TextBind's state dict (`qformer_projection.`) load through the same code.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Mapping

import numpy as np

from mim_jax.convert.safetensors_io import CheckpointReader
from mim_jax.convert.table import (
  Entry,
  conv_kernel,
  get_path,
  head_bias,
  heads_in,
  heads_out,
  layered_tensors,
  linear_entries,
  load_layered,
  norm_entries,
  read_config_json,
  read_tensor,
  set_path,
  shapes_of,
  to_host,
  transpose,
)
from mim_jax.models import eva_vit, qformer
from mim_jax.models.eva_vit import VisionConfig
from mim_jax.models.qformer import QFormerConfig


def _qv_bias_to_ours(w, c):
  q, k, v = w.reshape(3, c.num_heads, c.head_dim)
  if np.any(k != 0):
    raise ValueError("its key third is non-zero, but EVA's attention has no key bias; this is not a BLIP-2 ViT")
  return np.stack([q, v])


def _qv_bias_to_hf(w, c):
  return np.concatenate([w[0], np.zeros_like(w[0]), w[1]]).reshape(-1)


VISION_TABLE: tuple[Entry, ...] = (
    Entry("embeddings.class_embedding", ("class_embedding",), lambda w, c: w.reshape(-1),
          lambda w, c: w.reshape(1, 1, -1)),
    Entry("embeddings.patch_embedding.weight", ("patch_kernel",), *conv_kernel),
    Entry("embeddings.patch_embedding.bias", ("patch_bias",)),
    Entry("embeddings.position_embedding", ("position_embedding",), lambda w, c: w[0], lambda w, c: w[None]),
    *norm_entries("post_layernorm", "post_norm"),
    *norm_entries("encoder.layers.{i}.layer_norm1", "attn_norm"),
    Entry("encoder.layers.{i}.self_attn.qkv.weight", ("attn", "qkv_kernel"),
          lambda w, c: w.T.reshape(w.shape[1], 3, c.num_heads, c.head_dim), lambda w, c: w.reshape(w.shape[0], -1).T),
    Entry("encoder.layers.{i}.self_attn.qkv.bias", ("attn", "qv_bias"), _qv_bias_to_ours, _qv_bias_to_hf),
    Entry("encoder.layers.{i}.self_attn.projection.weight", ("attn", "o_kernel"), *heads_out),
    Entry("encoder.layers.{i}.self_attn.projection.bias", ("attn", "o_bias")),
    *norm_entries("encoder.layers.{i}.layer_norm2", "mlp_norm"),
    *linear_entries("encoder.layers.{i}.mlp.fc1", ("mlp", "fc1")),
    *linear_entries("encoder.layers.{i}.mlp.fc2", ("mlp", "fc2")),
)


def _attention(hf: str, ours: str) -> tuple[Entry, ...]:
  entries = []
  for hf_name, name in (("query", "q"), ("key", "k"), ("value", "v")):
    entries.append(Entry(f"{hf}.attention.{hf_name}.weight", (ours, f"{name}_kernel"), *heads_in))
    entries.append(Entry(f"{hf}.attention.{hf_name}.bias", (ours, f"{name}_bias"), *head_bias))
  entries.append(Entry(f"{hf}.output.dense.weight", (ours, "o_kernel"), *heads_out))
  entries.append(Entry(f"{hf}.output.dense.bias", (ours, "o_bias")))
  return (*entries, *norm_entries(f"{hf}.output.LayerNorm", f"{ours}_norm"))


QFORMER_TABLE: tuple[Entry, ...] = (*norm_entries("layernorm", "embed_norm"),)
QFORMER_LAYER_TABLE: tuple[Entry, ...] = (
    *_attention("encoder.layer.{i}.attention", "self_attn"),
    *linear_entries("encoder.layer.{i}.intermediate_query.dense", ("mlp", "fc1")),
    *linear_entries("encoder.layer.{i}.output_query.dense", ("mlp", "fc2")),
    *norm_entries("encoder.layer.{i}.output_query.LayerNorm", "mlp_norm"),
)
# Only in layers with cross-attention (QFormerConfig.has_cross_attention).
QFORMER_CROSS_TABLE: tuple[Entry, ...] = _attention("encoder.layer.{i}.crossattention", "cross_attn")

QUERY_TOKENS = Entry("query_tokens", ("query_tokens",), lambda w, c: w[0], lambda w, c: w[None])
PROJECTION_TABLE: tuple[Entry, ...] = (
    Entry("weight", ("projection", "kernel"), transpose, transpose),
    Entry("bias", ("projection", "bias")),
)

# Blip2VisionConfig / Blip2QFormerConfig defaults: release config.json files list only non-default fields.
_VISION_DEFAULTS = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                        image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True)
_QFORMER_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         hidden_act="gelu", hidden_dropout_prob=0.1, layer_norm_eps=1e-12,
                         cross_attention_frequency=2, encoder_hidden_size=1408)


# --------------------------------------------------------------------------- config


def _square(value, field: str, source: str) -> int:
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(f"{source}: vision_config.{field} {value!r} is not square; only square images are supported")
    value = value[0]
  return int(value)


def vision_config_from_hf(hf: Mapping[str, Any], source: str = "config.json", **overrides) -> VisionConfig:
  """VisionConfig from a Blip2VisionConfig dict (the `vision_config` of a Blip2Config)."""
  values = {**_VISION_DEFAULTS, **hf}
  if values.get("model_type", "blip_2_vision_model") != "blip_2_vision_model":
    raise ValueError(f"{source}: vision_config.model_type is {values['model_type']!r}; expected 'blip_2_vision_model'")
  if values["hidden_act"] != "gelu":
    raise ValueError(f"{source}: vision_config.hidden_act {values['hidden_act']!r} is not supported; EVA uses 'gelu'")
  if not values["qkv_bias"]:
    raise ValueError(f"{source}: vision_config.qkv_bias=false is not supported; EVA has query and value biases")
  config = dict(
      image_size=_square(values["image_size"], "image_size", source),
      patch_size=_square(values["patch_size"], "patch_size", source),
      embed_dim=values["hidden_size"],
      num_layers=values["num_hidden_layers"],
      num_heads=values["num_attention_heads"],
      mlp_dim=values["intermediate_size"],
      norm_eps=float(values["layer_norm_eps"]),
      # initializer_range is not read: BLIP-2's is 1e-10 and a pretrained frozen tower is never re-initialised.
  )
  return VisionConfig.from_dict({**config, **overrides})


def qformer_config_from_hf(hf: Mapping[str, Any], *, num_queries: int = 32, source: str = "config.json",
                           **overrides) -> QFormerConfig:
  """QFormerConfig from a Blip2QFormerConfig dict; `num_queries` is Blip2Config.num_query_tokens."""
  values = {**_QFORMER_DEFAULTS, **hf}
  if values.get("model_type", "blip_2_qformer") != "blip_2_qformer":
    raise ValueError(f"{source}: qformer_config.model_type is {values['model_type']!r}; expected 'blip_2_qformer'")
  if values["hidden_act"] != "gelu":
    raise ValueError(
        f"{source}: qformer_config.hidden_act {values['hidden_act']!r} is not supported; BLIP-2 uses 'gelu'")
  config = dict(
      num_queries=num_queries,
      embed_dim=values["hidden_size"],
      num_layers=values["num_hidden_layers"],
      num_heads=values["num_attention_heads"],
      mlp_dim=values["intermediate_size"],
      encoder_dim=values["encoder_hidden_size"],
      cross_attention_frequency=values["cross_attention_frequency"],
      norm_eps=float(values["layer_norm_eps"]),
      dropout_rate=float(values["hidden_dropout_prob"]),
      init_std=float(values.get("initializer_range", QFormerConfig.init_std)),
  )
  return QFormerConfig.from_dict({**config, **overrides})


def configs_from_hf(hf: Mapping[str, Any], source: str = "config.json", *, vision_overrides=None,
                    qformer_overrides=None) -> tuple[VisionConfig, QFormerConfig, int]:
  """(VisionConfig, QFormerConfig, LLM width) from a Blip2Config dict."""
  if hf.get("model_type") != "blip-2":
    raise ValueError(
        f"{source}: model_type is {hf.get('model_type')!r}, architectures {hf.get('architectures')}; "
        "this loader reads BLIP-2 checkpoints (model_type 'blip-2')"
    )
  vision = vision_config_from_hf(hf.get("vision_config") or {}, source, **(vision_overrides or {}))
  # Blip2Config forces the Q-Former's encoder width to the ViT's.
  qformer_hf = {**(hf.get("qformer_config") or {}), "encoder_hidden_size": vision.embed_dim}
  qformer_cfg = qformer_config_from_hf(qformer_hf, num_queries=hf.get("num_query_tokens", 32), source=source,
                                       **(qformer_overrides or {}))
  llm_width = (hf.get("text_config") or {}).get("hidden_size")
  if not isinstance(llm_width, int):
    raise ValueError(f"{source}: text_config.hidden_size is missing; it sets the width of language_projection")
  return vision, qformer_cfg, llm_width


def vision_config_to_hf(cfg: VisionConfig) -> dict[str, Any]:
  return dict(model_type="blip_2_vision_model", hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
              num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, image_size=cfg.image_size,
              patch_size=cfg.patch_size, hidden_act="gelu", layer_norm_eps=cfg.norm_eps, qkv_bias=True,
              initializer_range=cfg.init_std)


def qformer_config_to_hf(cfg: QFormerConfig) -> dict[str, Any]:
  return dict(model_type="blip_2_qformer", hidden_size=cfg.embed_dim, num_hidden_layers=cfg.num_layers,
              num_attention_heads=cfg.num_heads, intermediate_size=cfg.mlp_dim, hidden_act="gelu",
              hidden_dropout_prob=cfg.dropout_rate, attention_probs_dropout_prob=cfg.dropout_rate,
              layer_norm_eps=cfg.norm_eps, cross_attention_frequency=cfg.cross_attention_frequency,
              encoder_hidden_size=cfg.encoder_dim, initializer_range=cfg.init_std)


def read_hf_config(directory: str | os.PathLike, **overrides) -> tuple[VisionConfig, QFormerConfig, int]:
  hf, path = read_config_json(directory, "BLIP-2")
  return configs_from_hf(hf, str(path), **overrides)


# --------------------------------------------------------------------------- weights


def load_vision_params(reader: CheckpointReader, cfg: VisionConfig, prefix: str = "vision_model.") -> dict:
  """EvaViT params (host numpy, `cfg.param_dtype`), stacked on axis 0 when `cfg.scan_layers`."""
  return load_layered(reader, VISION_TABLE, cfg, shapes_of(eva_vit.abstract_params(cfg)), prefix=prefix,
                      num_layers=cfg.num_layers, scan_layers=cfg.scan_layers)


def _qformer_entries(cfg: QFormerConfig) -> Iterator[tuple[Entry, str, tuple[str, ...]]]:
  """(entry, HF name without prefix, our path) for every Q-Former tensor."""
  for entry in QFORMER_TABLE:
    yield entry, entry.hf, entry.ours
  for i in range(cfg.num_layers):
    cross = QFORMER_CROSS_TABLE if cfg.has_cross_attention(i) else ()
    for entry in QFORMER_LAYER_TABLE + cross:
      yield entry, entry.hf.format(i=i), (f"layers_{i}",) + entry.ours


def load_qformer_params(reader: CheckpointReader, cfg: QFormerConfig, prefix: str = "qformer.") -> dict:
  """QFormer params. Text-side tensors (embeddings, `intermediate`/`output`) are not read."""
  shapes = shapes_of(qformer.abstract_params(cfg))
  params: dict = {}
  for entry, name, path in _qformer_entries(cfg):
    set_path(params, path, read_tensor(reader, entry, prefix + name, get_path(shapes, path), cfg))
  return params


def load_image_encoder_params(reader: CheckpointReader, vision: VisionConfig, qformer_cfg: QFormerConfig,
                              llm_width: int, *, with_vision: bool = True, vision_prefix: str = "vision_model.",
                              qformer_prefix: str = "qformer.", query_tokens_name: str = "query_tokens",
                              projection_prefix: str = "language_projection.") -> dict:
  """ImageEncoder params. TextBind's MIM state dict: projection_prefix="qformer_projection."."""
  params: dict = {}
  if with_vision:
    params["vision"] = load_vision_params(reader, vision, vision_prefix)
  params["qformer"] = load_qformer_params(reader, qformer_cfg, qformer_prefix)
  q, d = qformer_cfg.num_queries, qformer_cfg.embed_dim
  params["query_tokens"] = read_tensor(reader, QUERY_TOKENS, query_tokens_name, (q, d), qformer_cfg)
  shapes = {"kernel": (d, llm_width), "bias": (llm_width,)}
  params["projection"] = {
      entry.ours[-1]: read_tensor(reader, entry, projection_prefix + entry.hf, shapes[entry.ours[-1]], qformer_cfg)
      for entry in PROJECTION_TABLE
  }
  return params


def load_hf_image_encoder(directory: str | os.PathLike, *, with_vision: bool = True, vision_overrides=None,
                          qformer_overrides=None) -> tuple[VisionConfig, QFormerConfig, int, dict]:
  """Reads the image side of a HF BLIP-2 directory: (vision, qformer, llm_width, params)."""
  vision, qformer_cfg, llm_width = read_hf_config(
      directory, vision_overrides=vision_overrides, qformer_overrides=qformer_overrides)
  params = load_image_encoder_params(CheckpointReader(directory), vision, qformer_cfg, llm_width,
                                     with_vision=with_vision)
  return vision, qformer_cfg, llm_width, params


# --------------------------------------------------------------------------- export


def vision_tensors(cfg: VisionConfig, params: Mapping, dtype: np.dtype,
                   prefix: str = "vision_model.") -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, array in HF layout and `dtype`) for every EvaViT weight, one at a time."""
  return layered_tensors(VISION_TABLE, cfg, params, dtype, prefix=prefix, num_layers=cfg.num_layers,
                         scan_layers=cfg.scan_layers)


def qformer_tensors(cfg: QFormerConfig, params: Mapping, dtype: np.dtype,
                    prefix: str = "qformer.") -> Iterator[tuple[str, np.ndarray]]:
  for entry, name, path in _qformer_entries(cfg):
    yield prefix + name, entry.to_hf(to_host(get_path(params, path)), cfg).astype(dtype)


def image_encoder_tensors(vision: VisionConfig, qformer_cfg: QFormerConfig, params: Mapping, dtype: np.dtype, *,
                          vision_prefix: str = "vision_model.", qformer_prefix: str = "qformer.",
                          query_tokens_name: str = "query_tokens",
                          projection_prefix: str = "language_projection.") -> Iterator[tuple[str, np.ndarray]]:
  """Every ImageEncoder weight under Blip2ForConditionalGeneration's names (vision only if present)."""
  if "vision" in params:
    yield from vision_tensors(vision, params["vision"], dtype, vision_prefix)
  yield from qformer_tensors(qformer_cfg, params["qformer"], dtype, qformer_prefix)
  yield query_tokens_name, QUERY_TOKENS.to_hf(to_host(params["query_tokens"]), qformer_cfg).astype(dtype)
  for entry in PROJECTION_TABLE:
    yield projection_prefix + entry.hf, entry.to_hf(to_host(get_path(params, entry.ours)), qformer_cfg).astype(dtype)
