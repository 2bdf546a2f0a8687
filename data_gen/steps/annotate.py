"""Human-in-the-loop rating (spec §1 step 4): export conversations to a CSV
for annotators, import the filled CSV into the next few-shot pool version.

    export_for_rating(items, path) -> int      # items: (id, Conversation) pairs
    import_ratings(csv_path, pool) -> ImportReport   # report.pool is version pool.version + 1
    rating_statistics(pool) -> str

CSV columns: id, rating, crop_start, crop_end, categories, conversation.
- rating: "very good" or 2 → 2; "good" or 1 → 1; anything else typed → 0
  (kept in the pool for the record, never used as an example); blank →
  not rated yet, the row is skipped and counted.
- crop_start / crop_end: optional 1-based turn numbers, both inclusive; the
  example keeps only those turns. It must still start with a Human turn.
- categories: separated by ";" or ","; required for ratings 1 and 2.
- conversation: the dialogue in the generator's format (`Human:` /
  `Assistant:` lines, `<imgX> caption </imgX>`), as exported. An annotator
  may fix a typo in it; the result must still pass the cleaning rules.

A bad row never stops the import: it is counted by reason, with its record
number and id in the first message of each reason, and the rest goes on.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

from data_gen.clean import clean_generation
from data_gen.dialogue import HUMAN, join_turns, render_conversation, renumber_images, split_turns
from data_gen.fewshot import Example, Pool, PoolError
from data_gen.outcome import Rejection
from mim_jax.data.conversation import Conversation

CSV_FIELDS = ("id", "rating", "crop_start", "crop_end", "categories", "conversation")
RATING_WORDS = {"very good": 2, "2": 2, "good": 1, "1": 1}


def export_for_rating(items: Iterable[tuple[str, Conversation]], path: str | os.PathLike) -> int:
  """Writes one unrated row per conversation; returns the number of rows."""
  rows = 0
  with open(path, "w", newline="", encoding="utf-8") as handle:
    writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for example_id, conversation in items:
      dialogue, _ = render_conversation(conversation)
      writer.writerow({"id": example_id, "rating": "", "crop_start": "", "crop_end": "", "categories": "",
                       "conversation": dialogue})
      rows += 1
  return rows


class RowError(ValueError):

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


@dataclasses.dataclass
class ImportReport:
  pool: Pool
  added: Counter = dataclasses.field(default_factory=Counter)  # by rating
  skipped: Counter = dataclasses.field(default_factory=Counter)  # by reason
  first_message: dict = dataclasses.field(default_factory=dict)

  def summary(self) -> str:
    lines = [f"pool v{self.pool.version}: added {sum(self.added.values())} examples "
             f"({', '.join(f'rating {r}: {n}' for r, n in sorted(self.added.items())) or 'none'}), "
             f"skipped {sum(self.skipped.values())} rows"]
    lines += [f"  skipped {n} × {reason}: e.g. {self.first_message[reason]}"
              for reason, n in self.skipped.most_common()]
    return "\n".join(lines)


def import_ratings(csv_path: str | os.PathLike, pool: Pool) -> ImportReport:
  """The rated rows of `csv_path` added to `pool` as version pool.version + 1
  (save it with fewshot.save_pool)."""
  csv_path = Path(csv_path)
  known_ids = {e.id for e in pool.examples}
  examples, report = [], ImportReport(pool)
  # utf-8-sig: spreadsheet programs often save the CSV with a byte-order mark.
  with csv_path.open(newline="", encoding="utf-8-sig") as handle:
    reader = csv.DictReader(handle)
    missing = [f for f in CSV_FIELDS if f not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f"{csv_path}: missing columns {missing}; a rating CSV has the columns {list(CSV_FIELDS)} "
                       f"(write one with export_for_rating)")
    # Rows are counted as records, not lines: a conversation cell spans several lines.
    for number, row in enumerate(reader, 1):
      where = f"{csv_path.name} record {number} (id {(row.get('id') or '').strip()!r})"
      try:
        example = _example_from_row(row, where, known_ids)
      except RowError as error:
        report.skipped[error.reason] += 1
        report.first_message.setdefault(error.reason, str(error))
        continue
      known_ids.add(example.id)
      examples.append(example)
      report.added[example.rating] += 1
  report.pool = Pool(pool.version + 1, pool.examples + tuple(examples))
  return report


def _example_from_row(row: dict, where: str, known_ids: set[str]) -> Example:
  example_id = (row["id"] or "").strip()
  if not example_id:
    raise RowError("missing_id", f"{where}: the id is empty")
  if example_id in known_ids:
    raise RowError("duplicate_id", f"{where}: id {example_id!r} is already in the pool or earlier in the file")
  rating_text = (row["rating"] or "").strip().lower()
  if not rating_text:
    raise RowError("unrated", f"{where}: no rating yet")
  # Spreadsheets may turn 2 into "2.0".
  rating = RATING_WORDS.get(rating_text.removesuffix(".0"), 0)
  categories = tuple(c.strip().lower() for c in re.split(r"[;,]", row["categories"] or "") if c.strip())
  if rating > 0 and not categories:
    raise RowError("no_categories", f"{where}: rated {rating} but no categories; give at least one, e.g. 'travel'")
  turns = split_turns(row["conversation"] or "")
  start = _turn_number(row["crop_start"], 1, where)
  end = _turn_number(row["crop_end"], len(turns), where)
  if not 1 <= start <= end <= len(turns):
    raise RowError("bad_crop", f"{where}: crop {start}–{end} does not fit its {len(turns)} turns "
                   f"(1-based, inclusive, start ≤ end)")
  kept = turns[start - 1:end]
  if kept[0].marker != HUMAN:
    raise RowError("bad_crop", f"{where}: the crop starts at turn {start}, an {kept[0].marker or 'unmarked'} turn; "
                   f"start at a Human turn")
  dialogue, captions = renumber_images(join_turns(kept))
  images = [(f"image{i}", caption, "") for i, caption in enumerate(captions)]
  cleaned = clean_generation(dialogue, images, name=where)
  if isinstance(cleaned, Rejection):
    raise RowError("invalid_dialogue", f"{cleaned.detail} (cleaning rule {cleaned.reason})")
  return Example(example_id, rating, categories, tuple(captions), dialogue)


def _turn_number(text: str | None, default: int, where: str) -> int:
  text = (text or "").strip()
  if not text:
    return default
  if not text.isdigit():
    raise RowError("bad_crop", f"{where}: crop value {text!r} is not a turn number")
  return int(text)


def rating_statistics(pool: Pool) -> str:
  lines = [f"few-shot pool v{pool.version}: {len(pool.examples)} examples"]
  for rating, label in ((2, "very good"), (1, "good"), (0, "other")):
    examples = pool.rated(rating)
    categories = Counter(c for e in examples for c in e.categories)
    spread = ", ".join(f"{c} {n}" for c, n in sorted(categories.items()))
    lines.append(f"  rating {rating} ({label}): {len(examples)}" + (f" — {spread}" if spread else ""))
  try:
    pool.check_selectable()
    lines.append("  usable: yes (two rated-2 and one rated-1 from three categories)")
  except PoolError as error:
    lines.append(f"  usable: no — {error}")
  return "\n".join(lines)
