"""LlamaConfig: the hashable model description, built from a config dict with
errors that name the bad field and what it may be, and its presets."""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from mim_jax.models import config_checks
from mim_jax.models.config_base import from_preset
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

  @classmethod
  def preset(cls, name: str, **overrides) -> "LlamaConfig":
    return from_preset(cls, PRESETS, name, overrides)

  def rope_kwargs(self) -> dict[str, Any]:
    return dict(
        theta=self.rope_theta,
        scaling_type=self.rope_scaling_type,
        factor=self.rope_scaling_factor,
        low_freq_factor=self.rope_low_freq_factor,
        high_freq_factor=self.rope_high_freq_factor,
        original_max_positions=self.rope_original_max_positions,
    )


PRESETS = {
    # Fits a laptop CPU: used by the quickstart and CPU tests.
    "tiny": dict(vocab_size=512, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                 mlp_dim=128, max_positions=512),
    # ~130M, the benchmark model of BENCHMARKS.md (vocab = Llama-2's 32000 + MIM's 3).
    "bench_130m": dict(vocab_size=32003, embed_dim=768, num_layers=12, num_heads=12, num_kv_heads=12,
                       head_dim=64, mlp_dim=2048, max_positions=4096),
    # The releases below equal their public Hugging Face config.json.
    # meta-llama/Llama-2-7b(-chat)-hf
    "llama2_7b": dict(vocab_size=32000, embed_dim=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                      head_dim=128, mlp_dim=11008, norm_eps=1e-5, rope_theta=10000.0, max_positions=4096),
    # meta-llama/Llama-2-13b(-chat)-hf
    "llama2_13b": dict(vocab_size=32000, embed_dim=5120, num_layers=40, num_heads=40, num_kv_heads=40,
                       head_dim=128, mlp_dim=13824, norm_eps=1e-5, rope_theta=10000.0, max_positions=4096),
    # meta-llama/Llama-3.1-8B(-Instruct): GQA and llama3 RoPE scaling
    "llama3_8b": dict(vocab_size=128256, embed_dim=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                      head_dim=128, mlp_dim=14336, norm_eps=1e-5, rope_theta=500000.0,
                      rope_scaling_type="llama3", rope_scaling_factor=8.0, rope_low_freq_factor=1.0,
                      rope_high_freq_factor=4.0, rope_original_max_positions=8192, max_positions=131072),
}
