"""Converts a public training-data format into a TFDS dataset of schema.py records.

  python -m mim_jax.data.convert_datasets llava --input llava_instruct_150k.json \\
      --images coco/train2017 --out DATA_DIR [--name llava_instruct]
  python -m mim_jax.data.convert_datasets textbind --input train=train.json --input test=test.json \\
      --images textbind/images --out DATA_DIR

Sources: llava, minigpt4, shikra, multiinstruct, platypus, textbind (stage 2,
conversations) and caption_tsv, webdataset (stage 1, image–caption pairs); each
converter's docstring in mim_jax/data/converters/ describes the files it reads.
`--input` takes `SPLIT=PATH` (repeatable) or a bare PATH for the train split.
The dataset lands in OUT/NAME/VERSION; bad records are counted by reason and
the summary is printed at the end.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path
from typing import Mapping

from mim_jax.data import tfds_writer
from mim_jax.data.converters import CONVERTERS
from mim_jax.data.problems import ProblemCounts

DEFAULT_NAMES = {"llava": "llava_instruct", "minigpt4": "minigpt4_align", "caption_tsv": "captions",
                 "webdataset": "captions"}
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


def _split_inputs(values: list[str]) -> dict[str, Path]:
  inputs = {}
  for value in values:
    split, separator, path = value.partition("=")
    split, path = (split, path) if separator else ("train", value)
    if split in inputs:
      raise ValueError(f"split {split!r} is given twice in --input; use one SPLIT=PATH per split")
    inputs[split] = Path(path)
  return inputs


def _positive(value: str) -> int:
  number = int(value)
  if number < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
  return number


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("source", choices=sorted(CONVERTERS))
  parser.add_argument("--input", action="append", required=True, help="PATH or SPLIT=PATH; repeat for more splits")
  parser.add_argument("--images", type=Path, help="folder the records' image paths are relative to")
  parser.add_argument("--out", type=Path, required=True, help="TFDS data_dir")
  parser.add_argument("--name", help="dataset name (default: from the source)")
  parser.add_argument("--version", default="1.0.0")
  parser.add_argument("--source-tag", help="the records' `source` field (default: the source name)")
  parser.add_argument("--max-records", type=_positive, help="stop each split after this many kept records (smoke runs)")
  shards = parser.add_mutually_exclusive_group()
  shards.add_argument("--num-shards", type=_positive, help="files per split")
  shards.add_argument("--shard-size", type=_positive, help="records per file")
  parser.add_argument("--workers", type=_positive, default=DEFAULT_WORKERS,
                      help="threads reading and checking images (default: up to 8, one per CPU)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset version")
  return parser



def convert(source: str, inputs: Mapping[str, Path], images: Path | None, out: Path, *, name: str | None = None,
            version: str = "1.0.0", source_tag: str | None = None, max_records: int | None = None,
            shard_size: int | None = None, num_shards: int | None = None, workers: int = DEFAULT_WORKERS,
            overwrite: bool = False, counts: dict[str, ProblemCounts] | None = None) -> Path:
  """Converts `inputs` (split name → file) with the `source` converter into
  OUT/NAME/VERSION and returns that directory; NAME defaults to the source's
  (DEFAULT_NAMES, else the source name: `textbind` for TextBind).

  Split rule: each input file is one split under the name it is given; the
  splits a source has are kept as they are, never re-drawn. (data_gen's
  export writes its own train/valid/test files first, by data_gen/splits.py,
  and converts those; a single released file passed to `data_gen tfds` is
  the train split.) Bad records are counted per split in `counts` (filled
  as the splits are read, so a caller can report them after an error too)."""
  kind, converter = CONVERTERS[source]
  counts = {} if counts is None else counts
  splits = {}
  for split, path in inputs.items():
    counts[split] = ProblemCounts()
    records = converter.records(Path(path), images, counts[split], source_tag or source, workers)
    splits[split] = itertools.islice(records, max_records)
  return tfds_writer.write_dataset(out, name or DEFAULT_NAMES.get(source, source), kind, splits, version=version,
                                   description=f"{source} converted by mim_jax.data.convert_datasets",
                                   shard_size=shard_size, num_shards=num_shards, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  counts: dict[str, ProblemCounts] = {}
  try:
    path = convert(args.source, _split_inputs(args.input), args.images, args.out, name=args.name,
                   version=args.version, source_tag=args.source_tag, max_records=args.max_records,
                   shard_size=args.shard_size, num_shards=args.num_shards, workers=args.workers,
                   overwrite=args.overwrite, counts=counts)
  except (ValueError, FileNotFoundError, FileExistsError) as error:
    _print_counts(counts)
    print(f"error: {error}", file=sys.stderr)
    return 2
  _print_counts(counts)
  print(f"wrote {path}")
  return 0


def _print_counts(counts: dict[str, ProblemCounts]) -> None:
  for split, split_counts in counts.items():
    print(f"[{split}] {split_counts.summary()}")


if __name__ == "__main__":
  sys.exit(main())
