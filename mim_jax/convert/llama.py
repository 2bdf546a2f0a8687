"""HF Llama ⇄ ours: config translation and one mapping table with transform hooks.

Our layout (see models/llama.py): q/k/v kernels are (embed, heads, head_dim),
o is (heads, head_dim, embed), MLP kernels are (in, out); HF stores
`nn.Linear.weight` as (out, in). RoPE uses the same rotate-half layout as HF,
so no q/k permutation is needed. Scanned models stack layers on axis 0.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from mim_jax.convert.safetensors_io import CheckpointReader, write_sharded
from mim_jax.convert.table import (
  Entry,
  Transform,
  layered_tensors,
  load_layered,
  read_config_json,
  shapes_of,
  transpose,
)
from mim_jax.models.config_checks import DTYPES
from mim_jax.models.llama import abstract_params
from mim_jax.models.llama_config import LlamaConfig


def _heads_in(heads: Callable[[LlamaConfig], int]) -> tuple[Transform, Transform]:
  to_ours = lambda w, c: w.T.reshape(c.embed_dim, heads(c), c.head_dim)
  to_hf = lambda w, c: w.reshape(c.embed_dim, heads(c) * c.head_dim).T
  return to_ours, to_hf


_q = _heads_in(lambda c: c.num_heads)
_kv = _heads_in(lambda c: c.num_kv_heads)

TABLE: tuple[Entry, ...] = (
    Entry("model.embed_tokens.weight", ("embedding",)),
    Entry("model.norm.weight", ("final_norm", "scale")),
    Entry("lm_head.weight", ("lm_head",), transpose, transpose),
    Entry("model.layers.{i}.input_layernorm.weight", ("attn_norm", "scale")),
    Entry("model.layers.{i}.post_attention_layernorm.weight", ("mlp_norm", "scale")),
    Entry("model.layers.{i}.self_attn.q_proj.weight", ("attn", "q_kernel"), *_q),
    Entry("model.layers.{i}.self_attn.k_proj.weight", ("attn", "k_kernel"), *_kv),
    Entry("model.layers.{i}.self_attn.v_proj.weight", ("attn", "v_kernel"), *_kv),
    Entry(
        "model.layers.{i}.self_attn.o_proj.weight", ("attn", "o_kernel"),
        lambda w, c: w.T.reshape(c.num_heads, c.head_dim, c.embed_dim),
        lambda w, c: w.reshape(c.num_heads * c.head_dim, c.embed_dim).T,
    ),
    Entry("model.layers.{i}.mlp.gate_proj.weight", ("mlp", "gate_kernel"), transpose, transpose),
    Entry("model.layers.{i}.mlp.up_proj.weight", ("mlp", "up_kernel"), transpose, transpose),
    Entry("model.layers.{i}.mlp.down_proj.weight", ("mlp", "down_kernel"), transpose, transpose),
)

SUPPORTED_ROPE = ("default", "linear", "llama3")


# --------------------------------------------------------------------------- config


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json", **overrides) -> LlamaConfig:
  """LlamaConfig from a HF config dict (legacy `rope_scaling` or v5 `rope_parameters`)."""
  model_type = hf.get("model_type")
  if model_type != "llama":
    raise ValueError(
        f"{source}: model_type is {model_type!r}, architectures {hf.get('architectures')}; "
        "this loader reads Llama checkpoints (model_type 'llama')"
    )
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag):
      raise ValueError(f"{source}: {flag}=true is not supported (Llama-2/3 have no biases)")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported; Llama uses 'silu'")
  rope = dict(hf.get("rope_parameters") or {})
  legacy = hf.get("rope_scaling") or {}
  rope = {**legacy, **rope}
  theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in SUPPORTED_ROPE:
    raise ValueError(f"{source}: rope type {rope_type!r} is not supported; supported: {SUPPORTED_ROPE}")
  heads = hf["num_attention_heads"]
  values = dict(
      vocab_size=hf["vocab_size"],
      embed_dim=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      mlp_dim=hf["intermediate_size"],
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      rope_theta=float(theta),
      rope_scaling_type=rope_type,
      rope_scaling_factor=float(rope.get("factor", 1.0)),
      rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
      rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
      rope_original_max_positions=int(rope.get("original_max_position_embeddings", 8192)),
      max_positions=hf.get("max_position_embeddings", 4096),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      init_std=float(hf.get("initializer_range", 0.02)),
  )
  values.update(overrides)
  return LlamaConfig.from_dict(values)


def config_to_hf(cfg: LlamaConfig, dtype: str, token_ids: Mapping[str, int | None]) -> dict[str, Any]:
  """HF config.json contents, in the legacy rope form that transformers 4 and 5 both read."""
  rope_scaling = None
  if cfg.rope_scaling_type == "linear":
    rope_scaling = {"rope_type": "linear", "factor": cfg.rope_scaling_factor}
  elif cfg.rope_scaling_type == "llama3":
    rope_scaling = {
        "rope_type": "llama3", "factor": cfg.rope_scaling_factor,
        "low_freq_factor": cfg.rope_low_freq_factor, "high_freq_factor": cfg.rope_high_freq_factor,
        "original_max_position_embeddings": cfg.rope_original_max_positions,
    }
  return {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.embed_dim,
      "intermediate_size": cfg.mlp_dim,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_positions,
      "rms_norm_eps": cfg.norm_eps,
      "rope_theta": cfg.rope_theta,
      "rope_scaling": rope_scaling,
      "tie_word_embeddings": cfg.tie_embeddings,
      "attention_bias": False,
      "mlp_bias": False,
      "initializer_range": cfg.init_std,
      "use_cache": True,
      "torch_dtype": dtype,
      "dtype": dtype,
      **{k: v for k, v in token_ids.items()},
  }


def read_hf_config(directory: str | os.PathLike, **overrides) -> LlamaConfig:
  hf, path = read_config_json(directory, "Llama")
  return config_from_hf(hf, str(path), **overrides)


# --------------------------------------------------------------------------- weights


def _entries(cfg: LlamaConfig) -> Iterator[Entry]:
  for entry in TABLE:
    if entry.hf == "lm_head.weight" and cfg.tie_embeddings:
      continue
    yield entry


def load_hf_llama(directory: str | os.PathLike, prefix: str = "", **overrides) -> tuple[LlamaConfig, dict]:
  """Reads a HF Llama directory into (config, params as host numpy arrays).

  `overrides` set LlamaConfig fields the checkpoint does not decide (dtype,
  param_dtype, scan_layers, remat_policy, attention_impl). Shapes are checked
  against the model's own parameter shapes, tensor by tensor. `prefix` selects
  the LLM inside a bigger checkpoint (e.g. "language_model." in BLIP-2 / MIM).
  """
  cfg = read_hf_config(directory, **overrides)
  return cfg, load_llama_params(CheckpointReader(directory), cfg, prefix)


def load_llama_params(reader: CheckpointReader, cfg: LlamaConfig, prefix: str = "") -> dict:
  return load_layered(reader, _entries(cfg), cfg, shapes_of(abstract_params(cfg)), prefix=prefix,
                      num_layers=cfg.num_layers, scan_layers=cfg.scan_layers)


def hf_tensors(cfg: LlamaConfig, params: Mapping, dtype: np.dtype, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, array in HF layout and `dtype`) for every weight, one at a time."""
  return layered_tensors(_entries(cfg), cfg, params, dtype, prefix=prefix, num_layers=cfg.num_layers,
                         scan_layers=cfg.scan_layers)


