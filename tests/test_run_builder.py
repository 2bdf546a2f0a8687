"""One run builder (train/setup.py): training and the AOT fit proof compile the
same step from the same batch spec, and every run config, the text-only Llama
included, trains through `python -m mim_jax.train`."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import transformers

from configs import llama_lm, mim_stage2
from mim_jax.data.synthetic import write_synthetic
from mim_jax.train import loop
from mim_jax.train.loop import train
from mim_jax.train.setup import build_run

REPO = Path(__file__).parents[1]


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _spy_on_training(monkeypatch) -> dict:
  """Records the Run train() builds and the first batch it puts on the devices."""
  seen = {}

  def spy_build_run(config):
    seen["run"] = run = build_run(config)
    return run

  def spy_to_global(arrays, sharding):
    batch = real_to_global(arrays, sharding)
    seen.setdefault("batch", _abstract(batch))
    return batch

  real_to_global = loop.to_global
  monkeypatch.setattr(loop, "build_run", spy_build_run)
  monkeypatch.setattr(loop, "to_global", spy_to_global)
  return seen


def test_training_and_the_aot_proof_lower_the_same_step(tmp_path, monkeypatch):
  write_synthetic(tmp_path / "data", captions=8, conversations=16, seed=0)
  config = mim_stage2.get_config("tiny")
  config.data.data_dir = str(tmp_path / "data")
  config.train.update(steps=1, seq_len=64, batch_size=8, images_per_batch=16)
  seen = _spy_on_training(monkeypatch)
  train(config, tmp_path / "run")
  run = seen["run"]
  trained = run.jit_step().lower(run.abstract_state(), seen["batch"]).as_text()
  # What launch/aot_compile.py compiles: the builder's step for the spec's abstract batch.
  assert seen["batch"] == run.abstract_batch()
  assert build_run(config, jax.devices()).lower().as_text() == trained


def _tiny_lm(**train_fields):
  config = llama_lm.get_config("tiny")
  config.train.update(seq_len=32, batch_size=8, log_every=2, **train_fields)
  config.optimizer.update(learning_rate=3e-3, warmup_steps=2)
  config.checkpoint.update(every_steps=3)
  return config


def _losses(workdir) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in map(json.loads, (Path(workdir) / "metrics.jsonl").read_text().splitlines())}


def test_text_only_llama_resumes_exactly(tmp_path):
  train(_tiny_lm(steps=6), tmp_path / "straight")
  train(_tiny_lm(steps=3), tmp_path / "resumed")
  train(_tiny_lm(steps=6), tmp_path / "resumed")
  assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")


@pytest.mark.slow
def test_llama_lm_trains_and_exports_through_the_cli(tmp_path):
  workdir, export = tmp_path / "run", tmp_path / "hf"
  common = dict(cwd=REPO, capture_output=True, text=True, timeout=600)
  trained = subprocess.run([sys.executable, "-m", "mim_jax.train", "--config=configs/llama_lm.py:tiny",
                            f"--workdir={workdir}", "--config.train.steps=30", "--config.train.seq_len=32",
                            "--config.optimizer.learning_rate=3e-3", "--config.optimizer.warmup_steps=3"], **common)
  assert trained.returncode == 0, trained.stderr[-3000:]
  losses = _losses(workdir)
  assert losses[30] < losses[1] - 0.5
  exported = subprocess.run([sys.executable, "-m", "mim_jax.train.export", f"--workdir={workdir}", f"--out={export}",
                             "--dtype=float32"], **common)
  assert exported.returncode == 0, exported.stderr[-3000:]
  model = transformers.AutoModelForCausalLM.from_pretrained(export)
  assert model.config.vocab_size == llama_lm.get_config("tiny").model.vocab_size
  assert np.isfinite(model(**transformers.AutoTokenizer.from_pretrained(export)("a red bicycle", return_tensors="pt"))
                     .logits.detach().numpy()).all()
