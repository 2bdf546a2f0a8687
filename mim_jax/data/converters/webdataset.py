"""Stage-1 image–caption pairs from webdataset tar shards (img2dataset's
`--output_format webdataset`) → caption records.

Input: one `.tar` shard or a folder of them (read in name order). A sample is
the run of consecutive members sharing a key (the member name up to its first
dot): `KEY.jpg` (or .jpeg/.png/.webp) holds the image, `KEY.txt` the caption,
else `KEY.json`'s "caption" field. A shard that breaks off mid-way is counted
(`bad_shard`) and the next shard is read.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Iterator

from mim_jax.data.conversation import ConversationError
from mim_jax.data.converters.common import check_image_bytes, convert_each
from mim_jax.data.problems import ProblemCounts

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def _shards(input: Path) -> list[Path]:
  if input.is_dir():
    shards = sorted(input.glob("*.tar"))
    if not shards:
      raise FileNotFoundError(f"no .tar shards in {input}")
    return shards
  if not input.is_file():
    raise FileNotFoundError(f"webdataset shard or folder {input} not found")
  return [input]


def _samples(shards: list[Path]) -> Iterator[tuple[str, dict[str, bytes]] | ConversationError]:
  for shard in shards:
    key, members = None, {}
    try:
      # Stream mode: a shard is read once, front to back, never seeked.
      with tarfile.open(shard, mode="r|*") as tar:
        for member in tar:
          if not member.isfile():
            continue
          directory, _, base = member.name.rpartition("/")
          stem, _, extension = base.partition(".")
          member_key = f"{directory}/{stem}" if directory else stem
          if member_key != key and members:
            yield f"{shard.name}:{key}", members
            members = {}
          key = member_key
          members[extension.lower()] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as error:
      yield ConversationError("bad_shard", f"{shard}: unreadable after {key!r} ({error}); the rest of it is skipped")
      members = {}
    if members:
      yield f"{shard.name}:{key}", members


def records(input: Path, images: Path | None, counts: ProblemCounts, source: str,
            workers: int = 1) -> Iterator[dict]:
  del images  # the images are inside the shards
  shards = _shards(input)

  def to_record(index: int, sample) -> dict:
    where, members = sample
    image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
    if image is None:
      raise ConversationError("missing_image", f"{where}: no {'/'.join(IMAGE_EXTENSIONS)} member")
    if "txt" in members:
      caption = members["txt"].decode("utf-8", errors="replace")
    else:
      try:
        caption = json.loads(members.get("json", b"{}")).get("caption")
      except (json.JSONDecodeError, AttributeError):
        caption = None
    if not isinstance(caption, str) or not caption.strip():
      raise ConversationError("missing_caption", f"{where}: no .txt member and no 'caption' in .json")
    check_image_bytes(image, where)
    return {"id": where, "source": source, "caption": caption.strip(), "image": image}

  return convert_each(_samples(shards), to_record, counts, workers)
