"""A Stable Diffusion pipeline's CLIP text encoder, loaded from its
`tokenizer/` and `text_encoder/` folders (or `tokenizer_2/`, `text_encoder_2/`):
the transformers tokenizer, our ClipTextTower's config and params (read by
convert/clip.py, without torch) and its jitted forward pass.

Descriptions longer than the tokenizer's limit (77 for CLIP) are truncated as
diffusers does (start token, first 75 tokens, end token), with a warning.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import transformers

from mim_jax.convert.clip import load_hf_clip_text
from mim_jax.models.clip import ClipTextTower
from mim_jax.models.clip_config import ClipTextConfig


@dataclasses.dataclass
class TextEncoder:
  tokenizer: transformers.PreTrainedTokenizerBase
  config: ClipTextConfig
  params: dict
  source: str

  @classmethod
  def load(cls, tokenizer_dir: Path, encoder_dir: Path, dtype: str) -> "TextEncoder":
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config, params = load_hf_clip_text(encoder_dir, dtype=dtype, param_dtype=dtype)
    return cls(tokenizer, config, jax.device_put(params), str(encoder_dir))

  @property
  def max_length(self) -> int:
    return min(self.tokenizer.model_max_length, self.config.max_positions)

  def tokenize(self, texts: Sequence[str]) -> np.ndarray:
    ids = self.tokenizer(list(texts), padding="max_length", max_length=self.max_length, truncation=True,
                         return_tensors="np").input_ids
    full = self.tokenizer(list(texts), truncation=False).input_ids
    for tokens in full:
      if len(tokens) > self.max_length:
        dropped = self.tokenizer.decode(tokens[self.max_length - 1:-1])
        warnings.warn(f"description truncated to CLIP's {self.max_length} tokens; dropped: {dropped!r}",
                      stacklevel=3)
    return ids

  def __post_init__(self):
    tower = ClipTextTower(self.config)
    self._apply = jax.jit(lambda params, ids_bt: tower.apply({"params": params}, ids_bt))

  def __call__(self, token_ids_bt: np.ndarray):
    return self._apply(self.params, jnp.asarray(token_ids_bt))
