"""Which params a stage trains, by regex over '/'-joined param paths (spec §3).

Stage 1 trains the Q-Former, its query tokens and the projection; stage 2 adds
the whole LLM (new vocabulary rows included). The ViT is frozen in both.
`trainable_mask` is the one freezing mechanism: the step stops gradients at
the params it marks frozen, and train/optimizer.py gives those no optimizer
state (its `optax.set_to_zero` group).
"""
from __future__ import annotations

import re
from typing import Sequence

import flax.linen as nn
import jax

STAGE_TRAINABLE = {
    "stage1": (r"^image_encoder/(qformer|query_tokens|projection)(/|$)",),
    "stage2": (r"^image_encoder/(qformer|query_tokens|projection)(/|$)", r"^llm/"),
}
# The qformer image medium's prompt embeddings and mapper (absent with the language medium).
MEDIUM_TRAINABLE = (r"^image_medium/",)


def param_path(path) -> str:
  return "/".join(str(getattr(key, "key", key)) for key in path)


def trainable_mask(params, patterns: Sequence[str]):
  """A tree of bools: True where some pattern matches the param's path. Works on
  plain and on logically boxed (`nn.Partitioned`) param trees alike."""
  compiled = [re.compile(p) for p in patterns]
  mask = jax.tree_util.tree_map_with_path(
      lambda path, _: any(p.search(param_path(path)) for p in compiled), params,
      is_leaf=lambda x: isinstance(x, nn.Partitioned))
  if not any(jax.tree.leaves(mask)):
    raise ValueError(f"trainable patterns {list(patterns)} match no parameter; check them against the param paths")
  return mask


def trains_under(params, patterns: Sequence[str] | None, prefix: str) -> bool:
  """Whether any param whose path starts with `prefix` trains (None: everything trains)."""
  if patterns is None:
    return True
  flat = jax.tree_util.tree_flatten_with_path(trainable_mask(params, patterns), is_leaf=lambda x: isinstance(x, bool))
  return any(train and param_path(path).startswith(prefix) for path, train in flat[0])
