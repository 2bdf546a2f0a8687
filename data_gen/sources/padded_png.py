"""Encoded image bytes → the dataset's image: aspect-preserving resize, white
padding to 512×512, PNG (spec §1 step 3).

Every failure raises `Skip` with a reason a run counts: zero_byte,
not_an_image, decompression_bomb, corrupt_image. The pixel count is checked
from the header before anything is decoded, so a 30000×30000 file costs
nothing.
"""
from __future__ import annotations

import io
import struct

from PIL import Image

from data_gen.report import Skip
from mim_jax.data.images import MAX_PIXELS

SIZE = 512
WHITE = (255, 255, 255)


def padded_png(data: bytes, *, name: str, size: int = SIZE, max_pixels: int = MAX_PIXELS) -> bytes:
  """`name` says which record the bytes belong to in error messages."""
  if not data:
    raise Skip("zero_byte", f"{name}: the image file is empty (0 bytes)")
  try:
    with Image.open(io.BytesIO(data)) as image:
      width, height = image.size
      if width * height > max_pixels:
        raise Skip("decompression_bomb",
                   f"{name}: header claims {width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
      image.load()
      rgb = _on_white(image)
  except Skip:
    raise
  except Image.DecompressionBombError as error:
    raise Skip("decompression_bomb", f"{name}: {error}") from None
  except Image.UnidentifiedImageError:
    raise Skip("not_an_image", f"{name}: {len(data)} bytes that PIL recognises as no image format") from None
  except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
    raise Skip("corrupt_image", f"{name}: cannot be decoded ({type(error).__name__}: {error})") from None
  scale = size / max(rgb.size)
  fitted = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
  canvas = Image.new("RGB", (size, size), WHITE)
  canvas.paste(rgb.resize(fitted, Image.Resampling.BICUBIC), ((size - fitted[0]) // 2, (size - fitted[1]) // 2))
  out = io.BytesIO()
  canvas.save(out, "PNG")
  return out.getvalue()


def _on_white(image: Image.Image) -> Image.Image:
  """Transparent pixels become white, like the padding around them, rather
  than the black that a plain RGB conversion leaves."""
  if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")
  return image.convert("RGB")
