"""LlamaConfig: the hashable model description, built from a config dict with
errors that name the bad field and what it may be."""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from mim_jax.models import config_checks
from mim_jax.nn.remat import POLICY_NAMES
from mim_jax.nn.rope import SCALING_TYPES

_SECTION = "model"


@dataclasses.dataclass(frozen=True)
class LlamaConfig(config_checks.TowerConfig):
  SECTION: ClassVar[str] = _SECTION

  vocab_size: int = 32000
  embed_dim: int = 4096
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int = 32
  head_dim: int = 128
  mlp_dim: int = 11008
  norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling_type: str = "default"
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_positions: int = 8192
  max_positions: int = 4096
  tie_embeddings: bool = False
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = True
  remat_policy: str = "none"
  attention_impl: str = "xla"

  def __post_init__(self):
    config_checks.check_choice(_SECTION, "rope_scaling_type", self.rope_scaling_type, SCALING_TYPES)
    self.check_dtypes_and_attention()
    config_checks.check_choice(_SECTION, "remat_policy", self.remat_policy, POLICY_NAMES)
    config_checks.check_positive_ints(
        _SECTION, self, ("vocab_size", "embed_dim", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim"))
    config_checks.check_divides(_SECTION, self, "num_heads", "num_kv_heads")
    if self.head_dim % 2:
      raise ValueError(f"model.head_dim must be even for RoPE, got {self.head_dim}")

  def rope_kwargs(self) -> dict[str, Any]:
    return dict(
        theta=self.rope_theta,
        scaling_type=self.rope_scaling_type,
        factor=self.rope_scaling_factor,
        low_freq_factor=self.rope_low_freq_factor,
        high_freq_factor=self.rope_high_freq_factor,
        original_max_positions=self.rope_original_max_positions,
    )
