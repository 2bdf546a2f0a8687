r"""A small synthetic dataset in the training formats, for smoke runs and tests.

  python -m mim_jax.data.synthetic --out /tmp/mim_jax_data

writes two TFDS datasets under --out: `synthetic_captions` (stage 1:
image–caption pairs) and `synthetic_conversations` (stage 2: TextBind-style
conversations with images in user and assistant turns). Images are drawn
shapes whose captions are true ("a red circle on a white background"), so a
tiny model can learn something real from them. It is not a substitute for
data: real runs use data_gen's output or the converted public sets.
"""
from __future__ import annotations

import argparse
import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

from mim_jax.data import schema
from mim_jax.data.conversation import Conversation, Turn
from mim_jax.data.tfds_writer import write_dataset

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
          "purple": (140, 60, 180)}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = {"white": (255, 255, 255), "black": (10, 10, 10)}


def draw(color: str, shape: str, background: str, size: int = 64) -> bytes:
  image = Image.new("RGB", (size, size), BACKGROUNDS[background])
  pen = ImageDraw.Draw(image)
  box = (size // 5, size // 5, size * 4 // 5, size * 4 // 5)
  if shape == "circle":
    pen.ellipse(box, fill=COLORS[color])
  elif shape == "square":
    pen.rectangle(box, fill=COLORS[color])
  else:
    pen.polygon([(size // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=COLORS[color])
  buffer = io.BytesIO()
  image.save(buffer, "PNG")
  return buffer.getvalue()


def _picture(rng: random.Random, size: int) -> tuple[str, str, bytes]:
  color, shape, background = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(BACKGROUNDS))
  caption = f"a {color} {shape} on a {background} background"
  return f"{color}_{shape}_{background}.png", caption, draw(color, shape, background, size)


def caption_records(count: int, seed: int, image_size: int = 64):
  rng = random.Random(seed)
  for index in range(count):
    _, caption, data = _picture(rng, image_size)
    yield {"id": f"caption-{index}", "source": "synthetic", "caption": caption, "image": data}


def conversation_records(count: int, seed: int, image_size: int = 64):
  """Two to four turns: the user shows a picture and asks about it, then asks
  the assistant to show one, which it does (an assistant image with its caption)."""
  rng = random.Random(seed)
  for index in range(count):
    (shown, shown_caption, shown_data), (made, made_caption, made_data) = (_picture(rng, image_size),
                                                                           _picture(rng, image_size))
    if made == shown:
      made = f"other_{made}"
    turns = [Turn("user", "What is in this picture? <image>", image_list=(shown,)),
             Turn("assistant", f"It shows {shown_caption}.")]
    if rng.random() < 0.7:
      turns += [Turn("user", f"Now show me {made_caption}."),
                Turn("assistant", f"Here it is: <image> It is {made_caption}.", image_list=(made,),
                     caption_list=(made_caption,))]
    conversation = Conversation(tuple(turns), name=f"conversation-{index}")
    yield schema.conversation_record(conversation, {shown: shown_data, made: made_data}, id=f"conversation-{index}",
                                     source="synthetic")


def write_synthetic(out: str | Path, *, captions: int = 256, conversations: int = 256, seed: int = 0,
                    image_size: int = 64) -> dict:
  """Writes both datasets (train split; a few valid examples too) and returns their paths.
  `image_size` 512 makes images the size data_gen writes (what the input pipeline decodes in real runs)."""
  out = Path(out)
  return {
      "captions": write_dataset(out, "synthetic_captions", "caption",
                                {"train": caption_records(captions, seed, image_size),
                                 "valid": caption_records(8, seed + 1, image_size)},
                                num_shards=4, overwrite=True, progress=False),
      "conversations": write_dataset(out, "synthetic_conversations", "conversation",
                                     {"train": conversation_records(conversations, seed, image_size),
                                      "valid": conversation_records(8, seed + 1, image_size)},
                                     num_shards=4, overwrite=True, progress=False),
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--out", required=True, help="data directory to write the two datasets into")
  parser.add_argument("--captions", type=int, default=256)
  parser.add_argument("--conversations", type=int, default=256)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--image-size", type=int, default=64, help="side of the drawn images (data_gen writes 512)")
  args = parser.parse_args(argv)
  for name, path in write_synthetic(args.out, captions=args.captions, conversations=args.conversations,
                                    seed=args.seed, image_size=args.image_size).items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  main()
