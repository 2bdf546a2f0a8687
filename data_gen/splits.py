"""The train/valid/test split (spec §1): shuffle with seed 10086, 100 valid,
100 test, the rest train.

The JSON export and the TFDS builder both call `split_indices`, so the two
always hold the same conversations in each split.

Small inputs: valid and test each get `min(requested, n // 4)`, so train
always keeps at least half. Under 4 conversations everything is train and the
valid and test splits are empty (the TFDS builder then writes no such split).
"""
from __future__ import annotations

import random

SEED = 10086
HELD_OUT = {"valid": 100, "test": 100}
SPLITS = ("train", "valid", "test")


def split_indices(count: int, *, seed: int = SEED, valid: int = HELD_OUT["valid"],
                  test: int = HELD_OUT["test"]) -> dict[str, list[int]]:
  """Split name → indices into the input list, in shuffled order."""
  order = list(range(count))
  random.Random(seed).shuffle(order)
  valid, test = min(valid, count // 4), min(test, count // 4)
  return {"train": order[valid + test:], "valid": order[:valid], "test": order[valid:valid + test]}
