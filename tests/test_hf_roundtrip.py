"""HF → ours → HF: exported directories load in transformers with identical logits."""
import json

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
import jax
import jax.numpy as jnp

from helpers import tiny_hf_llama
from mim_jax.convert.llama import load_hf_llama, save_hf_llama
from mim_jax.convert.safetensors_io import CheckpointReader
from mim_jax.data.tokenizer import Tokenizer, train_sentencepiece
from mim_jax.models.llama import Llama
from mim_jax.models.vocab import resize_vocab

TEXT = [f"a photo of {n} {animal} sitting on a {thing} near the window"
        for n in range(40) for animal, thing in [("cats", "sofa"), ("dogs", "chair"), ("birds", "fence")]]


def _hf_logits(directory, tokens, dtype=torch.float32):
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.float().numpy(), model


@pytest.mark.parametrize("scan_layers", [True, False])
def test_roundtrip_is_exact(tmp_path, scan_layers):
  original = tiny_hf_llama(tmp_path / "hf", kv_heads=2, rope="llama3")
  cfg, params = load_hf_llama(tmp_path / "hf", scan_layers=scan_layers)
  save_hf_llama(tmp_path / "out", cfg, params, dtype="float32", max_shard_bytes=40_000)
  assert (tmp_path / "out" / "model.safetensors.index.json").exists()  # sharded on purpose
  tokens = np.random.RandomState(0).randint(0, 96, (2, 20))
  reloaded, model = _hf_logits(tmp_path / "out", tokens)
  with torch.no_grad():
    expected = original(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_array_equal(reloaded, expected)
  for name, weight in original.state_dict().items():
    np.testing.assert_array_equal(model.state_dict()[name].numpy(), weight.numpy(), err_msg=name)


def test_roundtrip_after_vocab_resize_with_tokenizer(tmp_path):
  tiny_hf_llama(tmp_path / "hf", vocab=320)
  tokenizer = Tokenizer.load(train_sentencepiece(TEXT, tmp_path / "tok", vocab_size=320))
  assert (tokenizer.image_id, tokenizer.start_id, tokenizer.end_id) == (320, 321, 322)
  cfg, params = load_hf_llama(tmp_path / "hf")
  cfg, params = resize_vocab(cfg, params, tokenizer.vocab_size, jax.random.key(0))
  assert cfg.vocab_size == 323
  save_hf_llama(tmp_path / "out", cfg, params, tokenizer=tokenizer, dtype="float32")

  tokens = [tokenizer.encode("a photo of cats <image> then <start> dogs <end>")]
  assert {320, 321, 322} <= set(tokens[0])
  reloaded, _ = _hf_logits(tmp_path / "out", tokens)
  ours = np.asarray(Llama(cfg).apply({"params": params}, jnp.asarray(tokens)))
  assert np.abs(reloaded - ours).max() <= 1e-4
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  assert hf_tokenizer.convert_tokens_to_ids(["<image>", "<start>", "<end>"]) == [320, 321, 322]
  generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
  assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)
  # A saved MIM tokenizer loads back with the same ids, without adding tokens twice.
  again = Tokenizer.load(tmp_path / "out")
  assert (again.vocab_size, again.image_id) == (323, 320)


def test_bfloat16_export_reads_back_exactly(tmp_path):
  tiny_hf_llama(tmp_path / "hf")
  cfg, params = load_hf_llama(tmp_path / "hf")
  save_hf_llama(tmp_path / "out", cfg, params, dtype="bfloat16")
  reader = CheckpointReader(tmp_path / "out")
  ours = reader.get("model.layers.1.mlp.down_proj.weight")
  assert ours.dtype == ml_dtypes.bfloat16
  expected = np.asarray(params["layers"]["mlp"]["down_kernel"][1]).T.astype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(ours, expected)
  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.bfloat16)
  hf_weight = model.model.layers[1].mlp.down_proj.weight.detach().float().numpy()
  np.testing.assert_array_equal(hf_weight, expected.astype(np.float32))


@pytest.mark.parametrize("init", ["normal", "mean"])
def test_resize_vocab_keeps_old_rows(init):
  from configs import models
  from mim_jax.config import model_config
  import ml_collections

  cfg = model_config(ml_collections.ConfigDict({"model": models.llama("tiny")}))
  from mim_jax.models.llama import init_params

  params = init_params(cfg, jax.random.key(0))
  new_cfg, new = resize_vocab(cfg, params, cfg.vocab_size + 3, jax.random.key(1), init=init)
  np.testing.assert_array_equal(new["embedding"][: cfg.vocab_size], params["embedding"])
  np.testing.assert_array_equal(new["lm_head"][:, : cfg.vocab_size], params["lm_head"])
  rows = np.asarray(new["embedding"][cfg.vocab_size:])
  if init == "mean":
    np.testing.assert_allclose(rows, np.broadcast_to(np.asarray(params["embedding"]).mean(0), rows.shape), atol=1e-6)
  else:
    assert 0.005 < rows.std() < 0.05 and not np.allclose(rows[0], rows[1])
  assert new_cfg.vocab_size == cfg.vocab_size + 3
