r"""Language-model training of a Llama preset (the LLM half of MIM on its own).

  python -m mim_jax.quickstart --config configs/llama_lm.py:tiny --workdir /tmp/llama_lm
  python launch/aot_compile.py --config configs/llama_lm.py:llama2_7b --topology v5p:2x2x2

`arg` is a preset of configs/models.py: tiny, bench_130m, llama2_7b, llama2_13b, llama3_8b.
"""
from __future__ import annotations

import ml_collections

from configs import common, models


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = models.llama(arg)
  config.mesh = common.mesh()
  config.sharding_rules = common.sharding_rules()
  config.optimizer = common.optimizer()
  config.train = ml_collections.ConfigDict(dict(steps=1000, batch_size=8, seq_len=512, seed=0, log_every=10))
  config.sample = ml_collections.ConfigDict(dict(max_new_tokens=64, temperature=0.0, top_p=1.0))
  config.export = ml_collections.ConfigDict(dict(dtype="bfloat16", max_shard_gb=5.0))
  config.tokenizer = ""  # a HF tokenizer directory; empty: train one on the text (quickstart)
  config.init_from = ""  # a HF Llama directory to start from; empty: random init
  config.text_file = ""  # training text; empty: the bundled sample
  if arg != "tiny":
    config.model.dtype = "bfloat16"
    config.model.remat_policy = "dots_no_batch"
  return config
