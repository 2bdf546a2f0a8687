"""The training loss with the `qformer` image medium (spec §2 ablation):
cross-entropy as in lm_step, plus `medium_loss`, the MSE between the mapper's
SD conditioning and the SD text encoder's embeddings of the caption.

Extra batch keys: `prompt_starts` (b,) index of the first of the N prompt
placeholders (right after a `<start>`), `medium_targets` (b, 77, D) and
`medium_weights` (b,) (0 for examples without an image to regress onto).
"""
from __future__ import annotations

import flax.linen as nn
import jax

from mim_jax.models.image_medium import medium_loss
from mim_jax.models.mim import MIM
from mim_jax.train.lm_step import IMAGE_INPUTS, cross_entropy


def loss_fn(model: nn.Module, params, batch: dict[str, jax.Array], medium_weight: float = 1.0):
  images = {arg: batch[key] for key, arg in IMAGE_INPUTS.items() if key in batch}
  logits_btv, cond_bld = model.apply({"params": params}, batch["tokens"], batch["prompt_starts"],
                                     batch.get("positions"), batch.get("mask"), **images, method=MIM.medium_forward)
  lm, tokens = cross_entropy(logits_btv, batch["targets"], batch["weights"])
  regression = medium_loss(cond_bld, batch["medium_targets"], batch["medium_weights"])
  loss = lm + medium_weight * regression
  return loss, {"loss": loss, "lm_loss": lm, "medium_loss": regression, "tokens": tokens}
