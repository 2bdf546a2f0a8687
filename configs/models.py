"""Llama presets, equal to the public Hugging Face config.json of each release."""
from __future__ import annotations

import ml_collections

from mim_jax.models.llama_config import LlamaConfig

_PRESETS = {
    # Fits a laptop CPU: used by the quickstart and CPU tests.
    "tiny": dict(vocab_size=512, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                 mlp_dim=128, max_positions=512),
    # ~130M, the benchmark model of BENCHMARKS.md (vocab = Llama-2's 32000 + MIM's 3).
    "bench_130m": dict(vocab_size=32003, embed_dim=768, num_layers=12, num_heads=12, num_kv_heads=12,
                       head_dim=64, mlp_dim=2048, max_positions=4096),
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

PRESETS = tuple(_PRESETS)


def llama(name: str) -> ml_collections.ConfigDict:
  """The full LlamaConfig field set for a preset, as a ConfigDict."""
  if name not in _PRESETS:
    raise ValueError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
  return ml_collections.ConfigDict(LlamaConfig(**_PRESETS[name]).to_dict())


MIM_SIZES = {"full": ("llama2_7b", "eva_vit_g", "blip2"), "tiny": ("tiny", "tiny", "tiny")}


def mim(size: str) -> ml_collections.ConfigDict:
  """MIM towers: `full` = EVA ViT-g + BLIP-2 Q-Former + Llama-2-7b with the
  3 new tokens (spec §2, bf16 compute and remat), `tiny` = CPU-sized, same structure."""
  from mim_jax.models.eva_vit import VisionConfig
  from mim_jax.models.image_medium import MediumConfig
  from mim_jax.models.qformer import QFormerConfig

  if size not in MIM_SIZES:
    raise ValueError(f"unknown MIM size {size!r}; sizes: {', '.join(MIM_SIZES)}")
  llm, vision, qformer = MIM_SIZES[size]
  config = ml_collections.ConfigDict()
  config.llm = llama(llm)
  config.llm.vocab_size += 3  # <image>, <start>, <end>
  config.vision = VisionConfig.preset(vision).to_dict()
  config.qformer = QFormerConfig.preset(qformer).to_dict()
  # Spec §2 ablation: `--config.model.medium.kind=qformer` (models/image_medium.py).
  config.medium = MediumConfig().to_dict()
  if size == "full":
    for tower in (config.llm, config.vision):
      tower.dtype = "bfloat16"
      tower.remat_policy = "dots_no_batch"
    config.qformer.dtype = "bfloat16"
  return config
