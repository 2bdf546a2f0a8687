"""What a step kept and skipped, by reason, as one table at the end of the step.

Batch steps never stop for a bad record: they raise `Skip` (a reason key and
a message naming the record) where the record fails, catch it at the record
loop and count it in a mim_jax.data.problems.ProblemCounts (per shard, summed
per step), which `summary_table` prints.
"""
from __future__ import annotations

from mim_jax.data.problems import ProblemCounts


class Skip(Exception):
  """A record the step cannot use; `reason` is the short key it is counted under."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


def summary_table(step: str, counts: ProblemCounts, *, kept_label: str = "kept", notes: dict | None = None) -> str:
  """A fixed-width table: kept, then each skip reason (most frequent first)
  with one example message, then the counts' own notes, then the step's
  free-form notes (shards skipped as done, …)."""
  rows = [(kept_label, counts.kept, "")]
  rows += [(f"skipped: {reason}", count, counts.first_message.get(reason, ""))
           for reason, count in sorted(counts.skipped.items(), key=lambda item: (-item[1], item[0]))]
  rows += [(f"note: {reason}", count, "") for reason, count in sorted(counts.notes.items())]
  rows += [(name, value, "") for name, value in (notes or {}).items()]
  width = max(len(name) for name, _, _ in rows)
  lines = [f"== {step}: {counts.total} records =="]
  for name, count, example in rows:
    example = f"  e.g. {_shorten(example)}" if example else ""
    lines.append(f"  {name:<{width}}  {count:>8}{example}")
  return "\n".join(lines)


def _shorten(text: str, limit: int = 100) -> str:
  text = " ".join(text.split())
  return text if len(text) <= limit else text[:limit - 1] + "…"
