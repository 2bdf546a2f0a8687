"""Step `cluster`: every kept pair's image embedding → k-means clusters;
clusters with fewer than `min_cluster_size` images are dropped (spec §1).

Writes WORK/kmeans.npz (centroids and every kept pair's assignment, keyed by
pair id; data_gen.kmeans.load_clusters reads it) and, last, WORK/clusters.json:
    {"num_clusters": k, "min_cluster_size": m, "seed": s, "clusters": {"<cluster>": [pair id, …], …}}
holding the kept clusters only. k is lowered to embeddings // min_cluster_size
(at least 1) when there are too few embeddings for k clusters of that size,
and the summary says so. The file is rewritten only when missing.
"""
from __future__ import annotations

import json

import numpy as np

from data_gen.kmeans import KMeansConfig, KMeansResult, keep_clusters, kmeans, save_clusters
from data_gen.shards import read_tally, write_shard
from data_gen.steps.embed import read_embeddings
from data_gen.workdir import WorkDir
from mim_jax.data.problems import ProblemCounts


def cluster_embeddings(ids: list[str], embeddings_nd: np.ndarray, *, num_clusters: int, min_cluster_size: int,
                       seed: int) -> tuple[dict, dict, KMeansResult]:
  """(the clusters.json record, notes, the k-means result); ids must be in pair order."""
  if num_clusters < 1 or min_cluster_size < 1:
    raise ValueError(f"--num-clusters ({num_clusters}) and --min-cluster-size ({min_cluster_size}) must be positive")
  k = max(1, min(num_clusters, len(ids) // min_cluster_size))
  result = kmeans(embeddings_nd, KMeansConfig(num_clusters=k, seed=seed))
  kept = keep_clusters(result.assignments, min_size=min_cluster_size)
  clusters = {str(cluster): [ids[i] for i in sorted(members)] for cluster, members in sorted(kept.items())}
  notes = {"clusters": k, f"clusters with {min_cluster_size}+ images": len(clusters),
           "images in them": sum(map(len, clusters.values()))}
  if k != num_clusters:
    notes[f"k lowered from {num_clusters} ({len(ids)} embeddings)"] = k
  record = {"num_clusters": k, "min_cluster_size": min_cluster_size, "seed": seed, "clusters": clusters}
  return record, notes, result


def cluster_step(work: WorkDir, *, num_clusters: int, min_cluster_size: int, seed: int) -> tuple[ProblemCounts, dict]:
  if work.clusters.exists():
    return read_tally(work.clusters), {"clustered before this run": 1}
  ids, embeddings = read_embeddings(work)
  record, notes, result = cluster_embeddings(ids, embeddings, num_clusters=num_clusters,
                                             min_cluster_size=min_cluster_size, seed=seed)
  return write_clusters(work, ids, record, result), notes


def write_clusters(work: WorkDir, ids: list[str], record: dict, result: KMeansResult) -> ProblemCounts:
  """kmeans.npz, then clusters.json with its tally (images kept, images in
  clusters too small); returns the tally."""
  tally = ProblemCounts(kept=sum(map(len, record["clusters"].values())))
  if len(ids) > tally.kept:
    tally.skipped["cluster_too_small"] = len(ids) - tally.kept
    tally.first_message["cluster_too_small"] = (f"{len(ids) - tally.kept} images sit in clusters under "
                                                f"{record['min_cluster_size']}")
  save_clusters(work.kmeans, result, keys=ids)
  write_shard(work.clusters, json.dumps(record, ensure_ascii=False, indent=1), tally)
  return tally
