"""The Beam pipeline (DirectRunner) writes what the local steps write, and
parallel cleaning equals one sequential Cleaner."""
import importlib
import importlib.util
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

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
import math, sys
from data_gen.steps import beam as beam_pipeline
from data_gen.fewshot import SEED_POOL
from data_gen.workdir import WorkDir
beam_pipeline.run(WorkDir(sys.argv[1]), ["--runner=DirectRunner"], clip_dir=sys.argv[2], min_score=-math.inf,
                  clip_batch_size=16, num_clusters=1, min_cluster_size=32, num_conversations=14, seed=10086,
                  llm_config={"backend": "template"}, llm_workers=2, pool_path=str(SEED_POOL), tuples_per_shard=5)
"""


def test_beam_direct_runner_equals_the_local_steps(tmp_path):
  # Beam runs in a subprocess with .beam_site first on the path: its protobuf
  # must not shadow the venv's for the rest of the test session.
  if not BEAM_SITE.is_dir() and importlib.util.find_spec("apache_beam") is None:
    pytest.skip("apache-beam is optional; install it with: pip install --no-deps --target .beam_site "
                "-r requirements-beam.txt")
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
  sample_step(local, count=14, seed=SEED)
  generate_step(local, make_client({"backend": "template"}), load_pool(), seed=SEED, shard_size=5)

  repo = Path(__file__).parents[1]
  path = os.pathsep.join(p for p in (str(BEAM_SITE), str(repo), str(repo / "tests"), os.environ.get("PYTHONPATH"))
                         if p)
  beam = subprocess.run([sys.executable, "-c", BEAM_RUN, str(beam_work.root), clip], cwd=repo, capture_output=True,
                        text=True, env={**os.environ, "PYTHONPATH": path}, timeout=900)
  assert beam.returncode == 0, beam.stderr[-4000:]

  def files(work):
    paths = sorted(work.conversations.iterdir()) + [work.clusters, work.samples / "round-000.jsonl"]
    return {str(p.relative_to(work.root)): p.read_bytes() for p in paths}

  assert len(list(local.conversations.glob("*.jsonl"))) == 3
  assert files(beam_work) == files(local)


@pytest.mark.skipif(importlib.util.find_spec("apache_beam") is not None, reason="apache-beam is on the path here")
def test_without_apache_beam_the_import_says_how_to_install_it():
  with pytest.raises(ImportError, match=r"pillow<13.*requirements-beam.txt"):
    importlib.import_module("data_gen.steps.beam")
