"""Our Llama equals transformers' LlamaForCausalLM, loaded through our HF loader."""
import numpy as np
import pytest
import torch
import jax.numpy as jnp

from helpers import tiny_hf_llama
from mim_jax.convert.llama import load_hf_llama
from mim_jax.models.llama import Llama

CASES = [
    # (rope, tied, kv_heads): MHA and GQA, tied and untied, every RoPE scaling type.
    ("default", False, 4),
    ("default", True, 2),
    ("linear", False, 2),
    ("llama3", False, 4),
    ("llama3", True, 1),
]


@pytest.mark.parametrize("rope,tied,kv_heads", CASES)
@pytest.mark.parametrize("scan_layers", [True, False])
def test_logits_match_transformers(tmp_path, rope, tied, kv_heads, scan_layers):
  hf = tiny_hf_llama(tmp_path, rope=rope, tied=tied, kv_heads=kv_heads)
  assert (hf.config.rope_parameters or {}).get("rope_type", "default") == rope
  cfg, params = load_hf_llama(tmp_path, scan_layers=scan_layers)
  assert (cfg.rope_scaling_type, cfg.tie_embeddings, cfg.num_kv_heads) == (rope, tied, kv_heads)
  # Positions past original_max_position_embeddings (64) exercise llama3's long-range branch.
  tokens = np.random.RandomState(0).randint(0, 96, (2, 80))
  with torch.no_grad():
    expected = hf(torch.tensor(tokens)).logits.numpy()
  got = np.asarray(Llama(cfg).apply({"params": params}, jnp.asarray(tokens)))
  assert np.abs(got - expected).max() <= 1e-4


def test_explicit_positions_and_mask_match_transformers(tmp_path):
  """A padded batch with explicit position ids and a 4-D mask, as MIM will feed."""
  hf = tiny_hf_llama(tmp_path, kv_heads=2)
  cfg, params = load_hf_llama(tmp_path)
  tokens = np.random.RandomState(1).randint(0, 96, (2, 12))
  positions = np.stack([np.arange(12), np.r_[0, 0, 0, np.arange(9)]])
  valid = np.ones((2, 12), bool)
  valid[1, :3] = False
  mask = np.tril(np.ones((12, 12), bool))[None] & valid[:, None, :]
  mask[1, :3, :3] |= np.eye(3, dtype=bool)  # padding rows attend to themselves only, as HF does
  with torch.no_grad():
    bias = torch.where(torch.tensor(mask)[:, None], 0.0, torch.finfo(torch.float32).min)
    expected = hf(torch.tensor(tokens), attention_mask=bias, position_ids=torch.tensor(positions)).logits.numpy()
  got = np.asarray(Llama(cfg).apply({"params": params}, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask)))
  np.testing.assert_allclose(got[valid], expected[valid], atol=1e-4)
