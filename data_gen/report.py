"""What a step kept and skipped, by reason: counted per shard, summed per step,
printed as one table at the end.

Batch steps never stop for a bad record: they raise `Skip` (a reason key and
a message naming the record) where the record fails, catch it at the record
loop, and count it here.
"""
from __future__ import annotations

import dataclasses
from collections import Counter


class Skip(Exception):
  """A record the step cannot use; `reason` is the short key it is counted under."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


@dataclasses.dataclass
class Tally:
  kept: int = 0
  skipped: Counter = dataclasses.field(default_factory=Counter)
  example: dict = dataclasses.field(default_factory=dict)

  def skip(self, reason: str, message: str) -> None:
    self.skipped[reason] += 1
    self.example.setdefault(reason, message)

  def add(self, other: "Tally") -> "Tally":
    self.kept += other.kept
    self.skipped.update(other.skipped)
    for reason, message in other.example.items():
      self.example.setdefault(reason, message)
    return self

  @property
  def total(self) -> int:
    return self.kept + sum(self.skipped.values())

  def to_json(self) -> dict:
    return {"kept": self.kept, "skipped": dict(self.skipped), "example": self.example}

  @classmethod
  def from_json(cls, record: dict) -> "Tally":
    return cls(record["kept"], Counter(record["skipped"]), dict(record["example"]))


def summary_table(step: str, tally: Tally, *, kept_label: str = "kept", notes: dict | None = None) -> str:
  """A fixed-width table: kept, then each skip reason (most frequent first)
  with one example message, then free-form notes (shards skipped as done, …)."""
  rows = [(kept_label, tally.kept, "")]
  rows += [(f"skipped: {reason}", count, tally.example.get(reason, ""))
           for reason, count in sorted(tally.skipped.items(), key=lambda item: (-item[1], item[0]))]
  rows += [(name, value, "") for name, value in (notes or {}).items()]
  width = max(len(name) for name, _, _ in rows)
  lines = [f"== {step}: {tally.total} records =="]
  for name, count, example in rows:
    example = f"  e.g. {_shorten(example)}" if example else ""
    lines.append(f"  {name:<{width}}  {count:>8}{example}")
  return "\n".join(lines)


def _shorten(text: str, limit: int = 100) -> str:
  text = " ".join(text.split())
  return text if len(text) <= limit else text[:limit - 1] + "…"
