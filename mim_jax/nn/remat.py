"""Rematerialisation (activation checkpointing) policies, by config name."""
from __future__ import annotations

import flax.linen as nn
import jax

POLICIES = {
    "full": None,  # save nothing inside a layer, recompute all of it
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
POLICY_NAMES = ("none", *POLICIES)


def remat_layer(layer_cls, policy: str, scan_layers: bool):
  """`layer_cls` wrapped in nn.remat with `policy` ('none' leaves it as is)."""
  if policy == "none":
    return layer_cls
  # Under scan, CSE cannot merge the recomputation away, so prevent_cse is not needed.
  return nn.remat(layer_cls, policy=POLICIES[policy], prevent_cse=not scan_layers)
