"""`python -m mim_jax.train` end to end on tiny configs and synthetic TFDS data:
loss falls in both stages; a run SIGTERM'd and then SIGKILL'd at a random
point and resumed reproduces an uninterrupted run's per-step losses bit for
bit; resuming onto another mesh works; two processes × 4 devices match one
process × 8; bad input fails with a clear message."""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import mim_stage1, mim_stage2
from mim_jax.convert.mim import load_hf_mim
from mim_jax.data.synthetic import write_synthetic
from mim_jax.train.checkpoint import restore_params
from mim_jax.train.export import export
from mim_jax.train.loop import train

REPO = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("data")
  write_synthetic(out, captions=64, conversations=64, seed=0)
  return out


def tiny(module, data_dir, **train):
  config = module.get_config("tiny")
  config.data.data_dir = str(data_dir)
  config.train.update(seq_len=64, batch_size=8, images_per_batch=16, log_every=4, **train)
  config.checkpoint.update(every_steps=4, keep_last=10)
  return config


def losses(workdir) -> dict[int, float]:
  lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def overrides(config, prefix="--config.") -> list[str]:
  flat = []

  def walk(node, path):
    for key, value in node.items():
      if hasattr(value, "items"):
        walk(value, f"{path}{key}.")
      elif not isinstance(value, (tuple, list)):
        flat.append(f"{prefix}{path}{key}={value}")

  walk(config, "")
  return flat


def command(config_file, workdir, config):
  return [sys.executable, "-m", "mim_jax.train", f"--config={config_file}:tiny", f"--workdir={workdir}",
          *overrides(config)]


def start(config_file, workdir, config, env=None):
  return subprocess.Popen(command(config_file, workdir, config), cwd=REPO, env={**os.environ, **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(workdir, step, process, timeout=600):
  target = Path(workdir) / "checkpoints" / str(step) / "commit_success.txt"
  deadline = time.time() + timeout
  while not target.exists():
    assert process.poll() is None, process.stdout.read()[-3000:]
    assert time.time() < deadline, "no checkpoint in time"
    time.sleep(0.2)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """An uninterrupted stage-2 run of 12 steps, checkpoints every 4."""
  workdir = tmp_path_factory.mktemp("reference")
  config = tiny(mim_stage2, data_dir, steps=12)
  train(config, workdir)
  config.tokenizer = str(workdir / "tokenizer")  # later runs reuse it instead of training their own
  return config, workdir


def mean_losses(result, first, last):
  values = [result["losses"][s] for s in sorted(result["losses"])]
  return np.mean(values[:first]), np.mean(values[-last:])


def test_tiny_stage2_learns(data_dir, tmp_path):
  start, end = mean_losses(train(tiny(mim_stage2, data_dir, steps=30), tmp_path), 5, 5)
  assert end < 0.7 * start, (start, end)


def test_tiny_stage1_learns(data_dir, tmp_path):
  # Stage 1 tunes only the image side of a frozen LLM, here a random one: the
  # images can steer it (a learned prefix), but it cannot learn the language.
  # ~0.09 nats in 30 steps; from a real Llama the captions are what it learns.
  start, end = mean_losses(train(tiny(mim_stage1, data_dir, steps=30), tmp_path), 5, 5)
  assert end < start - 0.05, (start, end)


def test_preempted_and_killed_runs_resume_bit_exactly(reference, tmp_path):
  config, reference_dir = reference
  expected = losses(reference_dir)
  assert sorted(expected) == list(range(1, 13))
  # SIGTERM: the run saves the step it reached and exits 143.
  process = start("configs/mim_stage2.py", tmp_path, config)
  wait_for_checkpoint(tmp_path, 4, process)
  process.send_signal(signal.SIGTERM)
  out, _ = process.communicate(timeout=600)
  assert process.returncode == 143, out[-3000:]
  saved = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert sorted(losses(tmp_path)) == list(range(1, saved + 1))
  # SIGKILL at a random moment after the next checkpoint: no chance to save anything.
  process = start("configs/mim_stage2.py", tmp_path, config)
  next_save = (saved // 4 + 1) * 4
  if next_save < 12:
    wait_for_checkpoint(tmp_path, next_save, process)
    time.sleep(random.Random().uniform(0, 2))
  process.kill()
  process.communicate()
  finished = subprocess.run(command("configs/mim_stage2.py", tmp_path, config), cwd=REPO, capture_output=True,
                            text=True, timeout=900)
  assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-3000:]
  assert losses(tmp_path) == expected  # every step, bit for bit


def test_resume_onto_another_mesh(reference, tmp_path):
  config, reference_dir = reference
  shutil.copytree(reference_dir / "checkpoints" / "4", tmp_path / "checkpoints" / "4")
  shutil.copy(reference_dir / "metrics.jsonl", tmp_path / "metrics.jsonl")
  config = config.copy_and_resolve_references()
  config.mesh.update(ici_data=2, ici_fsdp=2, ici_tensor=2)
  result = train(config, tmp_path)
  assert sorted(result["losses"]) == list(range(5, 13))
  expected = losses(reference_dir)
  np.testing.assert_allclose([result["losses"][s] for s in range(5, 13)], [expected[s] for s in range(5, 13)],
                             rtol=2e-4)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(data_dir, reference, tmp_path):
  config = tiny(mim_stage2, data_dir, steps=4)
  config.tokenizer = reference[0].tokenizer
  config.data.readers = 2
  single = train(config, tmp_path / "single")["losses"]
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "MIM_JAX_COORDINATOR": f"localhost:{free_port()}",
         "MIM_JAX_NUM_PROCESSES": "2"}
  processes = [start("configs/mim_stage2.py", tmp_path / "multi", config, {**env, "MIM_JAX_PROCESS_ID": str(i)})
               for i in range(2)]
  outputs = [p.communicate(timeout=900)[0] for p in processes]
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
  multi = losses(tmp_path / "multi")
  np.testing.assert_allclose([multi[s] for s in range(1, 5)], [single[s] for s in range(1, 5)], rtol=1e-5)


def test_bad_input(data_dir, reference, tmp_path):
  config, reference_dir = reference
  missing = config.copy_and_resolve_references()
  missing.data.sources.conversations.path = "not_there"
  with pytest.raises(FileNotFoundError, match="not_there does not exist; write it with"):
    train(missing, tmp_path / "missing")
  impossible = config.copy_and_resolve_references()
  impossible.mesh.update(ici_data=3, ici_fsdp=1)
  with pytest.raises(ValueError, match="mesh"):
    train(impossible, tmp_path / "mesh")
  other = config.copy_and_resolve_references()
  other.model.llm.num_layers = 3
  shutil.copytree(reference_dir / "checkpoints" / "4", tmp_path / "other" / "checkpoints" / "4")
  with pytest.raises(ValueError, match=r"different model \(model.llm.num_layers: checkpoint 2 vs config 3"):
    train(other, tmp_path / "other")
  typed = subprocess.run(command("configs/mim_stage2.py", tmp_path / "typed", config)[:4]
                         + ["--config.train.steps=many"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert typed.returncode != 0 and "train.steps" in typed.stderr


def test_params_only_export_loads_back(reference, tmp_path):
  _, reference_dir = reference
  out = export(str(reference_dir), str(tmp_path / "hf"), step=8, dtype="float32")
  params, meta = restore_params(reference_dir / "checkpoints", 8)
  assert meta["step"] == 8
  _, loaded = load_hf_mim(out)
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))
