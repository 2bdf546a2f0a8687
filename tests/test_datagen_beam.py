"""The Beam pipeline (DirectRunner) writes what the local steps write, and
parallel cleaning equals one sequential Cleaner."""
import importlib
import importlib.util
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_gen.clean import Cleaner
from data_gen.fewshot import load_pool
from data_gen.generated import outcome_record
from data_gen.llm.backends import make_client
from data_gen.llm.template import compose_dialogue
from data_gen.outcome import GenerationOutcome
from data_gen.parallel_clean import clean_alone, fingerprint_key, resolve_duplicates
from data_gen.steps.cluster import cluster_step
from data_gen.steps.embed import embed_step
from data_gen.steps.generate import generate_step
from data_gen.steps.sample import sample_step
from data_gen.tiny_clip import save_tiny_clip
from data_gen.workdir import WorkDir
from datagen_fixtures import ingested_work

SEED = 10086


def _record(task_id, text, images):
  return {"id": task_id, "kept": False, "reason": "unset", "detail": "", "text": text,
          "images": [list(i) for i in images], "examples": []}


def test_parallel_cleaning_equals_a_sequential_cleaner():
  images_a = [("a.png", "a red circle", ""), ("b.png", "a blue square", "")]
  images_b = [("c.png", "a green triangle", ""), ("d.png", "a black circle", "")]
  good_a = compose_dialogue([c for _, c, _ in images_a], random.Random(1))
  good_b = compose_dialogue([c for _, c, _ in images_b], random.Random(2))
  bad_rule_8 = good_a.replace("a red circle", "a completely different picture")
  tasks = [("t0", good_a, images_a), ("t1", good_b, images_b), ("t2", good_a, images_a),  # t2 repeats t0
           ("t3", bad_rule_8, images_a), ("t4", bad_rule_8, images_a),  # rule 8 fails after rule 4 saw t3
           ("t5", "no tags at all", images_a), ("t6", "no tags at all", images_a),  # rule 3: never fingerprinted
           ("t7", "", images_a)]  # an LLM failure: no reply
  cleaner = Cleaner()
  sequential = []
  for task_id, text, images in tasks:
    result = cleaner(text, images, name=task_id) if text else None
    record = _record(task_id, text, images)
    if result is not None:
      record = outcome_record(GenerationOutcome(task_id, result, text), images)
    sequential.append(record)

  alone = [clean_alone(_record(task_id, text, images)) for task_id, text, images in reversed(tasks)]
  groups = {}
  for record in alone:
    groups.setdefault(fingerprint_key(record) or "id:" + record["id"], []).append(record)
  parallel = sorted((r for group in groups.values() for r in resolve_duplicates(group)), key=lambda r: r["id"])
  assert parallel == sequential
  assert [r.get("reason") for r in parallel] == [None, None, "duplicate_response", "caption_changed",
                                                 "duplicate_response", "no_image_pair", "no_image_pair", "unset"]


BEAM_SITE = Path(__file__).parents[1] / ".beam_site"  # where .ci/run installs requirements-beam.txt
BEAM_RUN = """
import json, math, sys
from data_gen.steps import beam as beam_pipeline
from data_gen.fewshot import SEED_POOL
from data_gen.workdir import WorkDir
work, clip, round_index, count, llm_config, llm_workers = sys.argv[1:]
notes = beam_pipeline.run(WorkDir(work), ["--runner=DirectRunner"], round_index=int(round_index), clip_dir=clip,
                          min_score=-math.inf, clip_batch_size=16, num_clusters=1, min_cluster_size=32,
                          num_conversations=int(count), seed=10086, llm_config=json.loads(llm_config),
                          llm_workers=int(llm_workers), pool_path=str(SEED_POOL), tuples_per_shard=5)
print(json.dumps(notes))
"""
TEMPLATE = '{"backend": "template"}'
# The run to kill asks one request a second (a one-request bucket, one worker): the kill lands after the first
# shard's 5 replies are kept, with ~9 s of generation still ahead. Rate limits do not change the output.
SLOW_TEMPLATE = '{"backend": "template", "requests_per_minute": 60, "rate_burst_s": 1}'
ROUNDS = ((0, 14), (1, 10))  # (round, tuples): 3 shards, then 2


def _require_beam():
  # Beam runs in a subprocess with .beam_site first on the path: its protobuf
  # must not shadow the venv's for the rest of the test session.
  if not BEAM_SITE.is_dir() and importlib.util.find_spec("apache_beam") is None:
    pytest.skip("apache-beam is optional; install it with: pip install --no-deps --target .beam_site "
                "-r requirements-beam.txt")


