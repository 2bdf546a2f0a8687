"""The training input pipeline: TFDS datasets of TFRecords → tf.data → batches of features.

Per source, the split is cut evenly across `shard_count` readers (each reads
a disjoint part; data/batches.py spreads the readers over the processes), its
files are shuffled and interleaved, records are shuffled in a buffer (seeded;
reshuffled each epoch; epochs never mix) and repeated forever. Sources are
mixed by weight. Each record then becomes the features of data/features.py in
Python (tokenizer, chat template, caption branches, PIL decode and resize)
inside `tf.numpy_function` on parallel threads; records that cannot be used
are counted by reason and skipped. Examples are batched per reader and
prefetched.

Determinism: every random choice is seeded (the seed is mixed with the reader
index) and maps run with `deterministic=True`, so the stream is a function of
(seed, reader). Stage-1 instructions are drawn from the record's index in the
stream, so each epoch draws fresh ones, reproducibly.

Resume: `save(path)` writes the iterator's state (file offsets, shuffle buffer,
prefetched batches) with `tf.train.Checkpoint`; `restore(path)` continues at
exactly the next batch without re-reading what was consumed. The Python map is
a pure function of its inputs, so ignoring its (absent) state is correct.

The qformer image medium (FeatureConfig.medium_prompt_tokens > 0) adds
`medium_starts`, `medium_valid` (b, M) and, tokenized by `caption_tokenizer`
(the SD text encoder's), `medium_caption_ids` (b, M, L); the train step embeds
them on device (train/medium_targets.py).

Images leave the pipeline as uint8 (M, 224, 224, 3), resized on the host; the
train step normalises them on device (images.pixel_table), 4× less traffic.
"""
from __future__ import annotations

import dataclasses
import json
import random
import threading
from collections import Counter
from pathlib import Path

from etils import epath
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mim_jax.data.batch_spec import BatchSpec
from mim_jax.data.conversation import ConversationError, conversation_from_json
from mim_jax.data.features import FeatureConfig, build_features
from mim_jax.data.images import IMAGE_SIZE, BadImageError, decode_image, resize_image
from mim_jax.data.instructions import caption_sample
from mim_jax.data.tokenizer import Tokenizer

KIND_IDS = {"conversation": 0, "caption": 1}


class CaptionTokenizer:
  """Captions → (n, length) int32 ids padded to the SD text encoder's length,
  truncated as diffusers does (the medium's targets are that encoder's
  embeddings). Wraps a HF CLIP tokenizer; callable from tf.data threads."""

  def __init__(self, tokenizer, length: int):
    self.tokenizer, self.length = tokenizer, length
    self._lock = threading.Lock()  # a fast tokenizer's padding settings are shared state

  def __call__(self, captions) -> np.ndarray:
    with self._lock:
      return self.tokenizer(list(captions), padding="max_length", max_length=self.length, truncation=True,
                            return_tensors="np").input_ids.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class DataSource:
  """A TFDS dataset directory (`…/name/version`, or `…/name` for its newest
  version) as written by data_gen or mim_jax.data.convert_datasets."""

  path: str
  weight: float = 1.0
  split: str = "train"


