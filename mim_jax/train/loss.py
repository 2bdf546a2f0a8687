"""The training losses: `lm_loss` (cross-entropy over weighted tokens, every
model) and `medium_loss_fn` (the `qformer` image medium, spec §2 ablation).

Both take `(model, params, batch, *, dropout_rng, totals)` and return
`(loss, aux)`; the step (train/step.py) reports every scalar in aux but
`tokens`. With `totals` (the whole batch's sums of its `TOTALED` arrays, for
gradient accumulation) each term is the microbatch's share of the batch mean,
so the accumulated loss equals the one-shot one.

The medium loss is the cross-entropy plus `medium_weight` × the MSE between
the mapper's SD conditioning and the SD text encoder's embeddings of each
assistant image's caption (GILL's objective). Its batch keys, per example and
image slot k (data/batch_spec.py): `medium_starts` (b, K), the first of the N
prompt placeholders (right after the `<start>` of the image's medium branch),
`medium_valid` (b, K) and `medium_targets` (b, K, 77, D), which the loop
computes on device from `medium_caption_ids` (train/medium_targets.py).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mim_jax.data.batch_spec import MODEL_ARGS
from mim_jax.data.images import pixel_table
from mim_jax.models.image_medium import medium_loss
from mim_jax.models.mim import MIM


def cross_entropy(logits_btv: jax.Array, targets_bt: jax.Array, weights_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean loss over weighted tokens, total weight)."""
  losses_bt = optax.softmax_cross_entropy_with_integer_labels(logits_btv.astype(jnp.float32), targets_bt)
  weights_bt = weights_bt.astype(jnp.float32)
  total = weights_bt.sum()
  return (losses_bt * weights_bt).sum() / jnp.maximum(total, 1.0), total


def image_inputs(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """MIM's image keyword arguments from a batch (none for a text-only batch);
  uint8 images are normalised here, exactly as data/images.preprocess_image
  does on the host."""
  images = {arg: batch[key] for key, arg in MODEL_ARGS.items() if key in batch}
  if "images" in images and images["images"].dtype == jnp.uint8:
    images["images"] = jnp.asarray(pixel_table())[images["images"].astype(jnp.int32), jnp.arange(3)]
  return images


def batch_share(mean: jax.Array, weight: jax.Array, totals: dict[str, jax.Array] | None, key: str):
  """(a microbatch's weighted mean → its share of the batch mean, its weight)."""
  if totals is None:
    return mean, weight
  return mean * weight / jnp.maximum(totals[key], 1.0), weight


def _dropout(dropout_rng: jax.Array | None) -> dict:
  return {} if dropout_rng is None else {"rngs": {"dropout": dropout_rng}, "deterministic": False}


def lm_loss(model: nn.Module, params, batch: dict[str, jax.Array], *, dropout_rng: jax.Array | None = None,
            totals: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict]:
  """Mean cross-entropy over weighted tokens. `images` may be uint8 or float;
  `dropout_rng` turns dropout on (MIM's Q-Former)."""
  logits_btv = model.apply({"params": params}, batch["tokens"], batch.get("positions"), batch.get("mask"),
                           **image_inputs(batch), **_dropout(dropout_rng))
  loss, tokens = batch_share(*cross_entropy(logits_btv, batch["targets"], batch["weights"]), totals, "weights")
  return loss, {"loss": loss, "tokens": tokens}


def medium_loss_fn(model: nn.Module, params, batch: dict[str, jax.Array], *, dropout_rng: jax.Array | None = None,
                   totals: dict[str, jax.Array] | None = None, medium_weight: float = 1.0) -> tuple[jax.Array, dict]:
  logits_btv, cond_bkld = model.apply({"params": params}, batch["tokens"], batch["medium_starts"],
                                      batch.get("positions"), batch.get("mask"), **image_inputs(batch),
                                      prompt_valid_bk=batch["medium_valid"], **_dropout(dropout_rng),
                                      method=MIM.medium_forward)
  lm, tokens = batch_share(*cross_entropy(logits_btv, batch["targets"], batch["weights"]), totals, "weights")
  regression = medium_loss(cond_bkld, batch["medium_targets"], batch["medium_valid"],
                           total_weight=None if totals is None else totals["medium_valid"])
  loss = lm + medium_weight * regression
  return loss, {"loss": loss, "lm_loss": lm, "medium_loss": regression, "tokens": tokens}


def weighted_medium_loss(medium_weight: float):
  """`medium_loss_fn` with another weight on the medium term."""
  return functools.partial(medium_loss_fn, medium_weight=medium_weight)
