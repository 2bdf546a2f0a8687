"""Writes record dicts as a TFDS dataset directory (TFRecord shards + metadata).

The layout is TFDS's own: `DATA_DIR/NAME/VERSION/` holding
`NAME-SPLIT.tfrecord-00000-of-0000N`, `dataset_info.json` (splits with their
per-shard lengths) and `features.json` (the schema.py features of `kind`).
Both readers work on it, with no builder class:

  tfds.builder_from_directory(path).as_dataset(split="train")
  tfds.builder(NAME, data_dir=DATA_DIR).as_dataset(split="train")  # NAME must not be a registered TFDS dataset

Why not `tfds.dataset_builders.store_as_tfds_dataset`: it runs the full
`download_and_prepare` path, which shuffles through temporary buckets (every
image written twice) and refuses to replace an existing version. Here each
example is serialized once with the schema's features and streamed to its
shard, so converting a 150k-conversation set needs no more memory than one
record.

Records are kept in input order; the training pipeline shuffles files and
examples at read time. The whole version directory is written under a hidden
temporary name and renamed into place only when every split is complete, so a
crash never leaves a directory that reads as a finished dataset.
"""
from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Mapping

import tensorflow as tf
import tensorflow_datasets as tfds
from tqdm import tqdm

from mim_jax.data import schema

# Roughly TFDS's own target; big enough that a 30 GB set is a few hundred files.
DEFAULT_MAX_SHARD_BYTES = 256 << 20
_NAME = re.compile(r"[a-z][a-z0-9_]*")


class _SplitShards:
  """The shard files of one split. With `num_shards` records go round-robin
  over that many files (so a short set still has a shard per host); otherwise a
  new file starts when the current one reaches `shard_size` records or
  `max_shard_bytes`."""

  def __init__(self, directory: Path, split: str, *, shard_size: int | None, num_shards: int | None,
               max_shard_bytes: int):
    self._directory, self._split = directory, split
    self._shard_size, self._max_shard_bytes = shard_size, max_shard_bytes
    self.paths: list[Path] = []
    self.lengths: list[int] = []
    self.num_bytes = 0
    self._shard_bytes: list[int] = []
    self._writers: list[tf.io.TFRecordWriter] = []
    for _ in range(num_shards or 0):
      self._open()
    self._round_robin = bool(num_shards)
    self._count = 0

  def _open(self) -> None:
    path = self._directory / f"{self._split}-{len(self.paths):05d}.partial"
    self.paths.append(path)
    self.lengths.append(0)
    self._shard_bytes.append(0)
    self._writers.append(tf.io.TFRecordWriter(os.fspath(path)))

  def _last_is_full(self) -> bool:
    return (self._shard_size is not None and self.lengths[-1] >= self._shard_size) or \
        self._shard_bytes[-1] >= self._max_shard_bytes

  def write(self, serialized: bytes) -> None:
    if self._round_robin:
      index = self._count % len(self._writers)
    else:
      if not self.paths or self._last_is_full():
        if self._writers:
          self._writers[-1].close()
        self._open()
      index = len(self.paths) - 1
    self._writers[index].write(serialized)
    self.lengths[index] += 1
    self._shard_bytes[index] += len(serialized)
    self.num_bytes += len(serialized)
    self._count += 1

  def close(self) -> None:
    for writer in self._writers:
      writer.close()


