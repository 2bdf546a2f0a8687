"""What a source yields per record: a `RawPair` (a caption and where its
image is: bytes in hand, a local file, or a URL to fetch) or a `SourceSkip`
(the record cannot be used: a missing field, a caption that is not UTF-8).
Positions count both, so a record keeps its index — and its pair id —
across reruns, which is what lets ingest resume by shard.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RawPair:
  index: int
  caption: str
  url: str  # where the image came from; what the released format's url_list holds
  data: bytes | None = None  # the encoded image, when the source holds it
  path: str = ""  # a local file to read, when the source points at one

  @property
  def pair_id(self) -> str:
    return pair_id(self.index)


@dataclasses.dataclass(frozen=True)
class SourceSkip:
  index: int
  reason: str
  message: str


def pair_id(index: int) -> str:
  return f"p{index:09d}"