def open_builder(path: str | Path) -> tfds.core.DatasetBuilder:
  """The builder of a prepared TFDS dataset directory (local or gs://), with errors that say what to run."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(
        f"dataset {path} does not exist; write it with `python -m data_gen run …` or "
        f"`python -m mim_jax.data.convert_datasets …`, or fix data.sources.<name>.path")
  if not (path / "dataset_info.json").is_file():
    versions = sorted((p for p in path.iterdir() if (p / "dataset_info.json").is_file()),
                      key=lambda p: tuple(int(x) for x in p.name.split(".") if x.isdigit()))
    if not versions:
      raise FileNotFoundError(f"{path} holds no prepared TFDS dataset (no dataset_info.json in it or in a version "
                              f"folder below it); point data.sources.<name>.path at the dataset directory")
    path = versions[-1]
  return tfds.builder_from_directory(path)


def record_kind(builder: tfds.core.DatasetBuilder) -> str:
  keys = set(builder.info.features.keys())
  if {"conversation", "images", "image_names"} <= keys:
    return "conversation"
  if {"caption", "image"} <= keys:
    return "caption"
  raise ValueError(f"dataset {builder.data_dir} has features {sorted(keys)}, which match neither record kind of "
                   f"mim_jax/data/schema.py; rewrite it with the schema's features")


class InputPipeline:
  """An iterator of one reader's batches (dicts of numpy arrays) over weighted sources.

  `records` is the mixed record stream before features (for inspection).
  Arrays: tokens, targets, weights, positions, mask, valid (b, T[, T]);
  image_starts, image_valid (b, M); pixels (b, M, 224, 224, 3) uint8, zero
  where image_valid is False; with the qformer medium also medium_starts,
  medium_valid (b, M) and medium_caption_ids (b, M, L). `counts` holds
  skipped records by reason and truncation notes (approximate while threads
  run: it is for reporting)."""

  def __init__(self, sources: Sequence[DataSource], tokenizer: Tokenizer, features: FeatureConfig, *,
               batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1,
               shuffle_buffer: int = 1024, num_parallel_calls: int = 8, image_size: int = IMAGE_SIZE,
               caption_tokenizer: "CaptionTokenizer | None" = None):
    if features.medium_prompt_tokens and caption_tokenizer is None:
      raise ValueError("the qformer medium needs a caption_tokenizer (the SD text encoder's) for its targets")
    if not sources:
      raise ValueError("no data sources configured; add at least one under data.sources")
    weights = np.asarray([s.weight for s in sources], np.float64)
    if (weights < 0).any() or weights.sum() <= 0:
      raise ValueError(f"data source weights must be >= 0 with a positive sum, got {weights.tolist()}")
    self.tokenizer, self.features, self.image_size = tokenizer, features, image_size
    self.caption_tokenizer = caption_tokenizer if features.medium_prompt_tokens else None
    self._spec = self._output_spec()
    self.seed = seed * 1_000_003 + shard_index  # distinct, reproducible streams per reader
    self.counts: Counter = Counter()
    self._lock = threading.Lock()
    streams = [self._source_stream(s, shard_index, shard_count, shuffle_buffer) for s in sources]
    if len(streams) == 1:
      self.records = streams[0]
    else:
      self.records = tf.data.Dataset.sample_from_datasets(streams, (weights / weights.sum()).tolist(), seed=self.seed)
    examples = self.records.enumerate().map(self._features, num_parallel_calls=num_parallel_calls, deterministic=True)
    examples = examples.filter(lambda example: example["keep"])
    batched = examples.batch(batch_size, drop_remainder=True).map(self._drop_keep).prefetch(2)
    options = tf.data.Options()
    options.deterministic = True
    # The Python map is pure; the only state worth checkpointing is tf.data's own.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    self.dataset = batched.with_options(options)
    self._iterator = iter(self.dataset)

  def _source_stream(self, source: DataSource, shard_index: int, shard_count: int,
                     shuffle_buffer: int) -> tf.data.Dataset:
    builder = open_builder(source.path)
    kind = record_kind(builder)
    if source.split not in builder.info.splits:
      raise ValueError(f"dataset {builder.data_dir} has no split {source.split!r}; splits: "
                       f"{', '.join(builder.info.splits)}")
    split = tfds.split_for_jax_process(source.split, process_index=shard_index, process_count=shard_count,
                                       drop_remainder=True)
    image_key = "images" if kind == "conversation" else "image"
    read_config = tfds.ReadConfig(shuffle_seed=self.seed, shuffle_reshuffle_each_iteration=True,
                                  try_autocache=False)
    ds = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config,
                            decoders={image_key: tfds.decode.SkipDecoding()})
    ds = ds.shuffle(shuffle_buffer, seed=self.seed, reshuffle_each_iteration=True).repeat()
    kind_id = KIND_IDS[kind]
    if kind == "conversation":
      return ds.map(lambda r: {"kind": tf.constant(kind_id), "id": r["id"], "text": r["conversation"],
                               "names": r["image_names"], "images": r["images"]})
    return ds.map(lambda r: {"kind": tf.constant(kind_id), "id": r["id"], "text": r["caption"],
                             "names": tf.reshape(r["id"], [1]), "images": tf.reshape(r["image"], [1])})

  def _output_spec(self) -> list[tuple[str, tf.DType, tuple]]:
    """(name, dtype, shape) of what `_build` returns, in order: the batch spec's example, then `keep`."""
    medium = self.caption_tokenizer is not None
    spec = BatchSpec(batch_size=1, seq_len=self.features.max_len, max_images=self.features.max_images,
                     image_size=self.image_size, medium=medium,
                     caption_length=self.caption_tokenizer.length if medium else 0)
    return [(name, tf.as_dtype(dtype), shape) for name, dtype, shape in spec.example()] + [("keep", tf.bool, ())]

  def _features(self, index, record):
    spec = self._spec
    arrays = tf.numpy_function(self._build, [index, record["kind"], record["id"], record["text"], record["names"],
                                             record["images"]], [dtype for _, dtype, _ in spec], stateful=False)
    return {name: tf.ensure_shape(x, shape) for (name, _, shape), x in zip(spec, arrays)}

  def _build(self, index, kind, record_id, text, names, images):
    """One record → the arrays of `_features`, or keep=False after counting why."""
    record_id = record_id.decode("utf-8")
    try:
      if kind == KIND_IDS["caption"]:
        rng = random.Random(f"{self.seed}/{int(index)}")
        conversation = caption_sample(record_id, text.decode("utf-8"), rng, name=record_id)
      else:
        conversation = conversation_from_json(json.loads(text.decode("utf-8")), name=record_id)
      built = build_features(conversation, self.tokenizer, self.features)
      encoded = dict(zip((n.decode("utf-8") for n in names), images))
      pixels = np.zeros((self.features.max_images, self.image_size, self.image_size, 3), np.uint8)
      for slot, file in enumerate(built.image_files):
        if file not in encoded:
          raise ConversationError("missing_image", f"{record_id}: image {file!r} is not stored in the record")
        pixels[slot] = resize_image(decode_image(bytes(encoded[file]), f"{record_id}/{file}"), self.image_size)
    except (ConversationError, BadImageError, json.JSONDecodeError, UnicodeDecodeError) as error:
      reason = getattr(error, "reason", type(error).__name__)
      with self._lock:
        self.counts[f"skipped:{reason}"] += 1
      return self._empty()
    with self._lock:
      self.counts.update({f"note:{k}": v for k, v in built.stats.items()})
      self.counts["kept"] += 1
    arrays = {**built.arrays(), "pixels": pixels}
    if self.caption_tokenizer is not None:
      arrays["medium_caption_ids"] = self.caption_tokenizer(built.medium_captions)
    return (*(arrays[name] for name, _, _ in self._spec[:-1]), np.bool_(True))

  def _empty(self):
    return tuple(np.zeros(shape, dtype.as_numpy_dtype) for _, dtype, shape in self._spec)

  @staticmethod
  def _drop_keep(batch):
    return {k: v for k, v in batch.items() if k != "keep"}

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in next(self._iterator).items()}

  def save(self, path: str | Path) -> None:
    """Writes the iterator position to `path` (a file prefix; its folder must exist)."""
    tf.train.Checkpoint(iterator=self._iterator).write(str(path))

  def restore(self, path: str | Path) -> None:
    tf.train.Checkpoint(iterator=self._iterator).read(str(path)).assert_consumed()
