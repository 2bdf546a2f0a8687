"""Small encoded images and a TFDS split read back as numpy, undecoded."""
from __future__ import annotations

import io

import tensorflow_datasets as tfds
from PIL import Image


def encoded_image(fmt: str = "PNG", color: str = "red", size: tuple[int, int] = (8, 6)) -> bytes:
  buffer = io.BytesIO()
  Image.new("RGB", size, color).save(buffer, fmt)
  return buffer.getvalue()


def read_split(path, split: str) -> list[dict]:
  """Every example of `split` in file order, images left as their stored bytes."""
  builder = tfds.builder_from_directory(path)
  image_key = "images" if "images" in builder.info.features else "image"
  dataset = builder.as_dataset(split=split, shuffle_files=False,
                               decoders={image_key: tfds.decode.SkipDecoding()})
  return list(tfds.as_numpy(dataset))
