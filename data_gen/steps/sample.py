"""Step `sample`: topic-aware image tuples (spec §1 step 1).

One conversation = 2 or 3 images (uniform), all from ONE cluster chosen
uniformly at random among clusters with at least `min_cluster_size` images,
drawn without replacement. A tuple already used — in this round or any
earlier one — is drawn again, so rounds never repeat a set of images (the
same images in another order count as the same tuple).

Rounds are the persisted record of used tuples: `samples/round-NNN.jsonl`
holds every tuple of round NNN, and the used set is read back from all round
files, so it can never disagree with what was generated. Round r draws from
`numpy.random.default_rng((seed, r))` with seed 10086 by default: the same
clusters, seed and round give the same tuples.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from data_gen.shards import atomic_write_text, jsonl_text, read_jsonl
from data_gen.workdir import WorkDir
from mim_jax.data.problems import ProblemCounts

SEED = 10086
MIN_CLUSTER_SIZE = 32
IMAGES_PER_CONVERSATION = (2, 3)
# A tuple redrawn this many times in a row means the clusters are (nearly) used up.
MAX_DRAWS_PER_TUPLE = 1000


@dataclasses.dataclass(frozen=True)
class ImageTuple:
  id: str
  cluster: str
  pairs: tuple[str, ...]

  def to_json(self) -> dict:
    return {"id": self.id, "cluster": self.cluster, "pairs": list(self.pairs)}

  @classmethod
  def from_json(cls, record: dict) -> "ImageTuple":
    return cls(record["id"], record["cluster"], tuple(record["pairs"]))


def tuple_id(round_index: int, position: int) -> str:
  return f"r{round_index:03d}-{position:06d}"


def tuple_position(image_tuple_id: str) -> int:
  """The tuple's position in its round (what generation shards are cut by)."""
  return int(image_tuple_id.rsplit("-", 1)[1])


def tuple_key(pairs) -> tuple[str, ...]:
  return tuple(sorted(pairs))


def sample_tuples(clusters: dict[str, list[str]], count: int, *, used: set, round_index: int = 0, seed: int = SEED,
                  min_cluster_size: int = MIN_CLUSTER_SIZE) -> tuple[list[ImageTuple], dict]:
  """Up to `count` new tuples; adds their keys to `used`. Returns the tuples
  and notes (clusters excluded, duplicate draws, whether it ran out)."""
  eligible = sorted((name for name, members in clusters.items() if len(members) >= min_cluster_size), key=_natural)
  notes = {"clusters eligible": len(eligible), f"clusters under {min_cluster_size} images": len(clusters) - len(eligible),
           "duplicate draws redrawn": 0}
  if not eligible:
    raise ValueError(f"none of the {len(clusters)} clusters given has {min_cluster_size} images or more; ingest more "
                     "pairs, use fewer clusters, or lower --min-cluster-size")
  members = {name: sorted(clusters[name]) for name in eligible}
  rng = np.random.default_rng((seed, round_index))
  tuples = []
  while len(tuples) < count:
    for _ in range(MAX_DRAWS_PER_TUPLE):
      cluster = eligible[rng.integers(len(eligible))]
      size = IMAGES_PER_CONVERSATION[rng.integers(len(IMAGES_PER_CONVERSATION))]
      picks = rng.choice(len(members[cluster]), size=size, replace=False)
      pairs = tuple(members[cluster][i] for i in picks)
      if tuple_key(pairs) not in used:
        break
      notes["duplicate draws redrawn"] += 1
    else:
      notes["stopped: every draw was a used tuple"] = len(tuples)
      break
    used.add(tuple_key(pairs))
    tuples.append(ImageTuple(tuple_id(round_index, len(tuples)), cluster, pairs))
  return tuples, notes


def _natural(name: str):
  return (0, int(name), "") if name.isdigit() else (1, 0, name)


def round_path(work: WorkDir, round_index: int):
  return work.samples / f"round-{round_index:03d}.jsonl"


def read_round(work: WorkDir, round_index: int) -> list[ImageTuple]:
  return [ImageTuple.from_json(r) for r in read_jsonl(work.require(round_path(work, round_index), "sample"))]


def used_tuples(work: WorkDir) -> set:
  used = set()
  for path in sorted(work.samples.glob("round-*.jsonl")):
    used.update(tuple_key(record["pairs"]) for record in read_jsonl(path))
  return used


def sample_step(work: WorkDir, *, count: int, round_index: int = 0, seed: int = SEED,
                min_cluster_size: int = MIN_CLUSTER_SIZE) -> tuple[ProblemCounts, dict]:
  path = round_path(work, round_index)
  if path.exists():
    tuples = read_round(work, round_index)
    return ProblemCounts(kept=len(tuples)), {"round already sampled": 1}
  clusters = work.read_clusters()["clusters"]
  tuples, notes = sample_tuples(clusters, count, used=used_tuples(work), round_index=round_index, seed=seed,
                                min_cluster_size=min_cluster_size)
  atomic_write_text(path, jsonl_text(t.to_json() for t in tuples))
  return ProblemCounts(kept=len(tuples)), notes
