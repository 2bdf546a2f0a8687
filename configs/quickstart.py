r"""The quickstart job: a tiny Llama trained on the bundled text for a few steps
on a laptop CPU, saved, reloaded, sampled and exported to Hugging Face format.

  python -m mim_jax.quickstart --config configs/quickstart.py --workdir /tmp/mim_quickstart
"""
from __future__ import annotations

from configs import llama_lm


def get_config(arg: str = "tiny"):
  config = llama_lm.get_config(arg)
  config.train.steps = 200
  config.train.batch_size = 8
  config.train.seq_len = 64
  config.train.log_every = 25
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 10
  config.optimizer.weight_decay = 0.0
  config.sample.max_new_tokens = 32
  config.export.dtype = "float32"
  return config
