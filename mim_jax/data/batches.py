"""Host batches → the arrays the train step takes, and onto the devices.

The pipeline yields per-example image slots (b, M, 224, 224, 3); the model
takes images *packed* (models/mim.py): only real images, up to a static budget
per step. Packing here is per microbatch, for gradient accumulation: with k
microbatches, microbatch i is the rows b with b % k == i, and its packed
images sit at flat index j * k + i. The step reshapes every batch array to
(rows / k, k, …) and takes column i, so the reshape never moves data between
devices (rows stay where the batch sharding put them).

Over budget: examples are never split; an example whose images do not fit its
microbatch's remaining budget keeps its text but gets zero loss weight, and
its images are not encoded. `dropped` counts them so the loop can report it;
raise train.images_per_batch if it is ever non-zero.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding

PACKED_KEYS = ("image_rows", "images")


def pack_batch(batch: dict[str, np.ndarray], *, budget: int, accum_steps: int = 1,
               process_index: int = 0) -> tuple[dict[str, np.ndarray], int]:
  """(arrays for the step, examples zero-weighted for lack of image budget).

  `batch` is one process's part of the global batch; `budget` is this
  process's share of train.images_per_batch. `image_rows` index the global
  packed array, so each process offsets by the rows before it."""
  rows = batch["tokens"].shape[0]
  if rows % accum_steps or budget % accum_steps:
    raise ValueError(f"per-process batch ({rows}) and image budget ({budget}) must both divide by "
                     f"train.grad_accum_steps ({accum_steps})")
  out = {k: v for k, v in batch.items() if k not in ("pixels", "image_valid")}
  if "pixels" not in batch:
    return out, 0
  valid_bm = batch["image_valid"]
  per_micro = budget // accum_steps
  offset = process_index * per_micro
  image_rows_bm = np.full(valid_bm.shape, -1, np.int32)
  images = np.zeros((budget,) + batch["pixels"].shape[2:], np.uint8)
  weights = batch["weights"].copy()
  used = np.zeros(accum_steps, np.int32)
  dropped = 0
  for b in range(rows):
    micro, slots = b % accum_steps, np.flatnonzero(valid_bm[b])
    if used[micro] + len(slots) > per_micro:
      weights[b] = 0
      dropped += 1
      continue
    for m in slots:
      j = used[micro]
      image_rows_bm[b, m] = offset + j
      images[j * accum_steps + micro] = batch["pixels"][b, m]
      used[micro] += 1
  out.update(weights=weights, image_rows=image_rows_bm, images=images)
  return out, dropped


def to_global(arrays: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Each process's rows → one global array per key, split along the leading axis."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in arrays.items()}
