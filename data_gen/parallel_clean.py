"""Cleaning spread over many workers, equal to one sequential `Cleaner`.

Seven of the eight rules look at one reply alone. Rule 4 (a reply that
repeats an earlier one) is the only one that needs the others, and
clean_generation applies it after rules 1–3 and before rules 5–8: a reply
is fingerprinted once it passes rules 1–3. So:

1. each worker cleans its replies with no memory (`clean_alone`);
2. the replies that passed rules 1–3 are grouped by fingerprint;
3. in each group the first tuple id (the order a sequential run sees them)
   keeps its result and the rest become rule-4 rejections
   (`resolve_duplicates`).

Records are generated.py's (`outcome_record`), so the result can be
written as the same shards a local run writes.
"""
from __future__ import annotations

from data_gen.clean import RULES, clean_generation, response_fingerprint
from data_gen.generated import outcome_record
from data_gen.outcome import GenerationOutcome, Rejection
from mim_jax.data.conversation import Conversation

# The rules clean_generation checks before it fingerprints a reply.
BEFORE_RULE_4 = tuple(RULES)[:3]


def clean_alone(record: dict) -> dict:
  """The record re-cleaned from its reply with no memory of other replies.
  Records without a reply (an LLM failure) are returned as they are."""
  if not record["text"]:
    return record
  return _with_result(record, clean_generation(record["text"], _images(record), name=record["id"]))


def fingerprint_key(record: dict) -> str | None:
  """The rule-4 key of a record cleaned alone, or None when rule 4 never
  sees it (no reply, or rejected by rules 1–3)."""
  if not record["text"] or (not record["kept"] and record["reason"] in BEFORE_RULE_4):
    return None
  return response_fingerprint(record["text"])


def resolve_duplicates(records: list[dict]) -> list[dict]:
  """Records sharing one fingerprint → the first by id as it is, the others
  rejected under rule 4 exactly as a sequential Cleaner rejects them."""
  records = sorted(records, key=lambda record: record["id"])
  first, rest = records[0], records[1:]
  return [first] + [_with_result(r, clean_generation(r["text"], _images(r), name=r["id"],
                                                     seen={response_fingerprint(r["text"])})) for r in rest]


def _images(record: dict) -> list[tuple[str, str, str]]:
  return [tuple(image) for image in record["images"]]


def _with_result(record: dict, result: Conversation | Rejection) -> dict:
  outcome = GenerationOutcome(record["id"], result, record["text"], tuple(record["examples"]))
  return outcome_record(outcome, _images(record))