# config_checks.DTYPES as numpy dtypes (bfloat16 is ml_dtypes'), what exported arrays are cast to.
EXPORT_DTYPES = {name: np.dtype(dtype) for name, dtype in DTYPES.items()}


def save_hf_llama(directory: str | os.PathLike, cfg: LlamaConfig, params: Mapping, *, tokenizer=None,
                  dtype: str = "bfloat16", max_shard_bytes: int = 5 * 2**30) -> Path:
  """Writes a directory that `transformers.AutoModelForCausalLM.from_pretrained` loads:
  config.json, (sharded) safetensors + index, generation_config.json and, when a
  tokenizer is given, its files with MIM's special tokens."""
  if dtype not in EXPORT_DTYPES:
    raise ValueError(f"export dtype {dtype!r} is not one of {sorted(EXPORT_DTYPES)}")
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  token_ids = special_token_ids(tokenizer)
  write_sharded(directory, hf_tensors(cfg, params, EXPORT_DTYPES[dtype]), max_shard_bytes)
  (directory / "config.json").write_text(json.dumps(config_to_hf(cfg, dtype, token_ids), indent=2))
  write_generation_config(directory, token_ids)
  if tokenizer is not None:
    tokenizer.save_pretrained(directory)
  return directory


def write_generation_config(directory: Path, token_ids: Mapping[str, int | None]) -> None:
  """Greedy by default, as TextBind decodes (spec §4)."""
  generation = {**token_ids, "do_sample": False, "max_new_tokens": 256}
  (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))


def special_token_ids(tokenizer) -> dict[str, int | None]:
  if tokenizer is None:
    return {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None}
  return {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