def _local_and_beam_dirs(tmp_path, rounds):
  """A local run of embed, cluster and each round's sample + generate, and a
  Beam work dir holding only the same ingest; returns (local, beam, clip dir)."""
  local = ingested_work(tmp_path / "local", pairs=40)
  local.clusters.unlink()
  save_tiny_clip(local.root / "tiny_clip")
  beam_work = WorkDir(tmp_path / "beam")
  for name in ("pairs", "images", "tiny_clip"):
    shutil.copytree(local.root / name, beam_work.root / name)

  from mim_jax.infer.clip_scores import ClipScorer
  clip = str(local.root / "tiny_clip")
  embed_step(local, lambda: ClipScorer.from_pretrained(clip, batch_size=16, min_score=-math.inf),
             min_score=-math.inf)
  cluster_step(local, num_clusters=1, min_cluster_size=32, seed=SEED)
  for round_index, count in rounds:
    sample_step(local, count=count, round_index=round_index, seed=SEED)
    generate_step(local, make_client({"backend": "template"}), load_pool(), round_index=round_index, seed=SEED,
                  shard_size=5)
  return local, beam_work, clip


def _beam(work, clip, round_index, count, llm_config=TEMPLATE, llm_workers=2):
  repo = Path(__file__).parents[1]
  path = os.pathsep.join(p for p in (str(BEAM_SITE), str(repo), str(repo / "tests"), os.environ.get("PYTHONPATH"))
                         if p)
  return subprocess.Popen([sys.executable, "-c", BEAM_RUN, str(work.root), clip, str(round_index), str(count),
                           llm_config, str(llm_workers)], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env={**os.environ, "PYTHONPATH": path})


def _finish(process) -> dict:
  out, err = process.communicate(timeout=900)
  assert process.returncode == 0, err[-4000:]
  return json.loads(out.strip().splitlines()[-1])


def _files(work, rounds):
  paths = sorted(work.conversations.iterdir()) + [work.clusters] + [work.samples / f"round-{r:03d}.jsonl"
                                                                     for r, _ in rounds]
  paths += sorted(work.embeddings.glob("*.json"))  # settings and tallies; the npz files hold zip timestamps
  return {str(p.relative_to(work.root)): p.read_bytes() for p in paths}


def _embeddings(work):
  out = {}
  for shard in sorted(work.embeddings.glob("*.npz")):
    with np.load(shard) as arrays:
      out[shard.name] = {name: arrays[name].tolist() for name in arrays.files}
  return out


def test_beam_direct_runner_equals_the_local_steps(tmp_path):
  _require_beam()
  local, beam_work, clip = _local_and_beam_dirs(tmp_path, ROUNDS[:1])
  _finish(_beam(beam_work, clip, 0, 14))

  def files(work):
    paths = sorted(work.conversations.iterdir()) + [work.clusters, work.samples / "round-000.jsonl"]
    return {str(p.relative_to(work.root)): p.read_bytes() for p in paths}

  assert len(list(local.conversations.glob("*.jsonl"))) == 3
  assert files(beam_work) == files(local)


def test_beam_rounds_0_and_1_killed_and_rerun_equal_the_local_steps(tmp_path):
  _require_beam()
  local, beam_work, clip = _local_and_beam_dirs(tmp_path, ROUNDS)
  process = _beam(beam_work, clip, 0, 14, SLOW_TEMPLATE, llm_workers=1)
  deadline = time.monotonic() + 300
  while not list(beam_work.beam.glob("*.jsonl")) and process.poll() is None:
    assert time.monotonic() < deadline, "generation never got under way"
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.communicate()
  assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-generation"
  assert not list(beam_work.conversations.glob("*.jsonl")) and beam_work.clusters.exists()

  notes = _finish(_beam(beam_work, clip, 0, 14))
  assert notes.pop("generate shards replied before this run") in (1, 2)  # asked the LLM only for the rest
  assert notes == {"embed shards done before this run": len(beam_work.pair_shards()),
                   "generate shards done before this run": 0}
  notes = _finish(_beam(beam_work, clip, 1, 10))
  assert notes["embed shards done before this run"] == len(beam_work.pair_shards())
  assert not list(beam_work.beam.glob("*")), "the kept replies outlived their round"

  assert [len(list(local.conversations.glob(f"round-00{r}-*.jsonl"))) for r, _ in ROUNDS] == [3, 2]
  assert _files(beam_work, ROUNDS) == _files(local, ROUNDS)
  assert _embeddings(beam_work) == _embeddings(local)
  _finish(_beam(beam_work, clip, 1, 10))  # a finished round: everything is skipped and nothing changes
  assert _files(beam_work, ROUNDS) == _files(local, ROUNDS)


@pytest.mark.skipif(importlib.util.find_spec("apache_beam") is not None, reason="apache-beam is on the path here")
def test_without_apache_beam_the_import_says_how_to_install_it():
  with pytest.raises(ImportError, match=r"pillow<13.*requirements-beam.txt"):
    importlib.import_module("data_gen.steps.beam")
