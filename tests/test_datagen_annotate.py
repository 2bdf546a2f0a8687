"""Export for rating → filled CSV → the next few-shot pool version."""
import csv

import pytest

from data_gen.dialogue import split_turns
from data_gen.fewshot import load_pool, save_pool
from data_gen.generation import generate_conversations
from data_gen.llm.backends import make_client
from data_gen.steps.annotate import CSV_FIELDS, export_for_rating, import_ratings, rating_statistics

CAPTIONS = ("a lighthouse on a rocky coast", "a bowl of clam chowder", "fishing boats in a small harbour")


def _exported(tmp_path, count=8):
  tuples = [(f"g{i}", [(f"{i}{j}.png", f"{CAPTIONS[j]} {i}", "") for j in range(3)]) for i in range(count)]
  outcomes = generate_conversations(tuples, load_pool(), make_client({"backend": "template"}), seed=0)
  path = tmp_path / "batch.csv"
  assert export_for_rating(((o.id, o.result) for o in outcomes.values()), path) == count
  with path.open(newline="") as handle:
    return path, list(csv.DictReader(handle))


def _write(path, rows):
  with path.open("w", newline="", encoding="utf-8-sig") as handle:  # with a BOM, as spreadsheets save
    writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)


def test_export_import_round_trip(tmp_path):
  path, rows = _exported(tmp_path)
  assert [row["id"] for row in rows] == [f"g{i}" for i in range(8)]
  first = rows[0]["conversation"]
  assert first.startswith("Human: ") and f"<img0> {CAPTIONS[0]} 0 </img0>" in first
  fills = [
      dict(rating="very good", categories="Seaside; food"),  # → 2
      dict(rating="good", categories="harbours", crop_start="3", crop_end="5"),  # → 1, turns 3–5 only
      dict(rating="2.0", categories="travel"),  # as a spreadsheet saves 2
      dict(rating="meh", categories=""),  # → 0, kept for the record
      dict(rating=""),  # not rated yet
      dict(rating="good", crop_start="2", categories="x"),  # starts at an Assistant turn
      dict(rating="very good", categories=""),  # rated without a category
      dict(rating="good", crop_start="two", categories="x"),
  ]
  for row, fill in zip(rows, fills):
    row.update(fill)
  if len(split_turns(rows[1]["conversation"])) == 4:  # the template adds a closing turn half of the time
    rows[1]["conversation"] += "\nHuman: Thanks!"
  _write(path, rows)
  report = import_ratings(path, load_pool())
  pool = report.pool
  assert pool.version == 2
  assert dict(report.added) == {2: 2, 1: 1, 0: 1}
  assert dict(report.skipped) == {"unrated": 1, "bad_crop": 2, "no_categories": 1}
  assert "record 6 (id 'g5')" in report.first_message["bad_crop"] and "Human turn" in report.first_message["bad_crop"]
  new = {e.id: e for e in pool.examples[len(load_pool().examples):]}
  assert new["g0"].rating == 2 and new["g0"].categories == ("seaside", "food")
  assert new["g0"].captions == tuple(f"{c} 0" for c in CAPTIONS)
  cropped = new["g1"]
  assert [t.marker for t in split_turns(cropped.dialogue)] == ["Human:", "Assistant:", "Human:"]
  # The crop dropped <img0>; the kept images are renumbered from <img0>.
  assert cropped.captions == (f"{CAPTIONS[1]} 1", f"{CAPTIONS[2]} 1")
  assert "<img0> " + CAPTIONS[1] in cropped.dialogue and "<img2>" not in cropped.dialogue
  assert new["g3"].rating == 0
  saved = save_pool(pool, tmp_path / "fewshot_v2.json")
  assert load_pool(saved) == pool
  stats = rating_statistics(pool)
  assert "pool v2" in stats and "harbours 1" in stats and "usable: yes" in stats
  again = import_ratings(path, pool)  # the same file again: every rated row is a duplicate now
  assert sum(again.added.values()) == 0 and again.skipped["duplicate_id"] == 4


def test_an_edited_dialogue_must_still_pass_cleaning(tmp_path):
  path, rows = _exported(tmp_path, count=1)
  rows[0].update(rating="good", categories="x", conversation=rows[0]["conversation"].replace("Assistant:", "Human:"))
  _write(path, rows)
  report = import_ratings(path, load_pool())
  assert dict(report.skipped) == {"invalid_dialogue": 1} and "role_order" in report.summary()


def test_a_csv_without_the_columns_is_refused(tmp_path):
  path = tmp_path / "wrong.csv"
  path.write_text("name,score\nx,2\n")
  with pytest.raises(ValueError, match="missing columns"):
    import_ratings(path, load_pool())
