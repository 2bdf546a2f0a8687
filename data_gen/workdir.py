"""Where each step reads and writes inside one run directory.

    WORK/images/<pair id>.png          512×512 padded PNGs (ingest)
    WORK/pairs/shard-NNNNN.jsonl       {id, caption, url, image} per kept pair (ingest)
    WORK/embeddings/shard-NNNNN.npz    ids, CLIP scores, image embeddings of pairs that pass (embed)
    WORK/kmeans.npz                    k-means centroids and assignments (cluster)
    WORK/clusters.json                 pair ids of the clusters big enough to sample from (cluster)
    WORK/samples/round-NNN.jsonl       image tuples, one conversation each (sample)
    WORK/conversations/round-NNN-shard-NNNNN.jsonl
                                       one record per tuple id: kept conversation or rejection (generate)
    WORK/export/                       released-format JSON per split, images/, tfds/ (export)
    WORK/stats.json                    dataset statistics (stats)
    WORK/beam/round-NNN-shard-NNNNN.jsonl
                                       a shard's replies cleaned alone, before rule 4 (beam;
                                       removed when the round's shards are written)

Every step's output is a function of the previous steps' outputs and its own
flags, so a directory can be resumed by rerunning the same command.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator

from data_gen.shards import read_jsonl


@dataclasses.dataclass(frozen=True)
class WorkDir:
  root: Path

  def __post_init__(self):
    object.__setattr__(self, "root", Path(self.root))

  images = property(lambda self: self.root / "images")
  pairs = property(lambda self: self.root / "pairs")
  embeddings = property(lambda self: self.root / "embeddings")
  kmeans = property(lambda self: self.root / "kmeans.npz")
  clusters = property(lambda self: self.root / "clusters.json")
  samples = property(lambda self: self.root / "samples")
  conversations = property(lambda self: self.root / "conversations")
  export = property(lambda self: self.root / "export")
  stats = property(lambda self: self.root / "stats.json")
  beam = property(lambda self: self.root / "beam")

  def pair_shards(self) -> list[Path]:
    return sorted(self.pairs.glob("shard-*.jsonl"))

  def read_pairs(self) -> Iterator[dict]:
    for shard in self.pair_shards():
      yield from read_jsonl(shard)

  def pair_table(self) -> dict[str, dict]:
    """Pair id → {id, caption, url, image}; what generation needs to turn a
    tuple of ids into captions and files."""
    return {pair["id"]: pair for pair in self.read_pairs()}

  def require(self, path: Path, step: str) -> Path:
    if not path.exists():
      raise FileNotFoundError(f"{path} does not exist; run `python -m data_gen {step} --work {self.root}` first")
    return path

  def read_clusters(self) -> dict:
    return json.loads(self.require(self.clusters, "cluster").read_text(encoding="utf-8"))
