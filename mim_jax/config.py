"""Checking a run config before anything expensive starts.

`validate(config)` raises ValueError naming the field and what it may be.
Field types are already enforced by ml_collections on `--config.a.b=value`
overrides; this adds the value and combination checks.
"""
from __future__ import annotations

import re
from typing import Any

from mim_jax.models.config_checks import DTYPES
from mim_jax.models.llama_config import LlamaConfig
from mim_jax.models.mim import MIMConfig
from mim_jax.nn.sharding import MESH_AXES

REQUIRED_LOGICAL_AXES = ("batch", "length", "act_embed", "act_heads", "act_kv_heads", "act_mlp", "act_vocab",
                         "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "layers", "norm")
SECTIONS = ("model", "tokenizer", "init", "trainable", "medium_targets", "mesh", "sharding_rules", "optimizer", "train",
            "checkpoint", "data", "export", "sample")


def is_mim(config) -> bool:
  """MIM configs have model.llm / model.vision / model.qformer; LM configs are flat."""
  return "llm" in config.model


def model_config(config) -> LlamaConfig | MIMConfig:
  cls = MIMConfig if is_mim(config) else LlamaConfig
  return cls.from_dict(config.model.to_dict())


def llm_config(config) -> LlamaConfig:
  cfg = model_config(config)
  return cfg.llm if isinstance(cfg, MIMConfig) else cfg


def validate(config) -> None:
  """Every run config has the same sections (configs/common.py: `run_sections`); the model decides which data
  section applies: conversation/caption `data.sources` for MIM, `data.text_file` for a text-only Llama."""
  missing = [name for name in SECTIONS if name not in config]
  if missing:
    raise ValueError(f"the run config lacks section(s) {missing}; every run config has {list(SECTIONS)} "
                     f"(build it on configs/common.py:run_sections)")
  llm = llm_config(config)
  _validate_mesh(config.mesh)
  _validate_rules(config.sharding_rules)
  opt = config.optimizer
  _positive("optimizer.learning_rate", opt.learning_rate)
  _at_least("optimizer.warmup_steps", opt.warmup_steps, 0)
  _at_least("optimizer.weight_decay", opt.weight_decay, 0)
  _positive("optimizer.grad_clip", opt.grad_clip)
  for name in ("b1", "b2"):
    if not 0 <= opt[name] < 1:
      raise ValueError(f"optimizer.{name} must be in [0, 1), got {opt[name]}")
  for name in ("steps", "batch_size", "seq_len", "log_every", "grad_accum_steps"):
    _positive(f"train.{name}", config.train[name])
  if config.train.seq_len > llm.max_positions:
    raise ValueError(f"train.seq_len ({config.train.seq_len}) exceeds model.max_positions ({llm.max_positions})")
  _positive("checkpoint.every_steps", config.checkpoint.every_steps)
  _positive("checkpoint.keep_last", config.checkpoint.keep_last)
  _at_least("checkpoint.keep_every", config.checkpoint.keep_every, 0)
  if is_mim(config):
    _validate_data(config.data)
  for pattern in config.trainable:
    _regex("trainable", pattern)
  if config.trainable and not is_mim(config):
    raise ValueError("trainable is set but the model is a plain Llama, which trains whole; clear trainable")
  for rule in opt.lr_multipliers:
    if len(rule) != 2:
      raise ValueError(f"optimizer.lr_multipliers entry {rule!r} must be (param-path regex, factor)")
    _regex("optimizer.lr_multipliers", rule[0])
  if config.export.dtype not in DTYPES:
    raise ValueError(f"export.dtype is {config.export.dtype!r}; allowed values: {', '.join(DTYPES)}")


def _validate_data(data) -> None:
  if not data.sources:
    raise ValueError("data.sources is empty; add one, e.g. --config.data.sources.textbind.path=textbind")
  for name, source in data.sources.items():
    unknown = sorted(set(source.keys()) - {"path", "weight", "split"})
    if unknown:
      raise ValueError(f"data.sources.{name} has unknown field(s) {unknown}; fields: path, weight, split")
    _at_least(f"data.sources.{name}.weight", source.weight, 0)
  if not any(source.weight > 0 for source in data.sources.values()):
    raise ValueError("every data.sources.*.weight is 0; give at least one source a positive weight")
  for name in ("max_images", "readers"):
    _at_least(f"data.{name}", data[name], 0)
  for name in ("shuffle_buffer", "num_parallel_calls"):
    _positive(f"data.{name}", data[name])


def _regex(field: str, pattern) -> None:
  try:
    re.compile(pattern)
  except (re.error, TypeError) as error:
    raise ValueError(f"{field}: {pattern!r} is not a valid regular expression ({error})") from None


def _validate_mesh(mesh) -> None:
  expected = {f"{kind}_{axis}" for kind in ("ici", "dcn") for axis in MESH_AXES}
  unknown = sorted(set(mesh.keys()) - expected)
  if unknown:
    raise ValueError(f"mesh has unknown field(s) {unknown}; fields: {sorted(expected)}")
  for name in sorted(expected):
    value = mesh.get(name)
    if not isinstance(value, int) or (value < 1 and value != -1):
      raise ValueError(f"mesh.{name} must be a positive int or -1 (fill), got {value!r}")
  for kind in ("ici", "dcn"):
    fills = [a for a in MESH_AXES if mesh[f"{kind}_{a}"] == -1]
    if len(fills) > 1:
      raise ValueError(f"mesh: only one {kind}_* size may be -1, got {[f'{kind}_{a}' for a in fills]}")


def _validate_rules(rules: Any) -> None:
  names = set()
  for rule in rules:
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"sharding_rules entry {rule!r} must be (logical_name, mesh_axes)")
    axes = rule[1]
    axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    bad = [a for a in axes if a not in MESH_AXES]
    if bad:
      raise ValueError(f"sharding_rules[{rule[0]!r}] uses mesh axes {bad}; mesh axes are {MESH_AXES}")
    names.add(rule[0])
  missing = [n for n in REQUIRED_LOGICAL_AXES if n not in names]
  if missing:
    raise ValueError(f"sharding_rules lacks logical axes {missing}")


def _positive(name: str, value) -> None:
  if not isinstance(value, (int, float)) or value <= 0:
    raise ValueError(f"{name} must be positive, got {value!r}")


def _at_least(name: str, value, low) -> None:
  if not isinstance(value, (int, float)) or value < low:
    raise ValueError(f"{name} must be >= {low}, got {value!r}")
