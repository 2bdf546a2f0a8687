"""What the model config dataclasses share (LlamaConfig, VisionConfig,
QFormerConfig, ...): dtypes, and checks whose messages name the section and
field (`model.num_heads`, `vision.embed_dim`, `qformer.dtype`). Dict round
trips are `config_base.ConfigBase`'s."""
from __future__ import annotations

from typing import Any, Iterable

import jax.numpy as jnp

from mim_jax.models.config_base import ConfigBase
from mim_jax.nn.attention import IMPLEMENTATIONS

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class TowerConfig(ConfigBase):
  """Mixin for frozen config dataclasses with `dtype`, `param_dtype` and `attention_impl` fields."""

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def weight_dtype(self):
    return DTYPES[self.param_dtype]

  def check_dtypes_and_attention(self) -> None:
    check_choice(self.SECTION, "dtype", self.dtype, DTYPES)
    check_choice(self.SECTION, "param_dtype", self.param_dtype, DTYPES)
    check_choice(self.SECTION, "attention_impl", self.attention_impl, IMPLEMENTATIONS)


def check_choice(section: str, field: str, value: Any, allowed: Iterable[str]) -> None:
  allowed = tuple(allowed)
  if value not in allowed:
    raise ValueError(f"{section}.{field} is {value!r}; allowed values: {', '.join(allowed)}")


def check_positive_ints(section: str, config: Any, fields: Iterable[str]) -> None:
  for field in fields:
    value = getattr(config, field)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"{section}.{field} must be a positive int, got {value!r}")


def check_divides(section: str, config: Any, whole: str, part: str) -> None:
  if getattr(config, whole) % getattr(config, part):
    raise ValueError(
        f"{section}.{whole} ({getattr(config, whole)}) must be a multiple of {section}.{part} "
        f"({getattr(config, part)})"
    )
