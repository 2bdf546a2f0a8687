"""Image–caption sources, read lazily in a fixed order: `open_source(spec)`
yields a RawPair or a SourceSkip per record (pairs.py).

Sources, named on the command line as `KIND:ARGUMENT`:
- `tsv:FILE` — Conceptual Captions style, one `caption<TAB>url` a line
  (CC3M); `tsv_columns=("url", "caption")` reads CC12M's order.
- `folder:DIR` — `DIR/captions.jsonl`, lines of `{"image": path relative to
  DIR, "caption": ..., "url": optional}`.
- `wds:GLOB` — webdataset tar shards: members grouped by key (the name up to
  the first dot), an image (jpg/jpeg/png/webp) plus a caption (`txt`, or
  `json` with a "caption" field).
- `synthetic:COUNT` — drawn shapes with true captions (synthetic.py), for
  offline runs and tests.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from data_gen.sources.files import folder_source, tsv_source, webdataset_source
from data_gen.sources.pairs import RawPair, SourceSkip
from data_gen.sources.synthetic import synthetic_source

KINDS = ("tsv", "folder", "wds", "synthetic")


def open_source(spec: str, *, tsv_columns: Sequence[str] = ("caption", "url"), seed: int = 10086,
                ) -> Iterator[RawPair | SourceSkip]:
  kind, _, argument = spec.partition(":")
  if kind not in KINDS or not argument:
    raise ValueError(f"source {spec!r} is not KIND:ARGUMENT with KIND one of {', '.join(KINDS)} "
                     "(e.g. tsv:cc3m.tsv, folder:images/, wds:'shards/*.tar', synthetic:48)")
  if kind == "tsv":
    return tsv_source(Path(argument), tsv_columns)
  if kind == "folder":
    return folder_source(Path(argument))
  if kind == "wds":
    return webdataset_source(argument)
  if not argument.isdigit():
    raise ValueError(f"source {spec!r}: synthetic takes a count of pairs, e.g. synthetic:48")
  return synthetic_source(int(argument), seed=seed)
