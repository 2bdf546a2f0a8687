"""KV-cache prefill/decode equals the full forward; rollback is exact."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp

from mim_jax.models.llama import Llama, init_params
from mim_jax.models.llama_config import LlamaConfig

CFG = LlamaConfig(vocab_size=64, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                  init_std=0.5)


@pytest.fixture(scope="module", params=[True, False], ids=["scan", "loop"])
def model_and_params(request):
  import dataclasses

  cfg = dataclasses.replace(CFG, scan_layers=request.param)
  return Llama(cfg), init_params(cfg, jax.random.key(0))


def _tokens(n, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randint(0, 64, (2, n)), jnp.int32)


def _positions(start, n):
  return jnp.broadcast_to(jnp.arange(start, start + n, dtype=jnp.int32), (2, n))


def test_prefill_then_decode_equals_full_forward(model_and_params):
  model, params = model_and_params
  tokens = _tokens(12)
  full = model.apply({"params": params}, tokens)
  cache = model.init_cache(2, 16)
  logits, cache = model.apply({"params": params}, tokens[:, :7], cache=cache)
  pieces = [logits]
  for i in range(7, 12):
    logits, cache = model.apply({"params": params}, tokens[:, i:i + 1], _positions(i, 1), cache=cache)
    pieces.append(logits)
  np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5)
  assert int(cache.length) == 12 and bool(cache.valid_bs[:, :12].all()) and not bool(cache.valid_bs[:, 12:].any())


def test_rollback_then_decode_equals_decoding_from_scratch(model_and_params):
  model, params = model_and_params
  prefix, detour, resume = _tokens(6, 1), _tokens(5, 2), _tokens(4, 3)
  # Path A: prefix, a detour of 5 tokens (a `<start> … <end>` span), roll back, resume.
  cache = model.init_cache(2, 16)
  _, cache = model.apply({"params": params}, prefix, cache=cache)
  _, cache = model.apply({"params": params}, detour, _positions(6, 5), cache=cache)
  cache = cache.rollback(6)
  logits_a, cache_a = model.apply({"params": params}, resume, _positions(6, 4), cache=cache)
  # Path B: prefix then resume, never having seen the detour.
  cache = model.init_cache(2, 16)
  _, cache = model.apply({"params": params}, prefix, cache=cache)
  logits_b, cache_b = model.apply({"params": params}, resume, _positions(6, 4), cache=cache)
  np.testing.assert_allclose(logits_a, logits_b, atol=1e-6)
  np.testing.assert_array_equal(cache_a.valid_bs, cache_b.valid_bs)
  np.testing.assert_allclose(cache_a.k_lbskh[:, :, :10], cache_b.k_lbskh[:, :, :10], atol=1e-6)
  # And both equal one full forward of prefix + resume.
  full = model.apply({"params": params}, jnp.concatenate([prefix, resume], axis=1))
  np.testing.assert_allclose(logits_a, full[:, 6:], atol=1e-5)


def test_left_padded_prefill_equals_unpadded(model_and_params):
  model, params = model_and_params
  tokens = _tokens(8)
  alone = model.apply({"params": params}, tokens[1:, 3:])
  padded = tokens.at[1, :3].set(0)
  valid = jnp.ones((2, 8), bool).at[1, :3].set(False)
  positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
  cache = model.init_cache(2, 10)
  logits, cache = model.apply({"params": params}, padded, positions, valid_bt=valid, cache=cache)
  np.testing.assert_allclose(logits[1, 3:], alone[0], atol=1e-5)
  assert not bool(cache.valid_bs[1, :3].any())


def test_cache_overflow_is_not_silent():
  with pytest.raises(ValueError, match="scalar"):
    model = Llama(CFG)
    params = init_params(CFG, jax.random.key(0))
    cache = model.init_cache(2, 8)
    cache = cache.replace(length=jnp.zeros((2,), jnp.int32))
    model.apply({"params": params}, _tokens(2), cache=cache)


def test_per_row_rollback_and_compaction_equal_each_row_from_scratch(model_and_params):
  """Row 0 rolls a 3-token detour back while row 1 keeps its 3 tokens; after
  compaction both resume at their own positions as if alone."""
  model, params = model_and_params
  prefix, middle, resume = _tokens(6, 1), _tokens(3, 2), _tokens(4, 3)
  cache = model.init_cache(2, 16)
  _, cache = model.apply({"params": params}, prefix, cache=cache)
  _, cache = model.apply({"params": params}, middle, _positions(6, 3), cache=cache)
  cache = cache.rollback_rows(jnp.asarray([6, 0]), jnp.asarray([True, False])).compact()
  assert int(cache.length) == 9 and cache.valid_bs[:, :10].sum(axis=1).tolist() == [6, 9]
  positions = jnp.asarray([[6, 7, 8, 9], [9, 10, 11, 12]], jnp.int32)
  logits, cache = model.apply({"params": params}, resume, positions, cache=cache)
  row0 = model.apply({"params": params}, jnp.concatenate([prefix, resume], axis=1)[:1])
  row1 = model.apply({"params": params}, jnp.concatenate([prefix, middle, resume], axis=1)[1:])
  np.testing.assert_allclose(logits[0], row0[0, 6:], atol=1e-5)
  np.testing.assert_allclose(logits[1], row1[0, 9:], atol=1e-5)
  # Row 0's resumed keys sit after a 3-slot gap (slots 6..8 invalid), row 1's right after its own.
  assert cache.valid_bs[0].tolist()[:13] == [True] * 6 + [False] * 3 + [True] * 4
