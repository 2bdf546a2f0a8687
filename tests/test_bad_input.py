"""Bad checkpoints fail with messages that name the file or tensor and the fix."""
import json

import numpy as np
import pytest

from helpers import tiny_hf_llama
from mim_jax.convert.llama import load_hf_llama
from mim_jax.convert.safetensors_io import write_safetensors
from mim_jax.data.tokenizer import Tokenizer


def test_missing_directory_and_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json not found"):
    load_hf_llama(tmp_path / "nowhere")


def test_config_of_another_architecture(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
  with pytest.raises(ValueError, match=r"config.json: model_type is 'gpt2'.*reads Llama checkpoints"):
    load_hf_llama(tmp_path)


def test_unsupported_rope_type(tmp_path):
  tiny_hf_llama(tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="rope type 'yarn' is not supported"):
    load_hf_llama(tmp_path)


def test_missing_weights(tmp_path):
  tiny_hf_llama(tmp_path)
  (tmp_path / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="no safetensors weights"):
    load_hf_llama(tmp_path)


def test_missing_shard_listed_in_index(tmp_path):
  tiny_hf_llama(tmp_path)
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}))
  with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors is listed .* missing"):
    load_hf_llama(tmp_path)


def test_missing_tensor(tmp_path):
  tiny_hf_llama(tmp_path)
  write_safetensors(tmp_path / "model.safetensors", {"model.norm.weight": np.ones(32, np.float32)})
  with pytest.raises(KeyError, match="model.embed_tokens.weight is missing"):
    load_hf_llama(tmp_path)


def test_shape_mismatch_names_tensor_and_file(tmp_path):
  tiny_hf_llama(tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  config["intermediate_size"] = 80
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"model.safetensors: tensor model.layers.0.mlp.gate_proj.weight has shape "
                                       r"\(64, 32\), expected \(80, 32\)"):
    load_hf_llama(tmp_path)


def test_corrupt_safetensors(tmp_path):
  tiny_hf_llama(tmp_path)
  (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
  with pytest.raises(ValueError, match="is not a readable safetensors file"):
    load_hf_llama(tmp_path)


def test_tokenizer_directory_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer directory .* not found"):
    Tokenizer.load(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="neither tokenizer.model nor tokenizer.json"):
    Tokenizer.load(tmp_path)
