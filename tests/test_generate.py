"""Jitted greedy generation equals transformers' generate, token for token."""
import numpy as np
import torch
import jax
import jax.numpy as jnp

from helpers import tiny_hf_llama
from mim_jax.convert.llama import load_hf_llama
from mim_jax.infer.generate import SamplingConfig, generate, sample_token


def test_greedy_matches_transformers_generate(tmp_path):
  hf = tiny_hf_llama(tmp_path, kv_heads=2, vocab=96)
  cfg, params = load_hf_llama(tmp_path)
  rng = np.random.RandomState(0)
  prompts = [rng.randint(3, 96, 9).tolist(), rng.randint(3, 96, 5).tolist()]
  # Stop on a token the model actually emits, so stopping is exercised too.
  sampling = SamplingConfig(max_new_tokens=24, stop_ids=(2,), pad_id=0)
  ours = generate(cfg, params, prompts, sampling)
  for prompt, got in zip(prompts, ours):
    with torch.no_grad():
      out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                        max_new_tokens=24, do_sample=False, eos_token_id=2, pad_token_id=0)
    expected = out[0, len(prompt):].tolist()
    assert got == expected[: len(got)] and len(got) == len(expected)
  # Batched and left-padded gives the same as one prompt at a time.
  assert ours == [generate(cfg, params, [p], sampling)[0] for p in prompts]


def test_stop_token_ends_a_row_early(tmp_path):
  tiny_hf_llama(tmp_path, vocab=96)
  cfg, params = load_hf_llama(tmp_path)
  free = generate(cfg, params, [[5, 6, 7]], SamplingConfig(max_new_tokens=10, stop_ids=(-1,)))[0]
  stop_at = free[3]
  stopped = generate(cfg, params, [[5, 6, 7]], SamplingConfig(max_new_tokens=10, stop_ids=(stop_at,)))[0]
  assert stopped == free[: free.index(stop_at) + 1]


def test_top_p_and_temperature():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))
  keys = jax.random.split(jax.random.key(0), 1)[0]
  # top_p=0.6 keeps the two most likely tokens, renormalised to 0.625 / 0.375.
  draws = np.asarray(sample_token(logits, keys, temperature=1.0, top_p=0.6))
  assert set(np.unique(draws)) == {0, 1}
  assert abs((draws == 0).mean() - 0.625) < 0.03
  # A tiny top_p is greedy; temperature 1 without top_p reaches every token.
  assert set(np.asarray(sample_token(logits, keys, 1.0, 1e-6)).tolist()) == {0}
  assert set(np.unique(np.asarray(sample_token(logits, keys, 1.0, 1.0)))) == {0, 1, 2, 3}
  assert set(np.asarray(sample_token(logits, keys, 0.0, 1.0)).tolist()) == {0}
