r"""Language-model training of a Llama preset (the LLM half of MIM on its own),
on a text file: the quickstart's model.

  python -m mim_jax.train --config configs/llama_lm.py:tiny --workdir /tmp/llama_lm
  python -m mim_jax.train.export --workdir /tmp/llama_lm --out /tmp/llama_lm_hf
  python -m mim_jax.train --config configs/llama_lm.py:llama2_7b --workdir /tmp/ft \
    --config.init.llm=/ckpt/Llama-2-7b-chat-hf --config.tokenizer=/ckpt/Llama-2-7b-chat-hf \
    --config.model.vocab_size=32003 --config.data.text_file=my_text.txt --config.train.steps=100
  python launch/aot_compile.py --config configs/llama_lm.py:llama2_7b --topology v5p:2x2x2

`arg` is a preset of configs/models.py: tiny, bench_130m, llama2_7b, llama2_13b, llama3_8b, each the
public release's architecture. Our tokenizer adds MIM's three tokens (<image>, <start>, <end>) to a
released one, so fine-tuning a release sets vocab_size to its size + 3 (the new rows start ~ N(0, 0.02)).
"""
from __future__ import annotations

import ml_collections

from configs import common, models


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  config = common.run_sections(models.llama(arg), common.data())
  config.train.update(steps=1000, batch_size=8, seq_len=512, images_per_batch=0, dropout=False)
  if arg != "tiny":
    config.model.dtype = "bfloat16"
    config.model.remat_policy = "dots_no_batch"
  return config
