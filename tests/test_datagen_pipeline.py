"""`python -m data_gen run` end to end, offline: killed with SIGKILL in the
middle of generation and rerun, it writes exactly what an uninterrupted run
writes."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ["run", "--source", "synthetic:40", "--num-clusters", "1", "--num-conversations", "24",
       "--tuples-per-shard", "10", "--no-tfds"]
# The run to kill asks one request a second (a one-request bucket): the kill lands after shard 0 (10 records) with
# ~13 s of generation still ahead, so a loaded machine cannot finish it first. Rate limits do not change the output.
SLOW = [*RUN, "--llm", "requests_per_minute=60", "--llm", "rate_burst_s=1"]


def _env():
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             JAX_COMPILATION_CACHE_DIR=os.path.expanduser(os.environ.get("MIM_JAX_CACHE", "~/.cache/mim_jax/jit")))
  return env


def _data_gen(work, *args, **kwargs):
  return subprocess.Popen([sys.executable, "-m", "data_gen", *args, "--work", str(work)], cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _finish(process, timeout=300):
  output, _ = process.communicate(timeout=timeout)
  assert process.returncode == 0, output
  return output


def _outputs(work: Path) -> dict:
  files = sorted(work.glob("conversations/*")) + sorted(work.glob("samples/*")) + [work / "clusters.json",
                                                                                    work / "export/conversations.json"]
  return {str(path.relative_to(work)): path.read_bytes() for path in files}


def _partial_records(work: Path) -> int:
  return sum(path.read_bytes().count(b"\n") for path in work.glob("conversations/*.partial"))


def test_sigkill_mid_generation_then_rerun_equals_a_clean_run(tmp_path):
  clean, killed = tmp_path / "clean", tmp_path / "killed"
  output = _finish(_data_gen(clean, *RUN))
  assert "== generate: 24 records ==" in output and "== export:" in output

  # Start from the clean run's ingest and embed shards: the rerun must skip them, and the run reaches generation fast.
  killed.mkdir()
  for name in ("pairs", "images", "embeddings", "tiny_clip"):
    shutil.copytree(clean / name, killed / name)
  process = _data_gen(killed, *SLOW)
  deadline = time.monotonic() + 240
  while (_partial_records(killed) < 1 or not list(killed.glob("conversations/*.jsonl"))) and process.poll() is None:
    assert time.monotonic() < deadline, "generation never got under way"
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-generation"
  assert not (killed / "export").exists()

  output = _finish(_data_gen(killed, *RUN))
  assert "shards done before this run         1" in output  # generation shard 0 kept from the killed run
  resumed, expected = _outputs(killed), _outputs(clean)
  assert sorted(resumed) == sorted(expected)  # no log or temporary file left behind
  assert resumed == expected


def test_a_step_without_its_input_names_the_step_to_run(tmp_path):
  process = _data_gen(tmp_path, "sample")
  output, _ = process.communicate(timeout=120)
  assert process.returncode == 2
  assert f"run `python -m data_gen cluster --work {tmp_path}` first" in output


@pytest.mark.parametrize("args, message", [
    (["ingest", "--source", "csv:x"], "KIND:ARGUMENT"),
    (["embed", "--clip", "/nowhere"], "has no config.json"),
])
def test_bad_flags_fail_with_a_clear_message(tmp_path, args, message):
  process = _data_gen(tmp_path, *args)
  output, _ = process.communicate(timeout=120)
  assert process.returncode == 2 and message in output
