"""Pieces every run config shares: mesh, sharding rules, optimizer defaults."""
from __future__ import annotations

import ml_collections

from mim_jax.nn.sharding import DEFAULT_RULES


def mesh(**sizes) -> ml_collections.ConfigDict:
  """ICI sizes within a slice, DCN sizes across slices; -1 fills with what is left."""
  values = dict(ici_data=1, ici_fsdp=-1, ici_tensor=1, dcn_data=-1, dcn_fsdp=1, dcn_tensor=1)
  values.update(sizes)
  return ml_collections.ConfigDict(values)


def sharding_rules() -> tuple:
  return tuple((name, axes) for name, axes in DEFAULT_RULES)


def optimizer(**overrides) -> ml_collections.ConfigDict:
  """AdamW as in TextBind (spec §3): betas (0.9, 0.95), eps 1e-8, wd 1e-3, clip 1.0."""
  values = dict(learning_rate=1e-4, warmup_steps=100, b1=0.9, b2=0.95, eps=1e-8, weight_decay=1e-3,
                grad_clip=1.0)
  values.update(overrides)
  return ml_collections.ConfigDict(values)
