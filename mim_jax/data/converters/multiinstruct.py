"""MultiInstruct (VT-NLP/MultiInstruct `train.jsonl`) → single-turn conversations.

Assumed fields, as its build_dataset.py writes them: `unique_id`, `task_name`,
`image_path` (relative to the MultiInstruct checkout, e.g.
`./raw_datasets/MSCOCO2014/train2014/COCO_train2014_000000005277.jpg`; --images
is that checkout's root), `prompt` (the instruction already filled with the
task's inputs and `[Options]: a||||b`) and `target` (the answer; `target_txt`
where `target` is missing). The prompt and target are kept verbatim, options
separator included; the image goes first, on its own line. Task-specific
fields (`region`, `options`, `meta_data`, …) are already inside the prompt
text and are not read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from mim_jax.data import schema
from mim_jax.data.converters.common import ImageFolder, convert_each, field, read_json_items, single_turn
from mim_jax.data.problems import ProblemCounts


def records(input: Path, images: Path | None, counts: ProblemCounts, source: str,
            workers: int = 1) -> Iterator[dict]:
  folder = ImageFolder(images or input.parent)

  def to_record(index: int, item) -> dict:
    where = f"{input.name}[{index}]"
    # "./a/b.jpg" and "a/b.jpg" both occur; one name per file keeps images shared.
    image = field(item, "image_path", str, where).removeprefix("./")
    prompt = field(item, "prompt", str, where).strip()
    answer = field(item, "target" if "target" in item else "target_txt", str, where).strip()
    conversation = single_turn(prompt, answer, where, image=image)
    record_id = f"{item.get('task_name', 'task')}/{item.get('unique_id', index)}"
    return schema.conversation_record(conversation, {image: folder.read(image)[0]}, id=record_id, source=source)

  return convert_each(read_json_items(input), to_record, counts, workers)
