"""The rated pool of in-context examples (spec §1 step 4).

    pool = load_pool(path=SEED_POOL)            # validates; raises PoolError naming each bad example
    save_pool(pool, path)                        # refuses to overwrite an existing version
    select_examples(pool, rng) -> (Example, Example, Example)

A pool file is versioned JSON:
    {"version": 1, "examples": [{"id": "…", "rating": 2, "categories": ["travel"],
                                 "captions": ["…", …], "dialogue": "Human: …\\nAssistant: …"}, …]}
Ratings: 2 = "very good", 1 = "good", 0 = anything else (kept for the
record, never used). Each generation call takes two rated-2 examples and one
rated-1 example whose categories can be told apart: one category per example,
three different categories. The three come in a random order, so the rated-1
example is not always last. A pool that can never satisfy this is rejected
when loaded, not at the first request. steps/annotate.py adds rated examples and
writes the next version.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
from collections import Counter
from pathlib import Path

from data_gen.clean import clean_generation
from data_gen.outcome import Rejection

SEED_POOL = Path(__file__).parent / "assets" / "fewshot_seed.json"
RATINGS = (0, 1, 2)


class PoolError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Example:
  id: str
  rating: int
  categories: tuple[str, ...]
  captions: tuple[str, ...]
  dialogue: str

  def __post_init__(self):
    object.__setattr__(self, "categories", tuple(self.categories))
    object.__setattr__(self, "captions", tuple(self.captions))


@dataclasses.dataclass(frozen=True)
class Pool:
  version: int
  examples: tuple[Example, ...]

  def __post_init__(self):
    object.__setattr__(self, "examples", tuple(self.examples))
    problems = [problem for example in self.examples for problem in _problems(example)]
    duplicates = [i for i, n in Counter(e.id for e in self.examples).items() if n > 1]
    problems += [f"id {i!r} is used by more than one example" for i in duplicates]
    if problems:
      raise PoolError(f"few-shot pool v{self.version} has {len(problems)} problem(s): " + "; ".join(problems[:10]))

  def rated(self, rating: int) -> list[Example]:
    return [e for e in self.examples if e.rating == rating]

  def check_selectable(self) -> None:
    """Raises PoolError unless select_examples can succeed."""
    # Examples with the same category set are interchangeable here, so search
    # over the (few) distinct sets instead of the (many) examples.
    groups = {rating: Counter(frozenset(e.categories) for e in self.rated(rating)) for rating in (1, 2)}
    for a, b in itertools.combinations_with_replacement(groups[2], 2):
      if a == b and groups[2][a] < 2:
        continue
      if any(_distinct_representatives((a, b, c)) for c in groups[1]):
        return
    raise PoolError(
        f"few-shot pool v{self.version} cannot supply two rated-2 and one rated-1 example from three different "
        f"categories (rated 2: {_describe(self.rated(2))}; rated 1: {_describe(self.rated(1))}); rate more "
        f"examples in other categories with `annotate`, or fix the categories")


def _problems(example: Example) -> list[str]:
  where = f"example {example.id!r}"
  problems = []
  if example.rating not in RATINGS:
    problems.append(f"{where}: rating {example.rating!r} is not one of {RATINGS}")
  if example.rating > 0 and not example.categories:
    problems.append(f"{where}: a rated example needs at least one category")
  if not example.captions:
    problems.append(f"{where}: has no captions")
  images = [(f"image{i}", caption, "") for i, caption in enumerate(example.captions)]
  cleaned = clean_generation(example.dialogue, images, name=where)
  if isinstance(cleaned, Rejection):
    problems.append(f"{cleaned.detail} (cleaning rule {cleaned.reason})")
  return problems


def _describe(examples) -> str:
  categories = Counter(c for e in examples for c in e.categories)
  return f"{len(examples)} examples in {dict(categories) or 'no categories'}"


def _distinct_representatives(category_sets) -> bool:
  return any(len(set(choice)) == len(choice) for choice in itertools.product(*category_sets))


def select_examples(pool: Pool, rng: random.Random) -> tuple[Example, ...]:
  """Two rated-2 and one rated-1 example from three distinct categories, in
  a random order; the same rng state gives the same choice."""
  rated2, rated1 = pool.rated(2), pool.rated(1)
  rated2 = rng.sample(rated2, len(rated2))
  rated1 = rng.sample(rated1, len(rated1))
  for i, first in enumerate(rated2):
    for second in rated2[i + 1:]:
      if not _distinct_representatives((first.categories, second.categories)):
        continue
      for third in rated1:
        if _distinct_representatives((first.categories, second.categories, third.categories)):
          chosen = [first, second, third]
          rng.shuffle(chosen)
          return tuple(chosen)
  pool.check_selectable()  # raises with a description of what the pool lacks
  raise AssertionError("check_selectable found a selection that the search missed")


def pool_from_json(record, name: str = "pool") -> Pool:
  if not isinstance(record, dict) or not isinstance(record.get("version"), int) \
      or not isinstance(record.get("examples"), list):
    raise PoolError(f"{name}: expected {{'version': int, 'examples': [...]}}")
  fields = [f.name for f in dataclasses.fields(Example)]
  examples = []
  for index, raw in enumerate(record["examples"]):
    if not isinstance(raw, dict) or sorted(raw) != sorted(fields):
      raise PoolError(f"{name} example {index}: expected exactly the keys {fields}")
    examples.append(Example(**raw))
  return Pool(record["version"], examples)


def pool_to_json(pool: Pool) -> dict:
  return {"version": pool.version, "examples": [
      {**dataclasses.asdict(e), "categories": list(e.categories), "captions": list(e.captions)}
      for e in pool.examples]}


def load_pool(path: str | os.PathLike = SEED_POOL, *, check_selectable: bool = True) -> Pool:
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"few-shot pool {path} not found; the seed pool is {SEED_POOL}")
  try:
    record = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as error:
    raise PoolError(f"{path}: not valid JSON ({error})") from None
  pool = pool_from_json(record, name=str(path))
  if check_selectable:
    pool.check_selectable()
  return pool


def save_pool(pool: Pool, path: str | os.PathLike) -> Path:
  """Writes a new pool version; an existing file is never replaced, so the
  version a generation run used stays on disk as it was."""
  path = Path(path)
  if path.exists():
    raise FileExistsError(f"{path} exists; write pool v{pool.version} to a new file")
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(pool_to_json(pool), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
  return path
