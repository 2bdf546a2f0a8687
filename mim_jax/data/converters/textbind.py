"""TextBind's released conversations (spec §1) → conversation records.

Input: the released JSON list (or JSONL) of `{"conversation": [turn, …]}`,
with the files of every `image_list` under --images (default: beside the
JSON). Each record is parsed and checked by conversation.conversation_from_json
and stored unchanged, unknown keys included.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from mim_jax.data import schema
from mim_jax.data.conversation import conversation_from_json
from mim_jax.data.converters.common import ImageFolder, convert_each, read_json_items
from mim_jax.data.problems import ProblemCounts


def records(input: Path, images: Path | None, counts: ProblemCounts, source: str,
            workers: int = 1) -> Iterator[dict]:
  folder = ImageFolder(images or input.parent)

  def to_record(index: int, item) -> dict:
    conversation = conversation_from_json(item, name=f"{input.name}[{index}]")
    images = {name: folder.read(name)[0] for name in dict.fromkeys(conversation.images)}
    record_id = str(conversation.extra.get("id", f"{input.stem}-{index}"))
    return schema.conversation_record(conversation, images, id=record_id, source=source)

  return convert_each(read_json_items(input), to_record, counts, workers)
