"""Crash-safe files for resumable steps.

Every output is written to a temporary name in the same directory and then
renamed, so a reader (or a rerun) sees a whole file or none. A shard is
finished once its output exists; its tally (`<shard>.tally.json`) is renamed
into place first, so a finished shard always has one and a rerun that skips
the shard can still report its counts.

`AppendLog` is the one exception: generation is slow and paid for per record,
so a shard in progress appends one fsynced JSON line per record and a rerun
continues after the last whole line, keyed by record id.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from mim_jax.data.problems import ProblemCounts


def atomic_write_bytes(path: Path, data: bytes) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(handle, "wb") as out:
      out.write(data)
      out.flush()
      os.fsync(out.fileno())
    os.replace(temp, path)
  except BaseException:
    Path(temp).unlink(missing_ok=True)
    raise


def atomic_write_text(path: Path, text: str) -> None:
  atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value) -> None:
  atomic_write_text(path, json.dumps(value, ensure_ascii=False, indent=1))


def jsonl_text(records: Iterable[dict]) -> str:
  return "".join(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n" for record in records)


def read_jsonl(path: Path) -> Iterator[dict]:
  with path.open(encoding="utf-8") as lines:
    for line in lines:
      if line.strip():
        yield json.loads(line)


def require_same_settings(path: Path, settings: dict) -> None:
  """Shards are cut by position, so a rerun with another shard size (or
  source, seed, …) would mix two cuttings: the first run's settings are
  saved at `path` and a rerun must repeat them."""
  settings = json.loads(json.dumps(settings))  # as they read back: tuples become lists
  if path.exists():
    saved = json.loads(path.read_text(encoding="utf-8"))
    changed = {key: (saved.get(key), value) for key, value in settings.items() if saved.get(key) != value}
    if changed:
      described = ", ".join(f"{key}: {old!r} then, {new!r} now" for key, (old, new) in changed.items())
      raise ValueError(f"{path.parent} was written with other settings ({described}); rerun with the earlier "
                       f"flags to resume, or use a fresh --work")
    return
  atomic_write_json(path, settings)


def tally_path(shard: Path) -> Path:
  return shard.with_name(shard.name + ".tally.json")


def write_shard(shard: Path, data: str | bytes, tally: ProblemCounts) -> None:
  """ProblemCounts first, output last: the output's existence marks the shard done."""
  atomic_write_json(tally_path(shard), tally.to_json())
  atomic_write_bytes(shard, data.encode("utf-8") if isinstance(data, str) else data)


def read_tally(shard: Path) -> ProblemCounts:
  return ProblemCounts.from_json(json.loads(tally_path(shard).read_text(encoding="utf-8")))


def shard_name(index: int, suffix: str, prefix: str = "shard") -> str:
  return f"{prefix}-{index:05d}{suffix}"


def clear_temporaries(directory: Path) -> None:
  """Temp files left by a killed run; they are never read, only in the way."""
  if directory.is_dir():
    for temp in directory.glob(".*.tmp"):
      temp.unlink(missing_ok=True)


class AppendLog:
  """A JSONL file of records keyed by `key`, appended one fsynced line at a
  time. Opening it drops a torn last line (a kill mid-write) and keeps the
  first record of each key, so records written before a crash are neither
  lost nor duplicated."""

  def __init__(self, path: Path, key: str):
    self.path, self.key = path, key
    self.records: dict[str, dict] = {}
    if path.exists():
      self._recover()
    path.parent.mkdir(parents=True, exist_ok=True)
    self._out = path.open("a", encoding="utf-8")

  def _recover(self) -> None:
    whole = b""
    for line in self.path.read_bytes().splitlines(keepends=True):
      if not line.endswith(b"\n"):
        break
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        break
      self.records.setdefault(record[self.key], record)
      whole += line
    # Rewrite without the torn tail so the next append starts on a fresh line.
    atomic_write_bytes(self.path, whole)

  def __contains__(self, key: str) -> bool:
    return key in self.records

  def append(self, record: dict) -> None:
    if record[self.key] in self.records:
      return
    self._out.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
    self._out.flush()
    os.fsync(self._out.fileno())
    self.records[record[self.key]] = record

  def close(self) -> None:
    self._out.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
