"""The `qformer` image-medium ablation (spec §2) through the training loop:
configs/ablations.py:qformer_medium,tiny on synthetic TFDS data with a tiny
random SD pipeline's text encoder as the regression target. Both loss terms
fall; gradient accumulation gives the one-shot step's losses; configuration
mistakes fail before any compile."""
import json
from pathlib import Path

import jax
import numpy as np
import pytest

import diffusion_helpers
from configs import ablations, mim_stage2
from mim_jax.convert.mim import load_hf_mim
from mim_jax.data.synthetic import write_synthetic
from mim_jax.train.checkpoint import restore_params
from mim_jax.train.export import export
from mim_jax.train.loop import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("data")
  write_synthetic(out, captions=16, conversations=64, seed=0)
  return out


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("sd") / "sd"
  diffusion_helpers.sd_pipeline(out)  # SD 1.x-style; its text encoder writes 77 × 32
  return out


def medium_config(data_dir, sd_dir, **train):
  config = ablations.get_config("qformer_medium,tiny")
  config.data.data_dir = str(data_dir)
  config.medium_targets = str(sd_dir)
  config.train.update(batch_size=8, images_per_batch=16, log_every=5, **train)
  config.checkpoint.update(every_steps=100)
  return config


def history(workdir) -> list[dict]:
  return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_qformer_medium_ablation_trains(data_dir, sd_dir, tmp_path):
  train(medium_config(data_dir, sd_dir, steps=30), tmp_path)
  records = history(tmp_path)
  assert all(r["images"] > 8 for r in records)  # assistant images too: ~1.7 per conversation
  assert [r["step"] for r in records] == list(range(1, 31))
  medium, lm = (np.asarray([r[k] for r in records]) for k in ("medium_loss", "lm_loss"))
  np.testing.assert_allclose([r["loss"] for r in records], lm + medium, rtol=1e-5)
  assert medium[-5:].mean() < 0.5 * medium[:5].mean(), medium
  assert lm[-5:].mean() < 0.8 * lm[:5].mean(), lm
  # The params-only export carries the medium, so the chat CLI can render from it.
  config, loaded = load_hf_mim(export(str(tmp_path), str(tmp_path / "hf"), dtype="float32"))
  params, _ = restore_params(tmp_path / "checkpoints", 30)
  assert config.medium.kind == "qformer"
  jax.tree.map(np.testing.assert_array_equal, loaded["image_medium"], jax.tree.map(np.asarray, params["image_medium"]))


def test_accumulated_medium_loss_equals_the_one_shot_step(data_dir, sd_dir, tmp_path):
  runs = {}
  for accum in (1, 2):
    config = medium_config(data_dir, sd_dir, steps=2, grad_accum_steps=accum, dropout=False)
    config.tokenizer = str(tmp_path / "1" / "tokenizer") if accum == 2 else ""
    train(config, tmp_path / str(accum))
    runs[accum] = history(tmp_path / str(accum))
  for one, two in zip(runs[1], runs[2]):
    for key in ("loss", "lm_loss", "medium_loss"):
      np.testing.assert_allclose(two[key], one[key], rtol=2e-5, err_msg=f"step {one['step']} {key}")


def test_medium_configuration_mistakes_are_clear(data_dir, sd_dir, tmp_path):
  unset = medium_config(data_dir, sd_dir)
  unset.medium_targets = ""
  with pytest.raises(ValueError, match="set --config.medium_targets=<diffusers SD 1.x/2.x directory>"):
    train(unset, tmp_path / "unset")
  xl = medium_config(data_dir, sd_dir)
  diffusion_helpers.sdxl_pipeline(tmp_path / "sdxl")
  xl.medium_targets = str(tmp_path / "sdxl")
  with pytest.raises(ValueError, match="is an SDXL pipeline"):
    train(xl, tmp_path / "xl")
  wide = medium_config(data_dir, sd_dir)
  wide.model.medium.cond_dim = 64
  with pytest.raises(ValueError, match=r"writes \(77, 32\) per caption but model.medium has cond_length 77, cond_dim "
                                       r"64; set .*cond_dim=32"):
    train(wide, tmp_path / "wide")
  untrained = medium_config(data_dir, sd_dir)
  untrained.trainable = mim_stage2.get_config("tiny").trainable
  with pytest.raises(ValueError, match="no `trainable` pattern matches"):
    train(untrained, tmp_path / "untrained")
  language = mim_stage2.get_config("tiny")
  language.data.data_dir, language.medium_targets = str(data_dir), str(sd_dir)
  with pytest.raises(ValueError, match="model.medium.kind is 'language'"):
    train(language, tmp_path / "language")
