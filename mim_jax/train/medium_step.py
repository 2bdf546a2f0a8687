"""The training loss with the `qformer` image medium (spec §2 ablation):
cross-entropy as in lm_step, plus `medium_loss`, the MSE between the mapper's
SD conditioning and the SD text encoder's embeddings of the caption. Pass it
as `lm_step.make_train_step(..., loss=medium_step.loss_fn)`.

Extra batch keys: `prompt_starts` (b,) index of the first of the N prompt
placeholders (right after a `<start>`), `medium_targets` (b, 77, D) and
`medium_weights` (b,) (0 for examples without an image to regress onto).
With gradient accumulation the cross-entropy is the microbatch's share of the
batch mean (as lm_step), while the medium term is each microbatch's own mean,
so the accumulated medium term is accum_steps × the batch mean: divide
`medium_weight` by accum_steps to keep the balance.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models.image_medium import medium_loss
from mim_jax.models.mim import MIM
from mim_jax.train.lm_step import cross_entropy, image_inputs


def loss_fn(model: nn.Module, params, batch: dict[str, jax.Array], *, dropout_rng: jax.Array | None = None,
            total_weight: jax.Array | None = None, medium_weight: float = 1.0) -> tuple[jax.Array, dict]:
  images = image_inputs(batch)
  extra = {} if dropout_rng is None else {"rngs": {"dropout": dropout_rng}, "deterministic": False}
  logits_btv, cond_bld = model.apply({"params": params}, batch["tokens"], batch["prompt_starts"],
                                     batch.get("positions"), batch.get("mask"), **images, **extra,
                                     method=MIM.medium_forward)
  lm, tokens = cross_entropy(logits_btv, batch["targets"], batch["weights"])
  if total_weight is not None:
    lm = lm * tokens / jnp.maximum(total_weight, 1.0)
  regression = medium_loss(cond_bld, batch["medium_targets"], batch["medium_weights"])
  loss = lm + medium_weight * regression
  return loss, {"loss": loss, "lm_loss": lm, "medium_loss": regression, "tokens": tokens}

