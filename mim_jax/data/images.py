"""BLIP-2 image preprocessing with PIL and numpy (no torch).

Equal to transformers' BlipImageProcessor (PIL backend) under BLIP-2's
preprocessor_config: bicubic resize of the uint8 image to a 224x224 square
(not aspect preserving, no crop), x 1/255, normalise with the OpenAI CLIP
mean/std. Output: float32 (224, 224, 3), HWC, the layout EvaViT takes.

RGB conversion is PIL's `convert("RGB")`, which is what TextBind does before
calling the processor: alpha is dropped, not composited onto white (HF's
processor, handed an RGBA image itself, would composite onto white).
"""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# PIL's own decompression-bomb threshold (~9459 x 9459); a header claiming more is refused before decoding.
MAX_PIXELS = 89_478_485


class BadImageError(ValueError):
  """An image file that exists but cannot be used (corrupt, truncated, too large)."""


def load_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
  """Decodes an image file fully into an RGB PIL image.

  Raises FileNotFoundError for a missing path and BadImageError, naming the
  file, for anything that does not decode or whose size exceeds `max_pixels`.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"image {path} does not exist or is not a file")
  return _decode(path, str(path), max_pixels)


def decode_image(data: bytes, name: str, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
  """`load_image` for encoded bytes (a dataset record); `name` is how errors refer to it."""
  return _decode(io.BytesIO(data), name, max_pixels)


def _decode(source, name: str, max_pixels: int) -> Image.Image:
  try:
    with Image.open(source) as image:
      width, height = image.size
      if width * height > max_pixels:
        raise BadImageError(
            f"image {name} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
            "(a decompression bomb guard); shrink it or pass a larger max_pixels"
        )
      # Decode now: a truncated file otherwise fails later, far from its name.
      image.load()
      return image.convert("RGB")
  except BadImageError:
    raise
  except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as e:
    raise BadImageError(
        f"image {name} cannot be decoded ({type(e).__name__}: {e}); re-download it or drop it from the data"
    ) from e


def as_rgb_image(image: Image.Image | np.ndarray) -> Image.Image:
  """PIL image (any mode) or uint8 array (H, W[, 3]) → an RGB PIL image."""
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
      raise ValueError(f"expected a uint8 (H, W) or (H, W, 3) array, got {image.dtype} {image.shape}")
    image = Image.fromarray(image)
  return image if image.mode == "RGB" else image.convert("RGB")


def resize_image(image: Image.Image | np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """PIL image (any mode) or uint8 array (H, W[, 3]) → uint8 (size, size, 3): the
  part of preprocessing that runs on the host (the input pipeline ships these)."""
  return np.asarray(as_rgb_image(image).resize((size, size), resample=Image.Resampling.BICUBIC), np.uint8)


def pixel_table() -> np.ndarray:
  """(256, 3) float32: the normalised value of each uint8 level per channel.
  float64 then float32, as HF's rescale does, so results match bit for bit;
  as a table, the device can normalise by lookup and stay exact."""
  levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)[:, None]
  return (levels - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


def normalize_pixels(pixels_hwc: np.ndarray) -> np.ndarray:
  """uint8 (…, H, W, 3) → float32 normalised with the CLIP mean/std. The train
  step does the same lookup on device (train/loss.py)."""
  return pixel_table()[pixels_hwc.astype(np.int32), np.arange(3)]


def preprocess_image(image: Image.Image | np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """PIL image (any mode) or uint8 array (H, W[, 3]) → float32 (size, size, 3)."""
  return normalize_pixels(resize_image(image, size))


def load_pixels(path: str | os.PathLike, size: int = IMAGE_SIZE, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """`preprocess_image(load_image(path))`."""
  return preprocess_image(load_image(path, max_pixels=max_pixels), size)
