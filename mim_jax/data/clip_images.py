"""CLIP image preprocessing with PIL and numpy (no torch).

Equal to transformers' CLIPImageProcessor (PIL backend) with the OpenAI
preprocessor_config: bicubic resize of the uint8 image so that its shortest
side is `size` (the long side int(size * long / short)), center crop to
`size` x `size`, x 1/255, normalise with the OpenAI CLIP mean/std. Output:
float32 (size, size, 3), HWC, the layout ClipVisionTower takes.

Unlike BLIP-2's square resize (`mim_jax.data.images.preprocess_image`) this
keeps the aspect ratio and crops the middle.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from mim_jax.data.images import CLIP_MEAN, CLIP_STD, IMAGE_SIZE, MAX_PIXELS, as_rgb_image, load_image


def resized_shape(width: int, height: int, size: int) -> tuple[int, int]:
  """(width, height) after scaling the shortest side to `size`, truncating the other like HF."""
  if width <= height:
    return size, int(size * height / width)
  return int(size * width / height), size


def preprocess_clip_image(image: Image.Image | np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """PIL image (any mode) or uint8 array (H, W[, 3]) → float32 (size, size, 3)."""
  image = as_rgb_image(image)
  resized = np.asarray(image.resize(resized_shape(*image.size, size), resample=Image.Resampling.BICUBIC))
  height, width = resized.shape[:2]
  top, left = (height - size) // 2, (width - size) // 2
  cropped = resized[top:top + size, left:left + size]
  # float64 then float32, as HF's rescale does, so results match bit for bit.
  pixels_hwc = (cropped.astype(np.float64) * (1 / 255)).astype(np.float32)
  mean, std = np.asarray(CLIP_MEAN, np.float32), np.asarray(CLIP_STD, np.float32)
  return (pixels_hwc - mean) / std


def load_clip_pixels(path: str | os.PathLike, size: int = IMAGE_SIZE, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """`preprocess_clip_image(load_image(path))`; errors as `mim_jax.data.images.load_image`."""
  return preprocess_clip_image(load_image(path, max_pixels=max_pixels), size)
