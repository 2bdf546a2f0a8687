"""LLaVA-Instruct-150K (and the LLaVA-1.5 mix, same layout) → conversations.

Input: a JSON list (or JSONL) of
`{"id": …, "image": "000000033471.jpg", "conversations": [{"from": "human"|"gpt", "value": "<image>\\n…"}, …]}`;
`image` is relative to --images (COCO train2017 for LLaVA-Instruct) and may be
absent (text-only records). Each turn's text is kept as written; the single
image is listed on the turn whose text holds `<image>`. A record whose image
has no `<image>` in its text, or more than one, is skipped (`image_count`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from mim_jax.data import schema
from mim_jax.data.conversation import IMAGE_PLACEHOLDER, Conversation, ConversationError, Turn
from mim_jax.data.converters.common import ImageFolder, convert_each, field, read_json_items
from mim_jax.data.problems import ProblemCounts

ROLES = {"human": "user", "gpt": "assistant"}


def records(input: Path, images: Path | None, counts: ProblemCounts, source: str,
            workers: int = 1) -> Iterator[dict]:
  folder = ImageFolder(images or input.parent)

  def to_record(index: int, item) -> dict:
    where = f"{input.name}[{index}]"
    raw_turns = field(item, "conversations", list, where)
    image = item.get("image")
    if image is not None and not isinstance(image, str):
      raise ConversationError("malformed", f"{where}: 'image' is {type(image).__name__}, expected a file name")
    turns = []
    for number, raw in enumerate(raw_turns):
      role = ROLES.get(field(raw, "from", str, f"{where} turn {number}"))
      if role is None:
        raise ConversationError("bad_role", f"{where} turn {number}: 'from' is {raw['from']!r}, expected one of "
                                            f"{sorted(ROLES)}")
      text = field(raw, "value", str, f"{where} turn {number}")
      turns.append(Turn(role, text, image_list=(image,) if image and IMAGE_PLACEHOLDER in text else ()))
    conversation = Conversation(turns, name=where)
    placed = len(conversation.images)
    if image and placed != 1:
      raise ConversationError("image_count", f"{where}: names image {image!r} but {placed} turns hold "
                                             f"{IMAGE_PLACEHOLDER}; LLaVA records put it in exactly one turn")
    image_bytes = {image: folder.read(image)[0]} if image else {}
    return schema.conversation_record(conversation, image_bytes, id=str(item.get("id", f"{input.stem}-{index}")),
                                      source=source)

  return convert_each(read_json_items(input), to_record, counts, workers)
