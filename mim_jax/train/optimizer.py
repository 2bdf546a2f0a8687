"""AdamW with warmup + cosine decay and global-norm clipping (spec §3), with
freezing and per-module learning rates chosen by regex over param paths.

`make_optimizer(opt_config, total_steps, trainable=…, lr_multipliers=…)`:
params matching no `trainable` pattern are frozen (zero update, no Adam state);
a trainable param takes the learning rate × the multiplier of the first
`lr_multipliers` pattern that matches its path (1.0 if none). Clipping is by
the global norm over all gradients, before the groups split.
"""
from __future__ import annotations

import re
from typing import Sequence

import flax.linen as nn
import jax
import optax

from mim_jax.train.freeze import param_path, trainable_mask


def learning_rate_schedule(opt_config, total_steps: int, scale: float = 1.0) -> optax.Schedule:
  warmup = min(opt_config.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt_config.learning_rate * scale, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=0.0,
  )


def _adamw(opt_config, total_steps: int, scale: float = 1.0) -> optax.GradientTransformation:
  """Weight decay applies to matrices only (not norm scales or biases)."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.adamw(learning_rate_schedule(opt_config, total_steps, scale), b1=opt_config.b1, b2=opt_config.b2,
                     eps=opt_config.eps, weight_decay=opt_config.weight_decay, mask=decay_mask)


def make_optimizer(opt_config, total_steps: int, *, trainable: Sequence[str] | None = None,
                   lr_multipliers: Sequence[tuple[str, float]] = ()) -> optax.GradientTransformation:
  clip = optax.clip_by_global_norm(opt_config.grad_clip)
  if trainable is None and not lr_multipliers:
    return optax.chain(clip, _adamw(opt_config, total_steps))
  rules = [(re.compile(pattern), float(scale)) for pattern, scale in lr_multipliers]
  for (pattern, _), (_, scale) in zip(lr_multipliers, rules):
    if scale <= 0:
      raise ValueError(f"optimizer.lr_multipliers[{pattern!r}] is {scale}; it must be positive (freeze a module by "
                       "leaving it out of `trainable` instead)")

  def labels(params):
    mask = trainable_mask(params, trainable) if trainable is not None else jax.tree.map(lambda _: True, params)

    def label(path, _, train):
      if not train:
        return "frozen"
      name = param_path(path)
      return next((f"group{i}" for i, (regex, _) in enumerate(rules) if regex.search(name)), "base")

    return jax.tree_util.tree_map_with_path(label, params, mask, is_leaf=lambda x: isinstance(x, nn.Partitioned))

  groups = {"frozen": optax.set_to_zero(), "base": _adamw(opt_config, total_steps)}
  groups.update({f"group{i}": _adamw(opt_config, total_steps, scale) for i, (_, scale) in enumerate(rules)})
  return optax.chain(clip, optax.multi_transform(groups, labels))
