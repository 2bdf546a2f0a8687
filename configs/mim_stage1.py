r"""MIM stage 1, alignment (spec §3): only the Q-Former, its query tokens and
the projection train; ViT and LLM are frozen. Image–caption pairs (CC3M +
CC12M + SBU) as single turns with one of 20 instructions; 2 × 10M samples at
batch 256 (78,125 steps), length 256, LR 1e-4 with 2000 warmup steps, cosine.

  python -m mim_jax.data.synthetic --out /tmp/mim_jax_data   # tiny: synthetic data
  python -m mim_jax.train --config configs/mim_stage1.py:tiny --workdir /tmp/mim_stage1_tiny
  python -m mim_jax.train --config configs/mim_stage1.py --workdir gs://BUCKET/runs/stage1 \
    --config.data.data_dir=gs://BUCKET/tfds --config.init.llm=/ckpt/Llama-2-7b-chat-hf \
    --config.init.blip2=/ckpt/blip2-flan-t5-xxl --config.tokenizer=/ckpt/Llama-2-7b-chat-hf

`arg`: `full` or `tiny`. Data: caption datasets written by
`python -m mim_jax.data.convert_datasets caption-tsv|webdataset …`; weights are
the sizes (uniform over pairs).
"""
from __future__ import annotations

import ml_collections

from configs import common, models
from mim_jax.train.freeze import STAGE_TRAINABLE

CAPTIONS = {"cc3m": 3_300_000, "cc12m": 12_400_000, "sbu": 1_000_000}


def get_config(arg: str = "full") -> ml_collections.ConfigDict:
  captions = common.data("~/tensorflow_datasets", **{name: (name, size) for name, size in CAPTIONS.items()})
  config = common.run_sections(models.mim(arg), captions)
  config.trainable = STAGE_TRAINABLE["stage1"]
  config.optimizer = common.optimizer(learning_rate=1e-4, warmup_steps=2000)
  config.train = common.train(steps=78_125, batch_size=256, seq_len=256, images_per_batch=256)
  config.checkpoint = common.checkpoint(every_steps=2000)
  config.data.max_images = 1
  if arg == "tiny":
    config.optimizer.update(learning_rate=3e-3, warmup_steps=5, weight_decay=0.0)
    config.train.update(steps=40, batch_size=8, seq_len=64, images_per_batch=8, log_every=5)
    config.checkpoint.update(every_steps=10)
    config.data = common.data("/tmp/mim_jax_data", captions=("synthetic_captions", 1.0))
    config.data.update(max_images=1, num_parallel_calls=4, shuffle_buffer=64)
  return config
