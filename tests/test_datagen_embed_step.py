"""The embed step keeps pairs at or above the min score, counts the rest by
reason, and skips finished shards on a rerun."""
from collections import Counter

import numpy as np

from data_gen.embed import ScoredPairs
from data_gen.embed_step import embed_step, read_embeddings
from datagen_fixtures import ingested_work


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
  assert "p000000001: score 29.9 < 30" in tally.example["clip_score_below_min"]
  ids, embeddings = read_embeddings(work)
  assert ids == ["p000000000", "p000000003", "p000000004"]
  np.testing.assert_array_equal(embeddings, np.eye(5, 4, dtype=np.float32)[[0, 3, 4]])

  again, notes = embed_step(work, _never_called, min_score=30.0)
  assert again == tally and notes["shards done before this run"] == 1 and scorer.calls == 1
