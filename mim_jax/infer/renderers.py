"""What turns MIM's image medium into pictures (spec §2).

Two interfaces, one per medium:

- `TextRenderer`: `list[str] -> list[PIL.Image]`, one image per description
  (the `language` medium: the description is Stable Diffusion's prompt).
- `EmbeddingRenderer`: `np.ndarray (n, length, width) -> list[PIL.Image]`, one
  image per conditioning sequence (the `qformer` medium: the mapper writes SD's
  text-conditioning space directly, like `prompt_embeds` in diffusers).

The placeholder renderers here draw a deterministic pattern from a hash of
their input. They are NOT diffusion models: they exist so the generation loop,
the chat CLI and tests run offline, and two equal inputs give equal images
while different inputs (almost surely) differ.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

TextRenderer = Callable[[list[str]], list[Image.Image]]
EmbeddingRenderer = Callable[[np.ndarray], list[Image.Image]]


def _pattern(digest: bytes, size: int) -> Image.Image:
  """Background colour and four rectangles, all read from the digest bytes."""
  image = Image.new("RGB", (size, size), tuple(digest[:3]))
  draw = ImageDraw.Draw(image)
  for k in range(4):
    x0, y0, x1, y1 = (int(b) * size // 256 for b in digest[3 + 7 * k: 7 + 7 * k])
    draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), fill=tuple(digest[7 + 7 * k: 10 + 7 * k]))
  return image


class PlaceholderRenderer:
  """A `TextRenderer` drawing a pattern from sha256(description); not a diffusion model."""

  def __init__(self, size: int = 64):
    self.size = size

  def __call__(self, descriptions: Sequence[str]) -> list[Image.Image]:
    return [_pattern(hashlib.sha256(d.encode("utf-8")).digest(), self.size) for d in descriptions]


class PlaceholderEmbeddingRenderer:
  """An `EmbeddingRenderer` drawing a pattern from a hash of the embeddings
  (rounded to 3 decimals, so float noise below that does not change the
  picture); not a diffusion model."""

  def __init__(self, size: int = 64):
    self.size = size

  def __call__(self, embeds_nld: np.ndarray) -> list[Image.Image]:
    rounded = np.round(np.asarray(embeds_nld, np.float32), 3) + 0.0  # + 0.0 turns -0.0 into 0.0
    return [_pattern(hashlib.sha256(row.tobytes()).digest(), self.size) for row in rounded]


def to_images(pixels_bhwc: np.ndarray) -> list[Image.Image]:
  """Float RGB in [0, 1] (b, h, w, 3), as the SD pipeline decodes it, → one 8-bit PIL image per row."""
  return [Image.fromarray(np.round(p * 255).astype(np.uint8)) for p in pixels_bhwc]


def check_rendered(images: Sequence, expected: int, what: str) -> list[Image.Image]:
  """The renderer's output, checked: a list of `expected` PIL images."""
  images = list(images)
  if len(images) != expected or not all(isinstance(image, Image.Image) for image in images):
    kinds = sorted({type(image).__name__ for image in images})
    raise ValueError(f"the renderer returned {len(images)} objects ({', '.join(kinds) or 'none'}) for {expected} "
                     f"{what}; a renderer must return one PIL.Image per input, in order")
  return images
