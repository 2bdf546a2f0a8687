"""The file sources: TSV (`tsv_source`), a folder with captions.jsonl
(`folder_source`) and webdataset tar shards (`webdataset_source`); see
open_source.py for the formats. Each yields a RawPair or a SourceSkip per
record (pairs.py).
"""
from __future__ import annotations

import glob
import json
import tarfile
from pathlib import Path
from typing import Iterator, Sequence

from data_gen.sources.pairs import RawPair, SourceSkip

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


# Each source checks its arguments when called and returns a generator, so a
# bad path fails before a step records its settings or opens its first shard.


def tsv_source(path: Path, columns: Sequence[str] = ("caption", "url")) -> Iterator[RawPair | SourceSkip]:
  if sorted(columns) != ["caption", "url"]:
    raise ValueError(f"tsv columns {tuple(columns)} must name 'caption' and 'url' once each, in file order")
  if not path.is_file():
    raise FileNotFoundError(f"TSV source {path} not found")
  return _tsv_records(path, tuple(columns))


def _tsv_records(path: Path, columns: tuple[str, ...]) -> Iterator[RawPair | SourceSkip]:
  index = 0
  with path.open("rb") as lines:
    for number, line in enumerate(lines, 1):
      line = line.rstrip(b"\r\n")
      if not line.strip():
        continue
      where = f"{path.name} line {number}"
      fields = line.split(b"\t")
      try:
        values = dict(zip(columns, (field.decode("utf-8").strip() for field in fields)))
      except UnicodeDecodeError as error:
        yield SourceSkip(index, "invalid_utf8", f"{where}: not UTF-8 ({error})")
      else:
        missing = [column for column in columns if not values.get(column)]
        if missing:
          yield SourceSkip(index, "missing_field", f"{where}: no {' or '.join(missing)} (expected "
                                                   f"{len(columns)} tab-separated fields {tuple(columns)})")
        else:
          yield RawPair(index, values["caption"], values["url"])
      index += 1


def folder_source(directory: Path) -> Iterator[RawPair | SourceSkip]:
  captions = directory / "captions.jsonl"
  if not captions.is_file():
    raise FileNotFoundError(f"folder source {directory} has no captions.jsonl; write one line "
                            '{"image": "relative/path.jpg", "caption": "..."} per image')
  return _folder_records(directory, captions)


def _folder_records(directory: Path, captions: Path) -> Iterator[RawPair | SourceSkip]:
  index = 0
  with captions.open("rb") as lines:
    for number, line in enumerate(lines, 1):
      if not line.strip():
        continue
      yield _folder_record(directory, index, line, f"captions.jsonl line {number}")
      index += 1


def _folder_record(directory: Path, index: int, line: bytes, where: str) -> RawPair | SourceSkip:
  try:
    record = json.loads(line.decode("utf-8"))
  except UnicodeDecodeError as error:
    return SourceSkip(index, "invalid_utf8", f"{where}: not UTF-8 ({error})")
  except json.JSONDecodeError as error:
    return SourceSkip(index, "malformed_json", f"{where}: not JSON ({error})")
  if not isinstance(record, dict) or not isinstance(record.get("image"), str) or not record.get("caption"):
    return SourceSkip(index, "missing_field", f"{where}: needs string fields 'image' and 'caption'")
  path = directory / record["image"]
  return RawPair(index, str(record["caption"]).strip(), str(record.get("url") or record["image"]), path=str(path))


def webdataset_source(pattern: str) -> Iterator[RawPair | SourceSkip]:
  shards = sorted(glob.glob(pattern))
  if not shards:
    raise FileNotFoundError(f"webdataset source: no tar shards match {pattern!r}")
  return _webdataset_records(shards)


def _webdataset_records(shards: list[str]) -> Iterator[RawPair | SourceSkip]:
  index = 0
  for shard in shards:
    for key, members in _samples(Path(shard)):
      yield _webdataset_record(index, f"{Path(shard).name}#{key}", members)
      index += 1


def _samples(shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
  """(key, {extension: bytes}) per sample; webdataset writes a sample's files
  next to each other, so a key change ends the sample. A damaged tar ends
  its shard with one `corrupt_tar` sample rather than the run."""
  key, members = None, {}
  try:
    with tarfile.open(shard) as tar:
      for member in tar:
        if not member.isfile():
          continue
        base = member.name.rsplit("/", 1)[-1]
        stem, _, extension = base.partition(".")
        member_key = member.name[:len(member.name) - len(base)] + stem
        if member_key != key and key is not None:
          yield key, members
          members = {}
        key = member_key
        members[extension.lower()] = tar.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError) as error:
    if key is not None:
      yield key, members
    yield f"{shard.name}@error", {"error": f"{type(error).__name__}: {error}".encode()}
    return
  if key is not None:
    yield key, members


def _webdataset_record(index: int, where: str, members: dict[str, bytes]) -> RawPair | SourceSkip:
  if "error" in members:
    return SourceSkip(index, "corrupt_tar", f"{where}: the rest of the shard is unreadable "
                                            f"({members['error'].decode()})")
  image = next((members[ext] for ext in IMAGE_EXTENSIONS if ext in members), None)
  try:
    if "txt" in members:
      caption = members["txt"].decode("utf-8").strip()
    elif "json" in members:
      caption = json.loads(members["json"].decode("utf-8")).get("caption", "")
    else:
      caption = ""
  except UnicodeDecodeError as error:
    return SourceSkip(index, "invalid_utf8", f"{where}: caption is not UTF-8 ({error})")
  except (json.JSONDecodeError, AttributeError) as error:
    return SourceSkip(index, "malformed_json", f"{where}: json member is not an object with a caption ({error})")
  if image is None or not isinstance(caption, str) or not caption.strip():
    return SourceSkip(index, "missing_field", f"{where}: a sample needs an image ({'/'.join(IMAGE_EXTENSIONS)}) "
                                              f"and a caption (txt or json); has {sorted(members)}")
  return RawPair(index, caption.strip(), where, data=image)
