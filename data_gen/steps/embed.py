"""Step `embed`: pair shards → CLIP scores and image embeddings of the pairs
that pass the score filter (spec §1: 100 × cosine ≥ 30), one `.npz` per pair
shard with `ids`, `scores` and unit-norm `embeddings` (float32) of the kept
pairs. Scoring is mim_jax.infer.clip_scores's `ClipScorer`; the model is loaded only
when some shard is still to do.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from data_gen.shards import clear_temporaries, read_jsonl, read_tally, require_same_settings, write_shard
from data_gen.workdir import WorkDir
from mim_jax.data.problems import ProblemCounts


def embedding_path(work: WorkDir, pair_shard: Path) -> Path:
  return work.embeddings / pair_shard.name.replace(".jsonl", ".npz")


def embedding_shards(work: WorkDir):
  return sorted(work.embeddings.glob("shard-*.npz"))


def read_embeddings(work: WorkDir) -> tuple[list[str], np.ndarray]:
  """All kept pairs' ids and embeddings, in pair order."""
  ids, embeddings = [], []
  for shard in embedding_shards(work):
    with np.load(shard) as arrays:
      ids += [str(i) for i in arrays["ids"]]
      embeddings.append(arrays["embeddings"])
  if not ids:
    raise ValueError(f"{work.embeddings} holds no kept pair; run embed first, or check its summary (a min score "
                     "too high for the CLIP in use drops everything)")
  return ids, np.concatenate(embeddings)


def embed_step(work: WorkDir, make_scorer: Callable[[], object], *, min_score: float) -> tuple[ProblemCounts, dict]:
  """`make_scorer()` returns a ClipScorer; called at most once."""
  shards = work.pair_shards()
  if not shards:
    raise FileNotFoundError(f"{work.pairs} holds no pair shard; run `python -m data_gen ingest --work {work.root}` "
                            "first")
  require_same_settings(work.embeddings / "settings.json", {"min_score": min_score})
  clear_temporaries(work.embeddings)
  scorer, tally, done_before = None, ProblemCounts(), 0
  for shard in tqdm(shards, desc="embed", unit="shard"):
    out = embedding_path(work, shard)
    if out.exists():
      tally.add(read_tally(out))
      done_before += 1
      continue
    scorer = scorer or make_scorer()
    tally.add(embed_shard(scorer, list(read_jsonl(shard)), work, out, min_score))
  return tally, {"shards done before this run": done_before, "min score": min_score}


def embed_shard(scorer, pairs: list[dict], work: WorkDir, out: Path, min_score: float) -> ProblemCounts:
  """Scores one pair shard's pairs and writes `out` (the kept ids, scores and
  embeddings) with its tally; the local step and the Beam pipeline both call it."""
  scored = scorer.score_pairs([(work.images / pair["image"], pair["caption"]) for pair in pairs])
  good = ~np.isnan(scored.scores)
  keep = good & (scored.scores >= min_score)
  tally = ProblemCounts(kept=int(keep.sum()))
  for reason, count in scored.problems.items():
    tally.skipped[reason.replace(" ", "_")] += count
  below = np.flatnonzero(good & ~keep)
  if below.size:
    first = below[0]
    tally.skipped["clip_score_below_min"] += int(below.size)
    tally.first_message["clip_score_below_min"] = (f"{pairs[first]['id']}: score {scored.scores[first]:.1f} "
                                                   f"< {min_score:g}")
  buffer = io.BytesIO()
  np.savez(buffer, ids=np.array([pairs[i]["id"] for i in np.flatnonzero(keep)]),
           scores=scored.scores[keep].astype(np.float32), embeddings=scored.image_embeds[keep].astype(np.float32))
  write_shard(out, buffer.getvalue(), tally)
  return tally
