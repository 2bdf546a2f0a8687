"""Descriptions → UNet text conditioning, as diffusers' pipelines compute it.

SD 1.x/2.x: one CLIP text encoder; the context is its last hidden state (after
the final LayerNorm) and the unconditional input is the empty description.
SDXL: the penultimate hidden states of both encoders concatenated on the
feature axis, plus the projected pooled output of `text_encoder_2`; the
unconditional input is all zeros (`force_zeros_for_empty_prompt`). The SDXL
refiner has only `text_encoder_2`. The encoders are convert/sd_text_encoder.py's.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mim_jax.convert.sd_text_encoder import TextEncoder


@dataclasses.dataclass
class TextConditioner:
  """`xl` False: SD 1.x/2.x (one encoder, last hidden state). `xl` True: SDXL
  (penultimate states of every encoder, pooled projection of the last)."""

  encoders: list[TextEncoder]
  xl: bool
  zero_unconditional: bool

  @property
  def context_dim(self) -> int:
    return sum(e.config.embed_dim for e in self.encoders) if self.xl else self.encoders[0].config.embed_dim

  @property
  def pooled_dim(self) -> int | None:
    return self.encoders[-1].config.projection_dim if self.xl else None

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """(context (b, 77, d), pooled (b, p) or None), float32 numpy."""
    outputs = [encoder(encoder.tokenize(texts)) for encoder in self.encoders]
    if not self.xl:
      return np.asarray(outputs[0].last_hidden_state, np.float32), None
    context = np.concatenate([np.asarray(o.penultimate_hidden_state, np.float32) for o in outputs], axis=-1)
    if outputs[-1].embeds is None:
      raise ValueError(f"{self.encoders[-1].source}: SDXL's last text encoder must have a text projection "
                       "(CLIPTextModelWithProjection)")
    return context, np.asarray(outputs[-1].embeds, np.float32)

  def encode_pairs(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """(unconditional, conditional) stacked on axis 1: context (b, 2, 77, d), pooled (b, 2, p)."""
    context, pooled = self.encode(texts)
    if self.zero_unconditional:
      empty_context, empty_pooled = np.zeros_like(context), None if pooled is None else np.zeros_like(pooled)
    else:
      empty_context, empty_pooled = self.encode([""] * len(texts))
    pair = lambda u, c: None if c is None else np.stack([u, c], axis=1)
    return pair(empty_context, context), pair(empty_pooled, pooled)