def write_dataset(data_dir: str | os.PathLike, name: str, kind: str, splits: Mapping[str, Iterable[dict]], *,
                  version: str = "1.0.0", description: str = "", homepage: str | None = None,
                  citation: str | None = None, shard_size: int | None = None, num_shards: int | None = None,
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, overwrite: bool = False,
                  progress: bool = True) -> Path:
  """Writes `splits` (split name → iterable of `kind` record dicts, see
  schema.py) to `data_dir/name/version` and returns that path.

  Sharding: `num_shards` files per split (round-robin), or files of at most
  `shard_size` records, or (default) files of about `max_shard_bytes`.
  An existing version is replaced only with `overwrite=True`. A split that
  yields no record is an error: an empty split would fail at training time.
  """
  features = schema.features_for(kind)
  _check_arguments(name, splits, version, shard_size, num_shards)
  final = Path(data_dir) / name / version
  if final.exists() and not overwrite:
    raise FileExistsError(f"dataset {final} already exists; pass overwrite=True (CLI: --overwrite) to replace it "
                          "or choose another --name/--version")
  final.parent.mkdir(parents=True, exist_ok=True)
  # A leading dot keeps TFDS from ever listing the unfinished directory as a version.
  staging = final.parent / f".{version}.incomplete-{uuid.uuid4().hex[:8]}"
  staging.mkdir()
  try:
    split_infos = [_write_split(staging, name, split, records, features, progress,
                                shard_size=shard_size, num_shards=num_shards, max_shard_bytes=max_shard_bytes)
                   for split, records in splits.items()]
    identity = tfds.core.dataset_info.DatasetIdentity(
        name=name, version=tfds.core.Version(version), data_dir=os.fspath(final), module_name=__name__)
    info = tfds.core.DatasetInfo(builder=identity, description=description, features=features,
                                 homepage=homepage, citation=citation)
    info.set_file_format(tfds.core.FileFormat.TFRECORD)
    info.set_splits(tfds.core.SplitDict(split_infos))
    info.write_to_directory(staging)
    _replace(staging, final, overwrite)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return final


def _check_arguments(name, splits, version, shard_size, num_shards) -> None:
  if not _NAME.fullmatch(name):
    raise ValueError(f"dataset name {name!r} is not a TFDS name; use lower-case letters, digits and '_', "
                     "starting with a letter (e.g. llava_instruct)")
  if name in tfds.list_builders(with_community_datasets=False):
    # tfds.builder(name) would build TFDS's own dataset of that name instead of reading ours.
    raise ValueError(f"dataset name {name!r} is a registered TFDS dataset; choose another name (e.g. mim_{name})")
  try:
    tfds.core.Version(version)
  except ValueError as error:
    raise ValueError(f"version {version!r} is not of the form MAJOR.MINOR.PATCH (e.g. 1.0.0)") from error
  if not splits:
    raise ValueError("no splits given; pass e.g. {'train': records}")
  for split in splits:
    if not _NAME.fullmatch(split):
      raise ValueError(f"split name {split!r} must be lower-case letters, digits and '_' (e.g. train)")
  if shard_size is not None and num_shards is not None:
    raise ValueError("give shard_size (records per file) or num_shards (files per split), not both")
  for label, value in (("shard_size", shard_size), ("num_shards", num_shards)):
    if value is not None and value < 1:
      raise ValueError(f"{label} must be at least 1, got {value}")


def _write_split(staging: Path, name: str, split: str, records: Iterable[dict],
                 features: tfds.features.FeaturesDict, progress: bool, **sharding) -> tfds.core.SplitInfo:
  shards = _SplitShards(staging, split, **sharding)
  try:
    for record in tqdm(records, desc=f"{name}/{split}", unit=" records", disable=not progress):
      shards.write(features.serialize_example(record))
  finally:
    shards.close()
  # Round-robin over more files than records leaves some empty; TFDS reads no empty shard.
  kept = [(path, length) for path, length in zip(shards.paths, shards.lengths) if length]
  for path, length in zip(shards.paths, shards.lengths):
    if not length:
      path.unlink()
  if not kept:
    raise ValueError(f"split {split!r} of {name!r} has no records; nothing was written (check the converter's "
                     "skip counts above)")
  template = tfds.core.ShardedFileTemplate(data_dir=staging, dataset_name=name, split=split,
                                           filetype_suffix="tfrecord")
  for index, (path, _) in enumerate(kept):
    path.rename(template.sharded_filepath(shard_index=index, num_shards=len(kept)))
  return tfds.core.SplitInfo(name=split, shard_lengths=[length for _, length in kept], num_bytes=shards.num_bytes,
                             filename_template=template)


def _replace(staging: Path, final: Path, overwrite: bool) -> None:
  """Renames `staging` to `final`; an existing `final` is moved aside first and
  deleted only after the new one is in place (a crash in between leaves both
  under hidden names, the old one recoverable by renaming it back)."""
  if not final.exists():
    staging.rename(final)
    return
  if not overwrite:
    raise FileExistsError(f"dataset {final} appeared while this one was written; pass overwrite=True to replace it")
  retired = final.parent / f".{final.name}.replaced-{uuid.uuid4().hex[:8]}"
  final.rename(retired)
  staging.rename(final)
  shutil.rmtree(retired)
