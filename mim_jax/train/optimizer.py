"""AdamW with warmup + cosine decay and global-norm clipping (spec §3)."""
from __future__ import annotations

import jax
import optax


def learning_rate_schedule(opt_config, total_steps: int) -> optax.Schedule:
  warmup = min(opt_config.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt_config.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=0.0,
  )


def make_optimizer(opt_config, total_steps: int) -> optax.GradientTransformation:
  """Weight decay applies to matrices only (not norm scales)."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.chain(
      optax.clip_by_global_norm(opt_config.grad_clip),
      optax.adamw(
          learning_rate_schedule(opt_config, total_steps), b1=opt_config.b1, b2=opt_config.b2,
          eps=opt_config.eps, weight_decay=opt_config.weight_decay, mask=decay_mask,
      ),
  )
