"""The one reader for the JSON files checkpoints come with (config.json,
model_index.json, scheduler_config.json, safetensors indexes). These are small;
a path that points at something else (a weights file, a data set) is refused
before it is read into memory, with a message that names the file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_JSON_BYTES = 16 * 2**20


def read_json(path: Path, hint: str) -> Any:
  """`path`'s JSON contents; `hint` says what to point at, for the missing-file error."""
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: {hint}")
  with open(path, "rb") as f:
    data = f.read(MAX_JSON_BYTES + 1)
  if len(data) > MAX_JSON_BYTES:
    raise ValueError(f"{path} is over {MAX_JSON_BYTES // 2**20} MiB, too big for a checkpoint's JSON file; "
                     f"is it the right file? ({hint})")
  try:
    return json.loads(data)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e
