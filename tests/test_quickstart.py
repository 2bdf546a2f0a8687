"""The README's main job runs end to end and its export loads in transformers."""
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from mim_jax.convert.llama import load_hf_llama
from mim_jax.models.llama import Llama


@pytest.mark.slow
def test_quickstart_trains_exports_and_reloads(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "mim_jax.quickstart", "--config", "configs/quickstart.py", f"--workdir={tmp_path}",
       "--config.train.steps=60"], capture_output=True, text=True, timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", result.stdout).groups())
  assert last < first - 1.0
  assert "reloaded logits max |diff| = 0.00e+00" in result.stdout
  assert "sample: " in result.stdout

  export = tmp_path / "hf_export"
  model = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(export)
  ids = tokenizer("A red bicycle <image>", add_special_tokens=False)["input_ids"]
  cfg, params = load_hf_llama(export)
  with torch.no_grad():
    expected = model(torch.tensor([ids])).logits.numpy()
  np.testing.assert_allclose(Llama(cfg).apply({"params": params}, np.asarray([ids])), expected, atol=1e-4)
