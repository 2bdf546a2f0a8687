"""What a batch job kept and skipped, by reason: the one counter type of
mim_jax.data's readers and converters and of every data_gen step.

Batch jobs never stop for a bad record: they count it here under a short
reason key (`malformed`, `missing_image`, `http_404`, …) with the first
message of each reason, so a report can show an example, and go on. Counts
of one shard or split add into the job's total with `add`.
"""
from __future__ import annotations

import dataclasses
from collections import Counter


@dataclasses.dataclass
class ProblemCounts:
  """`kept` records, `skipped` ones by reason (with `first_message` of each
  reason), and `notes`: things counted that dropped nothing (a header line,
  a truncated conversation)."""

  kept: int = 0
  skipped: Counter = dataclasses.field(default_factory=Counter)
  notes: Counter = dataclasses.field(default_factory=Counter)
  first_message: dict = dataclasses.field(default_factory=dict)

  def skip(self, error: Exception) -> None:
    """Counts an error that carries its reason key as `.reason`
    (mim_jax.data.conversation.ConversationError, data_gen.report.Skip)."""
    self.skip_reason(error.reason, str(error))

  def skip_reason(self, reason: str, message: str) -> None:
    self.skipped[reason] += 1
    self.first_message.setdefault(reason, message)

  def add(self, other: "ProblemCounts") -> "ProblemCounts":
    self.kept += other.kept
    self.skipped.update(other.skipped)
    self.notes.update(other.notes)
    for reason, message in other.first_message.items():
      self.first_message.setdefault(reason, message)
    return self

  @property
  def total(self) -> int:
    return self.kept + sum(self.skipped.values())

  def summary(self) -> str:
    lines = [f"kept {self.kept}, skipped {sum(self.skipped.values())}"]
    lines += [f"  skipped {count} × {reason}: e.g. {self.first_message[reason]}"
              for reason, count in self.skipped.most_common()]
    lines += [f"  note {count} × {reason}" for reason, count in self.notes.most_common()]
    return "\n".join(lines)

  def to_json(self) -> dict:
    # "example" is the key data_gen's shard tally files have always used; notes
    # are written only when there are some, so those files read as before.
    record = {"kept": self.kept, "skipped": dict(self.skipped), "example": self.first_message}
    if self.notes:
      record["notes"] = dict(self.notes)
    return record

  @classmethod
  def from_json(cls, record: dict) -> "ProblemCounts":
    return cls(record["kept"], Counter(record["skipped"]), Counter(record.get("notes", {})),
               dict(record["example"]))
