r"""MIM stage 2 (instruction tuning, spec §3): Q-Former + query tokens +
projection + the whole LLM train; the EVA ViT is frozen. Global batch 64,
length 768, LR 1e-5 with 100 warmup steps.

  python launch/aot_compile.py --config configs/mim_stage2.py --topology v5p:2x2x2

`arg`: `full` (eva_vit_g + blip2 Q-Former + llama2_7b, vocabulary 32003) or
`tiny` (CPU-sized, same structure).

Image-medium ablation (spec §2): `--config.model.medium.kind=qformer` adds the
GILL-like prompt tokens + mapper to SD-2.1's 77 × 1024 conditioning, trained
with `train.medium_step.loss_fn` (weight `train.medium_loss_weight`).
"""
from __future__ import annotations

import ml_collections

from configs import common, models
from mim_jax.models.eva_vit import VisionConfig
from mim_jax.models.image_medium import MediumConfig
from mim_jax.models.qformer import QFormerConfig
from mim_jax.train.freeze import STAGE_TRAINABLE

_SIZES = {"full": ("llama2_7b", "eva_vit_g", "blip2"), "tiny": ("tiny", "tiny", "tiny")}


def get_config(arg: str = "full") -> ml_collections.ConfigDict:
  if arg not in _SIZES:
    raise ValueError(f"unknown mim_stage2 size {arg!r}; sizes: {', '.join(_SIZES)}")
  llm, vision, qformer = _SIZES[arg]
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict()
  config.model.llm = models.llama(llm)
  config.model.llm.vocab_size += 3  # <image>, <start>, <end>
  config.model.vision = VisionConfig.preset(vision).to_dict()
  config.model.qformer = QFormerConfig.preset(qformer).to_dict()
  config.model.medium = MediumConfig().to_dict()
  if arg == "full":
    for tower in (config.model.llm, config.model.vision):
      tower.dtype = "bfloat16"
      tower.remat_policy = "dots_no_batch"
    config.model.qformer.dtype = "bfloat16"
  config.trainable = STAGE_TRAINABLE["stage2"]
  config.mesh = common.mesh()
  config.sharding_rules = common.sharding_rules()
  config.optimizer = common.optimizer(learning_rate=1e-5, warmup_steps=100)
  # TextBind averages ~2.5 images per conversation: budget 3 per example (packed per batch).
  config.train = ml_collections.ConfigDict(dict(steps=15000, batch_size=64, seq_len=768, images_per_batch=192,
                                                seed=0, log_every=10, medium_loss_weight=1.0))
  if arg == "tiny":
    config.train.update(batch_size=8, seq_len=128, images_per_batch=16)
  return config
