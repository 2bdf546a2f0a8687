"""Step `ingest`: a source → pair shards and 512×512 padded PNGs.

Source records are cut into shards of `shard_size` consecutive positions
(skipped records included, so shard boundaries never move). A shard whose
output exists is skipped on a rerun; within an unfinished shard, images
already written are reused instead of fetched again.
"""
from __future__ import annotations

import itertools
from typing import Iterable

from tqdm import tqdm

from data_gen.report import Skip
from data_gen.shards import (
  atomic_write_bytes,
  clear_temporaries,
  jsonl_text,
  read_tally,
  require_same_settings,
  shard_name,
  write_shard,
)
from data_gen.sources.download import Fetcher, map_concurrently
from data_gen.sources.padded_png import padded_png
from data_gen.sources.pairs import RawPair, SourceSkip
from data_gen.workdir import WorkDir
from mim_jax.data.problems import ProblemCounts


def ingest(records: Iterable[RawPair | SourceSkip], work: WorkDir, *, fetcher: Fetcher, shard_size: int = 1000,
           source: str = "") -> tuple[ProblemCounts, dict]:
  """Returns the step's tally (all shards, finished earlier or now) and
  notes. `source` names the source, so a rerun on another one is refused."""
  if shard_size < 1:
    raise ValueError(f"shard_size is {shard_size}; give at least 1 record per shard")
  require_same_settings(work.pairs / "settings.json", {"source": source, "pairs_per_shard": shard_size})
  work.images.mkdir(parents=True, exist_ok=True)
  clear_temporaries(work.pairs)
  clear_temporaries(work.images)
  tally, reused = ProblemCounts(), 0
  progress = tqdm(desc="ingest", unit="pair")
  records = iter(records)
  for index in itertools.count():
    chunk = list(itertools.islice(records, shard_size))
    if not chunk:
      break
    shard = work.pairs / shard_name(index, ".jsonl")
    if shard.exists():
      tally.add(read_tally(shard))
      reused += 1
    else:
      tally.add(_ingest_shard(chunk, shard, work, fetcher))
    progress.update(len(chunk))
  progress.close()
  return tally, {"shards done before this run": reused}


def _ingest_shard(chunk: list, shard, work: WorkDir, fetcher: Fetcher) -> ProblemCounts:
  pairs = [record for record in chunk if isinstance(record, RawPair)]
  outcomes = dict(zip((pair.index for pair in pairs),
                      map_concurrently(lambda pair: _ingest_pair(pair, work, fetcher), pairs,
                                       fetcher.options.workers)))
  tally, kept = ProblemCounts(), []
  for record in chunk:
    if isinstance(record, SourceSkip):
      tally.skip_reason(record.reason, record.message)
      continue
    outcome = outcomes[record.index]
    if isinstance(outcome, Skip):
      tally.skip(outcome)
    elif isinstance(outcome, Exception):
      tally.skip_reason(f"error_{type(outcome).__name__}", f"{record.pair_id}: {outcome}")
    else:
      kept.append(outcome)
      tally.kept += 1
  write_shard(shard, jsonl_text(kept), tally)
  return tally


def _ingest_pair(pair: RawPair, work: WorkDir, fetcher: Fetcher) -> dict:
  image = f"{pair.pair_id}.png"
  path = work.images / image
  if not path.exists():
    atomic_write_bytes(path, padded_png(fetcher.image_bytes(pair), name=pair.pair_id))
  return {"id": pair.pair_id, "caption": pair.caption, "url": pair.url, "image": image}
