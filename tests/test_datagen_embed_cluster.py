"""The embed step keeps pairs at or above the min score, counts the rest by
reason, and skips finished shards on a rerun; the cluster step keeps
clusters big enough to sample from."""
import io
import json
from collections import Counter

import numpy as np

from data_gen.kmeans import load_clusters
from data_gen.shards import write_shard
from data_gen.steps.cluster import cluster_embeddings, cluster_step
from data_gen.steps.embed import embed_step, read_embeddings
from data_gen.workdir import WorkDir
from datagen_fixtures import ingested_work
from mim_jax.data.problems import ProblemCounts
from mim_jax.infer.clip_scores import ScoredPairs


class FixedScorer:
  """Scores pair i as SCORES[i]; pair 2's image counts as undecodable (NaN)."""

  SCORES = [31.0, 29.9, np.nan, 30.0, 45.0]

  def __init__(self):
    self.calls = 0

  def score_pairs(self, pairs):
    self.calls += 1
    n = len(pairs)
    scores = np.array(self.SCORES[:n], np.float32)
    embeds = np.eye(n, 4, dtype=np.float32)
    embeds[np.isnan(scores)] = np.nan
    problems = Counter({"image not decodable": int(np.isnan(scores).sum())})
    return ScoredPairs(scores, embeds, scores >= 30, problems, 0)


def _never_called():
  raise AssertionError("every shard is finished: the model must not be loaded")


def test_score_filter_counts_and_resume(tmp_path):
  work = ingested_work(tmp_path, pairs=5)
  scorer = FixedScorer()
  tally, notes = embed_step(work, lambda: scorer, min_score=30.0)
  assert tally.kept == 3
  assert dict(tally.skipped) == {"clip_score_below_min": 1, "image_not_decodable": 1}
  assert "p000000001: score 29.9 < 30" in tally.first_message["clip_score_below_min"]
  ids, embeddings = read_embeddings(work)
  assert ids == ["p000000000", "p000000003", "p000000004"]
  np.testing.assert_array_equal(embeddings, np.eye(5, 4, dtype=np.float32)[[0, 3, 4]])

  again, notes = embed_step(work, _never_called, min_score=30.0)
  assert again == tally and notes["shards done before this run"] == 1 and scorer.calls == 1


def test_cluster_step_drops_small_clusters_and_lowers_k(tmp_path):
  work = WorkDir(tmp_path)
  rng = np.random.default_rng(0)
  centers = np.eye(3, 8, dtype=np.float32)
  sizes = (40, 40, 16)  # 96 points: room for 96 // 32 = 3 clusters
  embeddings = np.concatenate([c + 0.01 * rng.standard_normal((n, 8)) for c, n in zip(centers, sizes)])
  ids = [f"p{i:09d}" for i in range(sum(sizes))]
  buffer = io.BytesIO()
  np.savez(buffer, ids=np.array(ids), scores=np.zeros(len(ids), np.float32), embeddings=embeddings.astype(np.float32))
  write_shard(work.embeddings / "shard-00000.npz", buffer.getvalue(), ProblemCounts(kept=len(ids)))

  record, notes, _ = cluster_embeddings(ids, embeddings, num_clusters=4096, min_cluster_size=32, seed=10086)
  assert record["num_clusters"] == 3 and notes["k lowered from 4096 (96 embeddings)"] == 3

  tally, notes = cluster_step(work, num_clusters=3, min_cluster_size=32, seed=10086)
  clusters = json.loads(work.clusters.read_text())["clusters"]
  assert sorted(map(sorted, clusters.values())) == [ids[:40], ids[40:80]]
  assert tally.kept == 80 and tally.skipped == {"cluster_too_small": 16}
  assert "16 images sit in clusters under 32" in tally.first_message["cluster_too_small"]
  result, keys = load_clusters(work.kmeans)
  assert list(keys) == ids and result.assignments.shape == (96,)
  again, notes = cluster_step(work, num_clusters=3, min_cluster_size=32, seed=10086)
  assert notes == {"clustered before this run": 1} and again == tally
