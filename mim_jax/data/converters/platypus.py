"""Open-Platypus (garage-bAInd/Open-Platypus) → text-only single-turn conversations.

Input: the dataset's parquet file (as published on the Hugging Face Hub), or
the same rows as JSON/JSONL: `{"instruction": …, "input": …, "output": …,
"data_source": …}`. The user turn is the instruction, followed by a blank
line and the input where the input is not empty; the assistant turn is the
output. `data_source` is kept in the record id (`data_source/row`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from mim_jax.data import schema
from mim_jax.data.conversation import ConversationError
from mim_jax.data.converters.common import convert_each, field, read_json_items, single_turn
from mim_jax.data.problems import ProblemCounts


def _rows(input: Path) -> Iterator:
  if input.suffix != ".parquet":
    return read_json_items(input)
  if not input.is_file():
    raise FileNotFoundError(f"input file {input} not found")
  import pyarrow.parquet  # only parquet input needs it (a tensorflow-datasets dependency)

  return iter(pyarrow.parquet.read_table(input).to_pylist())


def records(input: Path, images: Path | None, counts: ProblemCounts, source: str,
            workers: int = 1) -> Iterator[dict]:
  del images  # text only

  def to_record(index: int, item) -> dict:
    where = f"{input.name}[{index}]"
    instruction = field(item, "instruction", str, where).strip()
    extra_input = item.get("input") or ""
    if not isinstance(extra_input, str):
      raise ConversationError("malformed", f"{where}: field 'input' is {type(extra_input).__name__}, expected str")
    if extra_input.strip():
      instruction = f"{instruction}\n\n{extra_input.strip()}"
    conversation = single_turn(instruction, field(item, "output", str, where).strip(), where)
    record_id = f"{item.get('data_source') or input.stem}/{index}"
    return schema.conversation_record(conversation, {}, id=record_id, source=source)

  return convert_each(_rows(input), to_record, counts, workers)
