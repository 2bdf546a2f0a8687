"""Text-only training data: windows of `seq_len` + 1 tokens cut from a text
file (one document per line, each `<s> … </s>`), for the Llama runs
(configs/llama_lm.py). The reader has `ReaderGroup`'s interface
(data/batches.py), so the training loop and its checkpoints treat it alike.

Batch k draws its rows with a generator seeded by (seed, k): the stream is a
function of the seed alone, and its checkpointed position is one number.
Each process takes its equal share of the global batch's rows.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from mim_jax.data.tokenizer import Tokenizer

SAMPLE_TEXT = Path(__file__).parents[1] / "assets" / "sample_text.txt"


def read_text_lines(path: str | Path = "") -> list[str]:
  """The non-empty lines of `path` (empty: the bundled sample text)."""
  path = Path(path or SAMPLE_TEXT)
  if not path.is_file():
    raise FileNotFoundError(f"text file {path} not found; set --config.data.text_file to a UTF-8 text file, or leave "
                            f"it empty for the bundled sample")
  lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
  if not lines:
    raise ValueError(f"text file {path} has no text")
  return lines


def token_windows(tokenizer: Tokenizer, lines: list[str], seq_len: int) -> np.ndarray:
  """(windows, seq_len + 1) int32: the lines as one token stream, cut every seq_len / 4 tokens."""
  stream = []
  for line in lines:
    stream += [tokenizer.bos_id] + tokenizer.encode(line) + [tokenizer.eos_id]
  stream = np.asarray(stream, np.int32)
  if len(stream) <= seq_len:
    stream = np.tile(stream, seq_len // len(stream) + 2)
  starts = np.arange(0, len(stream) - seq_len - 1, max(1, seq_len // 4))
  return np.stack([stream[s:s + seq_len + 1] for s in starts])


class TextWindows:
  """`next_batch()` → ({tokens, targets, weights}, 0) of this process's rows; `save`/`restore` its position."""

  def __init__(self, windows: np.ndarray, *, batch_size: int, seed: int):
    processes = jax.process_count()
    if batch_size % processes:
      raise ValueError(f"train.batch_size ({batch_size}) must divide by the number of processes ({processes})")
    self.windows, self.batch_size, self.seed = windows, batch_size, seed
    per_process = batch_size // processes
    self._rows = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    self.position = 0

  def next_batch(self) -> tuple[dict[str, np.ndarray], int]:
    rng = np.random.default_rng([self.seed, self.position])
    rows = self.windows[rng.integers(0, len(self.windows), self.batch_size)][self._rows]
    self.position += 1
    return {"tokens": rows[:, :-1], "targets": rows[:, 1:], "weights": np.ones(rows[:, 1:].shape, np.float32)}, 0

  @property
  def counts(self) -> dict:
    return {"windows": len(self.windows), "batches": self.position}

  def save(self, directory) -> None:
    if jax.process_index() == 0:
      (directory / "text_windows.json").write_text(json.dumps({"position": self.position}))

  def restore(self, directory) -> None:
    self.position = int(json.loads((directory / "text_windows.json").read_text())["position"])
