"""The generate step's records and where they are: what the export, the
annotation tools, parallel cleaning and the Beam pipeline read.

A record: {"id", "kept", "conversation" (released JSON, when kept),
"reason" and "detail" (when rejected), "text" (the raw reply), "images"
([file, caption, url] in prompt order), "examples" (in-context example ids)},
one JSON line per image tuple in WORK/conversations/round-RRR-shard-SSSSS.jsonl.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from data_gen.outcome import GenerationOutcome
from data_gen.shards import read_jsonl
from data_gen.workdir import WorkDir
from mim_jax.data.conversation import Conversation, conversation_from_json, conversation_to_json
from mim_jax.data.problems import ProblemCounts


def outcome_record(outcome: GenerationOutcome, images: Sequence[tuple[str, str, str]]) -> dict:
  record = {"id": outcome.id, "kept": outcome.kept, "text": outcome.text, "images": [list(i) for i in images],
            "examples": list(outcome.example_ids)}
  if outcome.kept:
    record["conversation"] = conversation_to_json(outcome.result)
  else:
    record["reason"], record["detail"] = outcome.result.reason, outcome.result.detail
  return record


def record_conversation(record: dict) -> Conversation:
  return conversation_from_json(record["conversation"], name=record["id"])


def tally_records(records) -> ProblemCounts:
  tally = ProblemCounts()
  for record in records:
    if record["kept"]:
      tally.kept += 1
    else:
      tally.skip_reason(record["reason"], record["detail"])
  return tally


def conversation_shards(work: WorkDir, round_index: int | None = None) -> list[Path]:
  """Finished shards in generation order (round, then shard)."""
  pattern = "round-*-shard-*.jsonl" if round_index is None else f"round-{round_index:03d}-shard-*.jsonl"
  return sorted(work.conversations.glob(pattern))


def read_generated(work: WorkDir) -> list[dict]:
  return [record for shard in conversation_shards(work) for record in read_jsonl(shard)]
