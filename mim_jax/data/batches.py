"""Host batches → the arrays the train step takes, and onto the devices.

The global batch is cut into `readers` equal parts, each read by its own
InputPipeline (a disjoint part of every split); a process runs its share of
the readers (`ReaderGroup`) and contributes their rows in reader order. The
global stream is therefore a function of (seed, readers) alone: one process
with 8 devices and two processes with 4 each see the same batches, and a run
may resume on another number of processes as long as it divides `readers`.

The pipeline yields per-example image slots (b, M, 224, 224, 3); the model
takes images *packed* (models/mim.py): only real images, up to a static budget
per step. Packing here is per microbatch, for gradient accumulation: with k
microbatches, microbatch i is the rows b with b % k == i, and its packed
images sit at flat index j * k + i. The step reshapes every batch array to
(rows / k, k, …) and takes column i, so the reshape never moves data between
devices (rows stay where the batch sharding put them).

Over budget: examples are never split; an example whose images do not fit its
microbatch's remaining budget keeps its text but gets zero loss weight, and
its images are not encoded (with the qformer medium, its medium targets get
no weight either). `dropped` counts them so the loop can report it;
raise train.images_per_batch if it is ever non-zero.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding

PACKED_KEYS = ("image_rows", "images")


def pack_batch(batch: dict[str, np.ndarray], *, budget: int, accum_steps: int = 1,
               shard_index: int = 0) -> tuple[dict[str, np.ndarray], int]:
  """(arrays for the step, examples zero-weighted for lack of image budget).

  `batch` is one reader's part of the global batch; `budget` is its share of
  train.images_per_batch. `image_rows` index the global packed array, so each
  reader offsets by the rows of the readers before it."""
  rows = batch["tokens"].shape[0]
  if rows % accum_steps or budget % accum_steps:
    raise ValueError(f"per-process batch ({rows}) and image budget ({budget}) must both divide by "
                     f"train.grad_accum_steps ({accum_steps})")
  out = {k: v for k, v in batch.items() if k not in ("pixels", "image_valid")}
  if "pixels" not in batch:
    return out, 0
  valid_bm = batch["image_valid"]
  per_micro = budget // accum_steps
  offset = shard_index * per_micro
  image_rows_bm = np.full(valid_bm.shape, -1, np.int32)
  images = np.zeros((budget,) + batch["pixels"].shape[2:], np.uint8)
  weights = batch["weights"].copy()
  medium_valid = batch["medium_valid"].copy() if "medium_valid" in batch else None
  used = np.zeros(accum_steps, np.int32)
  dropped = 0
  for b in range(rows):
    micro, slots = b % accum_steps, np.flatnonzero(valid_bm[b])
    if used[micro] + len(slots) > per_micro:
      weights[b] = 0
      if medium_valid is not None:
        medium_valid[b] = False
      dropped += 1
      continue
    for m in slots:
      j = used[micro]
      image_rows_bm[b, m] = offset + j
      images[j * accum_steps + micro] = batch["pixels"][b, m]
      used[micro] += 1
  out.update(weights=weights, image_rows=image_rows_bm, images=images)
  if medium_valid is not None:
    out["medium_valid"] = medium_valid
  return out, dropped


class ReaderGroup:
  """This process's readers: `next_batch()` packs each reader's batch and joins
  them; `save`/`restore` keep one iterator state per reader (the checkpoint's
  `input` item)."""

  def __init__(self, make_pipeline, *, readers: int, budget: int, accum_steps: int):
    processes, process = jax.process_count(), jax.process_index()
    if readers % processes:
      raise ValueError(f"data.readers ({readers}) must be a multiple of the number of processes ({processes})")
    per_process = readers // processes
    self.readers, self.accum_steps, self.budget = readers, accum_steps, budget // readers
    self.indices = list(range(process * per_process, (process + 1) * per_process))
    self.pipelines = [make_pipeline(index, readers) for index in self.indices]

  def next_batch(self) -> tuple[dict[str, np.ndarray], int]:
    parts, dropped = [], 0
    for index, pipeline in zip(self.indices, self.pipelines):
      arrays, lost = pack_batch(next(pipeline), budget=self.budget, accum_steps=self.accum_steps, shard_index=index)
      parts.append(arrays)
      dropped += lost
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}, dropped

  @property
  def counts(self) -> dict:
    total = {}
    for pipeline in self.pipelines:
      for key, value in pipeline.counts.items():
        total[key] = total.get(key, 0) + value
    return total

  def _reader_dir(self, directory, index: int):
    return directory / f"reader_{index}-of-{self.readers}"

  def save(self, directory) -> None:
    for index, pipeline in zip(self.indices, self.pipelines):
      target = self._reader_dir(directory, index)
      target.mkdir(parents=True, exist_ok=True)
      pipeline.save(target / "iterator")

  def restore(self, directory) -> None:
    for index, pipeline in zip(self.indices, self.pipelines):
      source = self._reader_dir(directory, index)
      if not source.exists():
        written = sorted(p.name for p in directory.iterdir())
        raise ValueError(f"checkpoint input state {directory} holds {written}, not {source.name}; resume with the "
                         f"same data.readers, or restart the data stream with "
                         f"--config.train.reset_data_on_resume=true")
      pipeline.restore(source / "iterator")


def to_global(arrays: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Each process's rows → one global array per key, split along the leading axis."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in arrays.items()}
