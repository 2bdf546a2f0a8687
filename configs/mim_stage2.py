r"""MIM stage 2, instruction tuning (spec §3): Q-Former + query tokens +
projection + the whole LLM train; the EVA ViT is frozen. The mixture of the
spec (320,532 conversations) for 3 epochs at batch 64 and length 768, LR 1e-5
with 100 warmup steps, cosine.

  python -m mim_jax.data.synthetic --out /tmp/mim_jax_data   # tiny: synthetic data
  python -m mim_jax.train --config configs/mim_stage2.py:tiny --workdir /tmp/mim_stage2_tiny
  python -m mim_jax.train --config configs/mim_stage2.py --workdir gs://BUCKET/runs/stage2 \
    --config.data.data_dir=gs://BUCKET/tfds --config.init.mim=/ckpt/mim_stage1_hf --config.tokenizer=/ckpt/llama2
  python launch/aot_compile.py --config configs/mim_stage2.py --topology v5p:2x2x2

`arg`: `full` or `tiny`. Data: TFDS directories written by
`python -m mim_jax.data.convert_datasets` (public sets) and `python -m data_gen`
(TextBind), named as below under data.data_dir; weights are the sizes, so the
mixture is uniform over conversations, as the original concatenation. Both
TextBind paths write the dataset `textbind`: `python -m data_gen run --work W`
writes it under `W/export/tfds` (point data.data_dir there, or
data.sources.textbind.path at `W/export/tfds/textbind`), and
`convert_datasets textbind` under its --out.
"""
from __future__ import annotations

import ml_collections

from configs import common, models
from mim_jax.train.freeze import STAGE_TRAINABLE

# Spec §3: the stage-2 mixture: source → (its dataset under data.data_dir, conversations).
# The names are what `python -m mim_jax.data.convert_datasets <source>` writes by default.
MIXTURE = {"platypus": ("platypus", 24_926), "minigpt4": ("minigpt4_align", 3_439), "shikra": ("shikra", 7_081),
           "llava_instruct": ("llava_instruct", 157_712), "multiinstruct": ("multiinstruct", 105_745),
           "textbind": ("textbind", 21_629)}


def get_config(arg: str = "full") -> ml_collections.ConfigDict:
  config = common.run_sections(models.mim(arg), common.data("~/tensorflow_datasets", **MIXTURE))
  config.trainable = STAGE_TRAINABLE["stage2"]
  config.optimizer = common.optimizer(learning_rate=1e-5, warmup_steps=100)
  # TextBind averages ~2.5 images per conversation and most other sources 1: budget 3 per example.
  config.train = common.train(steps=15025, batch_size=64, seq_len=768, images_per_batch=192)
  config.checkpoint = common.checkpoint(every_steps=500)
  if arg == "tiny":
    config.optimizer.update(learning_rate=3e-3, warmup_steps=5, weight_decay=0.0)
    config.train.update(steps=40, batch_size=8, seq_len=96, images_per_batch=16, log_every=5)
    config.checkpoint.update(every_steps=10)
    config.data = common.data("/tmp/mim_jax_data", conversations=("synthetic_conversations", 1.0))
    config.data.update(max_images=2, num_parallel_calls=4, shuffle_buffer=64)
  return config
