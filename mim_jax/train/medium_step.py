"""The training loss with the `qformer` image medium (spec §2 ablation):
cross-entropy as in lm_step, plus `medium_weight` × `medium_loss`, the MSE
between the mapper's SD conditioning and the SD text encoder's embeddings of
each assistant image's caption (GILL's objective). Pass it as
`lm_step.make_train_step(..., loss=medium_step.loss_fn)`.

Extra batch keys, per example and image slot k (data/features.py):
`medium_starts` (b, K) index of the first of the N prompt placeholders (right
after the `<start>` of the image's medium branch), `medium_valid` (b, K) and
`medium_targets` (b, K, 77, D), which the loop computes on device from
`medium_caption_ids` with the frozen SD text encoder (train/medium_targets.py).
Under gradient accumulation both terms are each microbatch's share of the
batch mean, so the accumulated loss equals the one-shot one.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax

from mim_jax.models.image_medium import medium_loss
from mim_jax.models.mim import MIM
from mim_jax.train.lm_step import batch_share, cross_entropy, image_inputs


def loss_fn(model: nn.Module, params, batch: dict[str, jax.Array], *, dropout_rng: jax.Array | None = None,
            totals: dict[str, jax.Array] | None = None, medium_weight: float = 1.0) -> tuple[jax.Array, dict]:
  images = image_inputs(batch)
  extra = {} if dropout_rng is None else {"rngs": {"dropout": dropout_rng}, "deterministic": False}
  logits_btv, cond_bkld = model.apply({"params": params}, batch["tokens"], batch["medium_starts"],
                                      batch.get("positions"), batch.get("mask"), **images,
                                      prompt_valid_bk=batch["medium_valid"], **extra, method=MIM.medium_forward)
  lm, tokens = batch_share(*cross_entropy(logits_btv, batch["targets"], batch["weights"]), totals, "weights")
  regression = medium_loss(cond_bkld, batch["medium_targets"], batch["medium_valid"],
                           total_weight=None if totals is None else totals["medium_valid"])
  loss = lm + medium_weight * regression
  return loss, {"loss": loss, "lm_loss": lm, "medium_loss": regression, "tokens": tokens}


def weighted(medium_weight: float):
  """`loss_fn` with another weight on the medium term."""
  return functools.partial(loss_fn, medium_weight=medium_weight)
