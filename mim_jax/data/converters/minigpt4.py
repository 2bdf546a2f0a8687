"""MiniGPT-4's stage-2 alignment set (cc_sbu_align) → single-turn conversations.

Input: `filter_cap.json` = `{"annotations": [{"image_id": "2", "caption": "…"}, …]}`
with the images in `image/{image_id}.jpg` beside it (the default for --images).
The captions are long, detailed descriptions, so the instruction asks for a
detailed description (stage 1's short-caption instructions would contradict
the answer). Wording is ours. Like stage 1 (instructions.py) the image goes
before or after the instruction at random; both draws are seeded by the image
id, so a re-run writes the same text whatever the record order.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterator

from mim_jax.data import schema
from mim_jax.data.conversation import IMAGE_PLACEHOLDER, Conversation, ConversationError, Turn
from mim_jax.data.converters.common import ImageFolder, convert_each, field
from mim_jax.data.problems import ProblemCounts

DETAIL_INSTRUCTIONS = (
    "Describe this image in detail.",
    "Give a thorough description of this picture.",
    "What do you see in this image? Describe it carefully.",
    "Look closely at this photo and tell me everything you notice.",
    "Write a detailed paragraph about the contents of this image.",
    "Explain in detail what is happening in this picture.",
    "Describe the scene in this image, including the small details.",
    "Provide a comprehensive description of this photo.",
)
SEED = "minigpt4"


def records(input: Path, images: Path | None, counts: ProblemCounts, source: str,
            workers: int = 1) -> Iterator[dict]:
  folder = ImageFolder(images or input.parent / "image")
  if not input.is_file():
    raise FileNotFoundError(f"input file {input} not found (expected cc_sbu_align's filter_cap.json)")
  try:
    annotations = json.loads(input.read_text(encoding="utf-8"))["annotations"]
  except (json.JSONDecodeError, KeyError, TypeError) as error:
    raise ValueError(f"{input}: expected MiniGPT-4's {{'annotations': [...]}} JSON ({error!r})") from None
  if not isinstance(annotations, list):
    raise ValueError(f"{input}: 'annotations' is {type(annotations).__name__}, expected a list")

  def to_record(index: int, item) -> dict:
    where = f"{input.name}[{index}]"
    image_id = field(item, "image_id", (str, int), where)
    caption = field(item, "caption", str, where).strip()
    if not caption:
      raise ConversationError("empty_text", f"{where}: empty caption")
    image = f"{image_id}.jpg"
    rng = random.Random(f"{SEED}-{image_id}")
    instruction = rng.choice(DETAIL_INSTRUCTIONS)
    content = f"{IMAGE_PLACEHOLDER} {instruction}" if rng.random() < 0.5 else f"{instruction} {IMAGE_PLACEHOLDER}"
    conversation = Conversation((Turn("user", content, image_list=(image,)), Turn("assistant", caption)), name=where)
    return schema.conversation_record(conversation, {image: folder.read(image)[0]}, id=str(image_id), source=source)

  return convert_each(annotations, to_record, counts, workers)
