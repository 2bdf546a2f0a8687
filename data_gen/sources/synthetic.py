"""A bundled offline source: simple drawn scenes whose captions are true.

Pair i is drawn from its own generator seeded by (seed, i), so any pair can be
rebuilt alone and a run is the same on every machine. Scenes are one or two
filled shapes on a coloured background, at a few aspect ratios so the resize
and padding are exercised; the caption names exactly what was drawn.
"""
from __future__ import annotations

import io
import random
from typing import Iterator

from PIL import Image, ImageDraw

from data_gen.sources.pairs import RawPair

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
          "purple": (140, 60, 180), "orange": (245, 140, 30), "black": (20, 20, 20)}
BACKGROUNDS = {"white": (250, 250, 250), "gray": (150, 150, 150), "light blue": (190, 220, 245)}
SHAPES = ("circle", "square", "triangle")
SIZES = ((96, 96), (128, 80), (80, 120))


def synthetic_source(count: int, *, seed: int = 10086) -> Iterator[RawPair]:
  for index in range(count):
    caption, png = synthetic_pair(index, seed=seed)
    yield RawPair(index, caption, f"synthetic:{seed}/{index}", data=png)


def synthetic_pair(index: int, *, seed: int = 10086) -> tuple[str, bytes]:
  rng = random.Random(f"{seed}/{index}")
  width, height = rng.choice(SIZES)
  background = rng.choice(sorted(BACKGROUNDS))
  image = Image.new("RGB", (width, height), BACKGROUNDS[background])
  draw = ImageDraw.Draw(image)
  count = rng.choice((1, 2))
  names = []
  for slot in range(count):
    color, shape = rng.choice(sorted(COLORS)), rng.choice(SHAPES)
    # Two shapes sit side by side so neither hides the other.
    left = slot * width // count
    box = (left + 6, 6, left + width // count - 6, height - 6)
    _draw(draw, shape, box, COLORS[color])
    names.append(f"a {color} {shape}")
  scene = " and ".join(names)
  caption = f"{scene} on a {background} background"
  out = io.BytesIO()
  image.save(out, "PNG")
  return caption, out.getvalue()


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
  left, top, right, bottom = box
  side = min(right - left, bottom - top)
  center_x, center_y = (left + right) // 2, (top + bottom) // 2
  square = (center_x - side // 2, center_y - side // 2, center_x + side // 2, center_y + side // 2)
  if shape == "circle":
    draw.ellipse(square, fill=fill)
  elif shape == "square":
    draw.rectangle(square, fill=fill)
  else:
    draw.polygon([(center_x, square[1]), (square[2], square[3]), (square[0], square[3])], fill=fill)
