"""The batch, named once: every array of an example and of a train step, with
its dimensions and dtype.

Three views of the same fields, by stage:

- `features`: what `data/features.build_features` returns for one example
  (every field it knows, medium fields included, zero where unused);
- `example`: what the input pipeline (`data/pipeline.py`) yields per example:
  the features, minus `image_ids`, plus the image slots' `pixels` (and, with
  the qformer medium, the SD tokenizer's `medium_caption_ids`);
- `step`: the global batch the train step takes (`data/batches.pack_batch`
  packs the pixels into `images` and `image_rows`), as `launch/aot_compile.py`
  compiles it. `medium_targets` are computed on device from
  `medium_caption_ids` (train/medium_targets.py), so the host sends the ids.

Dimension letters: t length, m image slots, s image side, n packed images
(the step's image budget), l caption length (SD tokenizer), e SD conditioning
length, d its width. A text-only Llama batch has the `text` fields only.
"""
from __future__ import annotations

import dataclasses

import numpy as np

FEATURES, EXAMPLE, STEP = "features", "example", "step"
_ALL = frozenset({FEATURES, EXAMPLE, STEP})


@dataclasses.dataclass(frozen=True)
class Field:
  name: str
  dims: tuple[str, ...]  # per example (step arrays add the batch row, except `per_row=False` ones)
  dtype: str
  stages: frozenset[str]
  kind: str = "text"  # text: every model; mim: models that read images; medium: the qformer image medium only
  model_arg: str = ""  # the MIM keyword argument the step passes it as (image inputs)
  per_row: bool = True  # False: indexed by packed image, not by batch row
  host_field: str = ""  # a step field computed on device from this host field


FIELDS = (
    Field("tokens", ("t",), "int32", _ALL),
    Field("targets", ("t",), "int32", _ALL),  # what each input predicts (explicit, never shifted later)
    Field("weights", ("t",), "float32", _ALL),
    Field("positions", ("t",), "int32", _ALL, kind="mim"),
    Field("mask", ("t", "t"), "bool", _ALL, kind="mim"),  # True = may attend
    Field("valid", ("t",), "bool", frozenset({FEATURES, EXAMPLE}), kind="mim"),
    Field("image_starts", ("m",), "int32", _ALL, kind="mim", model_arg="image_starts_bm"),
    Field("image_valid", ("m",), "bool", frozenset({FEATURES, EXAMPLE}), kind="mim"),
    Field("image_ids", ("m",), "int32", frozenset({FEATURES}), kind="mim"),
    Field("pixels", ("m", "s", "s", "3"), "uint8", frozenset({EXAMPLE}), kind="mim"),
    Field("image_rows", ("m",), "int32", frozenset({STEP}), kind="mim", model_arg="image_rows_bm"),
    Field("images", ("n", "s", "s", "3"), "uint8", frozenset({STEP}), kind="mim", model_arg="images", per_row=False),
    Field("medium_starts", ("m",), "int32", _ALL, kind="medium"),
    Field("medium_valid", ("m",), "bool", _ALL, kind="medium"),
    Field("medium_caption_ids", ("m", "l"), "int32", frozenset({EXAMPLE}), kind="medium"),
    Field("medium_targets", ("m", "e", "d"), "float32", frozenset({STEP}), kind="medium",
          host_field="medium_caption_ids"),
)
# Precomputed ViT features may stand in for `images` (benchmarks); no pipeline writes them.
MODEL_ARGS = {**{f.name: f.model_arg for f in FIELDS if f.model_arg}, "vit_features": "vit_features"}
FEATURE_FIELDS = tuple(f.name for f in FIELDS if FEATURES in f.stages)
# Step arrays whose sum over the whole batch a loss needs under gradient accumulation.
TOTALED = ("weights", "medium_valid")


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """The sizes of one run's batches. `images` False: a text-only Llama;
  `medium` True: the qformer image medium (needs `caption_length`,
  `cond_length`, `cond_dim`)."""

  batch_size: int
  seq_len: int
  images: bool = True
  max_images: int = 0
  image_size: int = 0
  images_per_batch: int = 0
  medium: bool = False
  caption_length: int = 0
  cond_length: int = 0
  cond_dim: int = 0

  def fields(self, stage: str) -> tuple[Field, ...]:
    kinds = {"text"} | ({"mim"} if self.images else set()) | ({"medium"} if self.medium else set())
    return tuple(f for f in FIELDS if stage in f.stages and f.kind in kinds)

  def _shape(self, field: Field, batched: bool) -> tuple[int, ...]:
    sizes = {"t": self.seq_len, "m": self.max_images, "s": self.image_size, "n": self.images_per_batch,
             "l": self.caption_length, "e": self.cond_length, "d": self.cond_dim, "3": 3}
    shape = tuple(sizes[d] for d in field.dims)
    return (self.batch_size,) + shape if batched and field.per_row else shape

  def example(self) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """(name, dtype, shape) of one example as the input pipeline yields it, in order."""
    return [(f.name, np.dtype(f.dtype), self._shape(f, False)) for f in self.fields(EXAMPLE)]

  def step(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name → (global shape, dtype) of what the train step takes."""
    return {f.name: (self._shape(f, True), np.dtype(f.dtype)) for f in self.fields(STEP)}

  def host_keys(self) -> tuple[str, ...]:
    """The packed host arrays the loop sends to the devices (a computed step field sends its source)."""
    return tuple(f.host_field or f.name for f in self.fields(STEP))
