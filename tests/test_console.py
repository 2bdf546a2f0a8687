"""The newcomer's console: a tiny run prints our lines and nothing of the
libraries' (no orbax INFO, no libtpu `E0000` off TPU); Ctrl-C saves a
checkpoint, exits 130 and the rerun continues bit for bit; the ETA leaves
the compile step out; --help and --print_config exit 0 without training."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import ml_collections
import numpy as np
import optax
import pytest

from configs import llama_lm
from mim_jax.train import loop, metrics

REPO = Path(__file__).parents[1]
TINY = ["--config=configs/llama_lm.py:tiny", "--config.train.seq_len=32", "--config.train.batch_size=8"]
# What a user's shell has: conftest quiets TensorFlow and pins JAX to the CPU for the tests themselves.
USER_ENV = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL")}


def train_command(workdir, *flags):
  return [sys.executable, "-m", "mim_jax.train", *TINY, f"--workdir={workdir}", *flags]


def losses(workdir) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in map(json.loads, (Path(workdir) / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_tiny_run_prints_our_lines_only(tmp_path):
  run = subprocess.run(train_command(tmp_path, "--config.train.steps=20", "--config.train.log_every=5",
                                     "--config.checkpoint.every_steps=10"),
                       cwd=REPO, env=USER_ENV, capture_output=True, text=True, timeout=600)
  lines = (run.stdout + run.stderr).splitlines()
  assert run.returncode == 0, "\n".join(lines[-40:])
  step_lines = [line for line in lines if re.search(r" step \d+/20 loss", line)]
  assert len(step_lines) == 4
  # Start: text windows, the MFU hint, mesh, step compiled; end: the data counts.
  assert len(lines) <= 2 * len(step_lines) + 6, "\n".join(lines)
  assert not [line for line in lines if "E0000" in line or "orbax" in line or "checkpoint_handler" in line]
  assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in lines), "\n".join(lines)
  assert sum("peak_flops_per_device" in line for line in lines) == 1
  assert "ETA" in step_lines[0] and "MFU" not in step_lines[0]


@pytest.mark.slow
def test_quickstart_console_is_quiet_too(tmp_path):
  run = subprocess.run([sys.executable, "-m", "mim_jax.quickstart", "--config=configs/quickstart.py", f"--workdir={tmp_path}",
                        "--config.train.steps=4", "--config.train.log_every=2", "--config.sample.max_new_tokens=4"],
                       cwd=REPO, env=USER_ENV, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  logged = run.stderr.splitlines()
  assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in logged), run.stderr
  assert sum("steps 0 → 4" in line for line in logged) == 1 and not any("resumed" in line for line in logged)
  assert len(logged) <= 2 * 2 + 6 and "sample: " in run.stdout


@pytest.mark.slow
def test_verbose_brings_the_library_logs_back(tmp_path):
  verbose = subprocess.run(train_command(tmp_path, "--config.train.steps=2", "--config.checkpoint.every_steps=1",
                                         "--verbose"), cwd=REPO, env=USER_ENV, capture_output=True, text=True, timeout=600)
  assert verbose.returncode == 0, verbose.stderr[-3000:]
  assert "oneDNN" in verbose.stderr  # TensorFlow's C++ start-up note
  assert re.search(r"^\d\d:\d\d:\d\d \[checkpoint_manager\] ", verbose.stderr, re.M)  # orbax's INFO, with its file


@pytest.mark.slow
def test_ctrl_c_saves_exits_130_and_resumes_bit_exactly(tmp_path):
  steps = ["--config.train.steps=300", "--config.train.log_every=50", "--config.checkpoint.every_steps=10",
           "--config.checkpoint.keep_last=40"]
  reference = subprocess.run(train_command(tmp_path / "reference", *steps), cwd=REPO, capture_output=True, text=True,
                             timeout=600)
  assert reference.returncode == 0, reference.stderr[-3000:]
  steps.append(f"--config.tokenizer={tmp_path / 'reference' / 'tokenizer'}")  # the same ids, without training it again
  workdir = tmp_path / "interrupted"
  process = subprocess.Popen(train_command(workdir, *steps), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
  first = workdir / "checkpoints" / "10" / "commit_success.txt"
  deadline = time.time() + 600
  while not first.exists():
    assert process.poll() is None, process.stdout.read()[-3000:]
    assert time.time() < deadline, "no checkpoint in time"
    time.sleep(0.05)
  process.send_signal(signal.SIGINT)
  out, _ = process.communicate(timeout=600)
  assert process.returncode == 130, out[-3000:]
  saved = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert 10 <= saved < 300 and f"SIGINT: saved step {saved}" in out
  assert sorted(losses(workdir)) == list(range(1, saved + 1))
  resumed = subprocess.run(train_command(workdir, *steps), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed at step {saved} in a new process" in resumed.stderr
  assert losses(workdir) == losses(tmp_path / "reference")  # every step, bit for bit


def test_eta_leaves_the_compile_step_out(tmp_path, monkeypatch, caplog):
  clock = types.SimpleNamespace(now=0.0)
  monkeypatch.setattr(metrics, "time", types.SimpleNamespace(time=lambda: clock.now))
  caplog.set_level("INFO", logger="mim_jax.train")
  logger = metrics.MetricsLogger(tmp_path, total_steps=100, flops_per_step=1e9, peak=None)
  history = loop._History(tmp_path / "metrics.jsonl", 0)
  window = {"steps": 0, "tokens": 0.0, "images": 0.0, "timing": False}
  train_cfg = ml_collections.ConfigDict(dict(log_every=10, steps=100))
  values = {"loss": np.float32(2.0), "grad_norm": np.float32(1.0), "tokens": np.float32(256.0),
            "grads_finite": np.array([True])}
  for step in range(1, 21):
    # Step 1 ends after 30 s of compiling, then 0.5 s a step, and a 5 s checkpoint save inside step 15.
    clock.now = 30.0 + 0.5 * (step - 1) + (5.0 if step >= 15 else 0.0)
    loop._finish((step, values), history, logger, optax.constant_schedule(1e-3), window, train_cfg, {"params": {}})
  logger.close()
  line, later = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("step 10/", "step 20/"))]
  # Steps 2..10 over 4.5 s: 0.5 s/step, 90 to go. With the compile step in: 3.45 s/step, ETA 5m10s.
  assert "0.50s/step" in line and "ETA 0m45s" in line, line
  # The save window reads 1.00 s/step, but the ETA averages since the clock started: 14.5 s / 19 steps × 80.
  assert "1.00s/step" in later and "ETA 1m01s" in later, later
  hints = [r.getMessage() for r in caplog.records if "peak_flops_per_device" in r.getMessage()]
  assert len(hints) == 1 and "MFU" not in line


def test_first_step_line_has_no_rate_and_mfu_shows_with_a_peak(tmp_path, monkeypatch, caplog):
  clock = types.SimpleNamespace(now=0.0)
  monkeypatch.setattr(metrics, "time", types.SimpleNamespace(time=lambda: clock.now))
  caplog.set_level("INFO", logger="mim_jax.train")
  logger = metrics.MetricsLogger(tmp_path, total_steps=3, flops_per_step=1e12, peak=1e12)
  window = {"steps": 0, "tokens": 0.0, "images": 0.0, "timing": False}
  train_cfg = ml_collections.ConfigDict(dict(log_every=1, steps=3))
  values = {"loss": np.float32(2.0), "grad_norm": np.float32(1.0), "tokens": np.float32(256.0),
            "grads_finite": np.array([True])}
  history = loop._History(tmp_path / "metrics.jsonl", 0)
  for step in (1, 2):
    clock.now = 20.0 * step
    loop._finish((step, values), history, logger, optax.constant_schedule(1e-3), window, train_cfg, {"params": {}})
  logger.close()
  first, second = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
  assert "first step (includes compiling" in first and "ETA" not in first
  assert "20.00s/step" in second and "MFU" in second and "ETA 0m20s" in second


@pytest.mark.parametrize("module", ["mim_jax.train", "mim_jax.quickstart"])
def test_help_exits_0_and_print_config_shows_the_fields(module, tmp_path):
  helped = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert helped.returncode == 0, helped.stderr[-3000:]
  assert "--print_config" in helped.stdout and "--config.a.b=value" in helped.stdout
  config = "configs/llama_lm.py:tiny" if module == "mim_jax.train" else "configs/quickstart.py"
  printed = subprocess.run([sys.executable, "-m", module, f"--config={config}", "--config.train.steps=7",
                            f"--workdir={tmp_path / 'run'}", "--print_config"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
  assert printed.returncode == 0, printed.stderr[-3000:]
  assert re.search(r"^  steps: 7$", printed.stdout, re.M) and "seq_len:" in printed.stdout
  assert not (tmp_path / "run").exists()


def test_print_config_matches_the_config_file():
  printed = subprocess.run([sys.executable, "-m", "mim_jax.train", *TINY, "--print_config"], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
  expected = llama_lm.get_config("tiny")
  expected.train.update(seq_len=32, batch_size=8)
  assert printed.returncode == 0 and printed.stdout.strip() == str(expected).strip()
