"""CLIP image–caption scores and image embeddings (spec §1, step 1).

`ClipScorer.score_pairs([(image, caption), ...])` returns, per pair, the CLIP
score 100 × cos(image embedding, caption embedding), the L2-normalised image
embedding (what data_gen's k-means groups) and `keep` = score ≥ `min_score`
(30 in TextBind). Images may be PIL images, uint8 arrays (H, W, 3), already
preprocessed float arrays (size, size, 3) from `mim_jax.data.clip_images`, or
file paths.

Throughput: the batch always has the same shape (`batch_size` rows, captions
padded to the text tower's `max_positions`), so the model compiles once; rows
are split over the local devices along a `data` mesh axis with the params
replicated, and the next batch is preprocessed while the devices run the
current one. On several hosts each process scores its own share of the pairs
on its own devices.

Bad records never stop a run: an unreadable image or a caption that is not
text gets score NaN, a NaN embedding and keep False, and is counted by reason
in `ScoredPairs.problems`. Captions longer than `max_positions` tokens are
truncated like transformers' tokenizer (truncation=True keeps the end token)
and counted in `truncated_captions`.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from PIL import Image
from tqdm import tqdm

from mim_jax.convert.clip import load_hf_clip
from mim_jax.data.clip_images import load_clip_pixels, preprocess_clip_image
from mim_jax.data.images import BadImageError
from mim_jax.models.clip import ClipModel, normalize
from mim_jax.models.clip_config import ClipConfig
from mim_jax.nn.sharding import data_mesh

log = logging.getLogger(__name__)

TEXTBIND_MIN_SCORE = 30.0
ImageInput = Image.Image | np.ndarray | str | os.PathLike


@dataclasses.dataclass
class ScoredPairs:
  scores: np.ndarray  # (n,) float32, 100 × cosine; NaN for a bad record
  image_embeds: np.ndarray  # (n, projection_dim) float32, unit norm; NaN rows for bad records
  keep: np.ndarray  # (n,) bool: a good record scoring at least min_score
  problems: collections.Counter  # reason → number of bad records
  truncated_captions: int

  def summary(self) -> str:
    bad = ", ".join(f"{n} {reason}" for reason, n in sorted(self.problems.items())) or "none"
    return (f"{len(self.scores)} pairs: {int(self.keep.sum())} kept, bad records: {bad}; "
            f"{self.truncated_captions} captions truncated")


class ClipScorer:
  """Scores image–caption pairs with a CLIP model; see the module docstring.

  `tokenizer` is a transformers CLIP tokenizer (`AutoTokenizer.from_pretrained`
  of the checkpoint). `batch_size` is rounded up to a multiple of the device
  count."""

  def __init__(self, config: ClipConfig, params: Any, tokenizer, *, batch_size: int = 64,
               min_score: float = TEXTBIND_MIN_SCORE, devices: Sequence[jax.Device] | None = None):
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.config, self.tokenizer, self.min_score = config, tokenizer, float(min_score)
    self.mesh = data_mesh(devices or jax.local_devices())
    num_devices = self.mesh.devices.size
    self.batch_size = -(-batch_size // num_devices) * num_devices
    replicated = NamedSharding(self.mesh, PartitionSpec())
    self._rows = NamedSharding(self.mesh, PartitionSpec("data"))
    self.params = jax.device_put(params, replicated)
    model = ClipModel(config)

    def score(params, pixels_bhwc, token_ids_bt, attention_mask_bt):
      variables = {"params": params}
      image_bp = normalize(model.apply(variables, pixels_bhwc, method="encode_image").embeds)
      text_bp = normalize(model.apply(variables, token_ids_bt, attention_mask_bt, method="encode_text").embeds)
      return 100 * jnp.sum(image_bp * text_bp, axis=-1), image_bp

    def embed(params, pixels_bhwc):
      return normalize(model.apply({"params": params}, pixels_bhwc, method="encode_image").embeds)

    self._score = jax.jit(score, in_shardings=(replicated, self._rows, self._rows, self._rows),
                          out_shardings=(self._rows, self._rows))
    self._embed = jax.jit(embed, in_shardings=(replicated, self._rows), out_shardings=self._rows)

  @classmethod
  def from_pretrained(cls, directory: str | os.PathLike, *, tokenizer_directory: str | os.PathLike | None = None,
                      dtype: str = "float32", **kwargs) -> "ClipScorer":
    """A HF CLIPModel directory (config.json, safetensors, tokenizer files, e.g. openai/clip-vit-large-patch14)."""
    from transformers import AutoTokenizer

    config, params = load_hf_clip(directory, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(Path(tokenizer_directory or directory))
    return cls(config, params, tokenizer, **kwargs)

  # ------------------------------------------------------------------------- host side

  def _pixels(self, image: ImageInput) -> np.ndarray:
    size = self.config.vision.image_size
    if isinstance(image, (str, os.PathLike)):
      return load_clip_pixels(image, size)
    if isinstance(image, np.ndarray) and image.dtype != np.uint8:
      if image.shape != (size, size, 3):
        raise ValueError(f"a float image must be preprocessed to ({size}, {size}, 3), got {image.shape}")
      return image.astype(np.float32)
    if not isinstance(image, (Image.Image, np.ndarray)):
      raise TypeError(f"an image must be a PIL image, an array or a path, got {type(image).__name__}")
    return preprocess_clip_image(image, size)

  def _token_rows(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids, attention mask) padded to max_positions, and how many captions were truncated."""
    length = self.config.text.max_positions
    ids_bt = np.full((len(captions), length), self.tokenizer.pad_token_id, np.int32)
    mask_bt = np.zeros((len(captions), length), np.int32)
    truncated = 0
    for row, ids in enumerate(self.tokenizer(captions)["input_ids"]):
      if len(ids) > length:
        # Keep the end token, as the tokenizer's own truncation does.
        ids, truncated = ids[:length - 1] + ids[-1:], truncated + 1
      ids_bt[row, :len(ids)], mask_bt[row, :len(ids)] = ids, 1
    return ids_bt, mask_bt, truncated

  def _prepare(self, images: Sequence[ImageInput], problems: collections.Counter) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (batch_size, size, size, 3) and which of the given rows are usable."""
    size = self.config.vision.image_size
    pixels = np.zeros((self.batch_size, size, size, 3), np.float32)
    ok = np.zeros(len(images), bool)
    for row, image in enumerate(images):
      try:
        pixels[row] = self._pixels(image)
        ok[row] = True
      except FileNotFoundError:
        problems["image file missing"] += 1
      except BadImageError:
        problems["image not decodable"] += 1
      except (ValueError, TypeError, OSError) as e:
        log.debug("unusable image in row %d: %s", row, e)
        problems["image unusable"] += 1
    return pixels, ok

  # ------------------------------------------------------------------------- API

  def score_pairs(self, pairs: Iterable[tuple[ImageInput, str]], *, progress: bool = False) -> ScoredPairs:
    """Scores and image embeddings for every (image, caption) pair, in order. `pairs` is consumed one batch
    at a time, so a generator of file paths never holds more than two batches of images."""
    problems: collections.Counter = collections.Counter()
    truncated = 0

    def dispatch():
      nonlocal truncated
      for chunk in self._batches(pairs, progress, "CLIP score"):
        pixels, ok = self._prepare([image for image, _ in chunk], problems)
        is_text = np.array([isinstance(caption, str) for _, caption in chunk])
        problems["caption not text"] += int(np.sum(ok & ~is_text))
        ok &= is_text
        captions = [caption if usable else "" for (_, caption), usable in zip(chunk, ok)]
        ids, mask, chunk_truncated = self._token_rows(captions + [""] * (self.batch_size - len(chunk)))
        truncated += chunk_truncated
        yield ok, self._score(self.params, *(jax.device_put(x, self._rows) for x in (pixels, ids, mask)))

    scores, embeds = [], []
    for ok, (batch_scores, batch_embeds) in _one_behind(dispatch()):
      scores.append(_rows_or_nan(batch_scores, ok))
      embeds.append(_rows_or_nan(batch_embeds, ok))
    scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    embeds = np.concatenate(embeds) if embeds else np.zeros((0, self.config.projection_dim), np.float32)
    keep = np.nan_to_num(scores, nan=-np.inf) >= self.min_score
    return ScoredPairs(scores, embeds, keep, +problems, truncated)

  def embed_images(self, images: Iterable[ImageInput], *,
                   progress: bool = False) -> tuple[np.ndarray, np.ndarray, collections.Counter]:
    """(unit image embeddings with NaN rows for bad images, usable mask, problems by reason)."""
    problems: collections.Counter = collections.Counter()

    def dispatch():
      for chunk in self._batches(images, progress, "CLIP embed"):
        pixels, ok = self._prepare(chunk, problems)
        yield ok, self._embed(self.params, jax.device_put(pixels, self._rows))

    embeds, usable = [], []
    for ok, batch_embeds in _one_behind(dispatch()):
      embeds.append(_rows_or_nan(batch_embeds, ok))
      usable.append(ok)
    if not embeds:
      return np.zeros((0, self.config.projection_dim), np.float32), np.zeros(0, bool), problems
    return np.concatenate(embeds), np.concatenate(usable), +problems

  def _batches(self, items: Iterable, progress: bool, description: str):
    total = -(-len(items) // self.batch_size) if hasattr(items, "__len__") else None
    iterator = iter(items)
    with tqdm(total=total, desc=description, disable=not progress, unit="batch") as bar:
      while chunk := list(itertools.islice(iterator, self.batch_size)):
        yield chunk
        bar.update()


def _rows_or_nan(batch: jax.Array, ok: np.ndarray) -> np.ndarray:
  """The batch's first len(ok) rows as float32 numpy, NaN where the record was bad."""
  rows = np.asarray(batch, np.float32)[:len(ok)].copy()
  rows[~ok] = np.nan
  return rows


def _one_behind(items: Iterable):
  """Yields each item only after the next one has been produced: the devices run batch i (dispatched
  asynchronously) while the host preprocesses batch i + 1, and results are read one batch late."""
  pending = None
  for item in items:
    if pending is not None:
      yield pending
    pending = item
  if pending is not None:
    yield pending
