"""Our EVA ViT equals transformers' Blip2VisionModel, loaded through convert/blip2."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from helpers import TINY_BLIP2, randomize_blip2_
from mim_jax.convert import blip2
from mim_jax.convert.safetensors_io import CheckpointReader, write_safetensors
from mim_jax.models import eva_vit
from mim_jax.models.eva_vit import EvaViT, VisionConfig


@pytest.fixture(scope="module")
def hf_vision(tmp_path_factory):
  directory = tmp_path_factory.mktemp("vision")
  config = transformers.Blip2VisionConfig(**TINY_BLIP2["vision_config"])
  model = randomize_blip2_(transformers.Blip2VisionModel(config))
  model.save_pretrained(directory)
  return directory, model


def _load(directory, **overrides):
  cfg = blip2.vision_config_from_hf(json.loads((directory / "config.json").read_text()), **overrides)
  return cfg, blip2.load_vision_params(CheckpointReader(directory), cfg, prefix="")


@pytest.mark.parametrize("scan_layers,remat_policy", [(True, "none"), (False, "none"), (True, "full")])
def test_matches_transformers(hf_vision, scan_layers, remat_policy):
  directory, hf = hf_vision
  cfg, params = _load(directory, scan_layers=scan_layers, remat_policy=remat_policy)
  pixels = np.random.RandomState(0).randn(2, 42, 42, 3).astype(np.float32)
  with torch.no_grad():
    expected = hf(torch.tensor(pixels.transpose(0, 3, 1, 2))).last_hidden_state.numpy()
  got = np.asarray(EvaViT(cfg).apply({"params": params}, jnp.asarray(pixels)))
  assert got.shape == expected.shape == (2, 10, 40)
  assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize("scan_layers", [True, False])
def test_export_reproduces_the_hf_state_dict(hf_vision, scan_layers):
  directory, hf = hf_vision
  cfg, params = _load(directory, scan_layers=scan_layers)
  exported = dict(blip2.vision_tensors(cfg, params, np.float32, prefix=""))
  state = {k: v.numpy() for k, v in hf.state_dict().items()}
  assert sorted(exported) == sorted(state)
  for name, array in exported.items():
    np.testing.assert_array_equal(array, state[name], err_msg=name)


def test_release_config_is_the_eva_vit_g_preset():
  # Salesforce/blip2-flan-t5-xxl's vision_config lists only non-default fields.
  hub = {"dropout": 0.0, "initializer_factor": 1.0, "model_type": "blip_2_vision_model", "num_channels": 3,
         "projection_dim": 512}
  cfg = blip2.vision_config_from_hf(hub)
  assert cfg == VisionConfig.preset("eva_vit_g")
  assert cfg == blip2.vision_config_from_hf(transformers.Blip2VisionConfig().to_dict())
  assert (cfg.num_positions, cfg.head_dim, cfg.norm_eps) == (257, 88, 1e-6)
  # Same parameter count as HF's ViT-g, less the key third of each fused qkv bias that we do not store.
  with torch.device("meta"):
    hf_count = sum(p.numel() for p in transformers.Blip2VisionModel(transformers.Blip2VisionConfig()).parameters())
  ours = sum(np.prod(x.shape) for x in jax.tree.leaves(eva_vit.abstract_params(cfg)))
  assert ours + cfg.num_layers * cfg.embed_dim == hf_count


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"unknown vision field\(s\) \['width'\]"):
    VisionConfig.from_dict({"width": 3})
  with pytest.raises(ValueError, match=r"vision.image_size \(30\) must be a multiple of vision.patch_size"):
    VisionConfig.preset("tiny", image_size=30)
  with pytest.raises(ValueError, match="vision.remat_policy is 'some'"):
    VisionConfig.preset("tiny", remat_policy="some")
  with pytest.raises(ValueError, match="unknown vision preset 'huge'"):
    VisionConfig.preset("huge")
  with pytest.raises(ValueError, match="hidden_act 'quick_gelu' is not supported"):
    blip2.vision_config_from_hf({"hidden_act": "quick_gelu"})


def test_wrong_image_size_is_refused():
  cfg = VisionConfig.preset("tiny")
  params = eva_vit.init_params(cfg, jax.random.key(0))
  with pytest.raises(ValueError, match=r"pixels must be NHWC \(batch, 28, 28, 3\), got shape \(1, 3, 28, 28\)"):
    EvaViT(cfg).apply({"params": params}, jnp.zeros((1, 3, 28, 28)))


def _rewrite(directory, tmp_path, change):
  reader = CheckpointReader(directory)
  tensors = {name: np.array(reader.get(name)) for name in reader.keys()}
  change(tensors)
  write_safetensors(tmp_path / "model.safetensors", tensors)
  return CheckpointReader(tmp_path)


def test_bad_checkpoints_name_the_tensor(hf_vision, tmp_path):
  directory, _ = hf_vision
  cfg, _ = _load(directory)

  def key_bias(tensors):
    tensors["encoder.layers.1.self_attn.qkv.bias"][50] = 1.0

  with pytest.raises(ValueError, match=r"model.safetensors: tensor encoder.layers.1.self_attn.qkv.bias: .*no key bias"):
    blip2.load_vision_params(_rewrite(directory, tmp_path, key_bias), cfg, prefix="")

  def wrong_shape(tensors):
    tensors["encoder.layers.0.mlp.fc1.weight"] = np.zeros((64, 40), np.float32)

  message = r"tensor encoder.layers.0.mlp.fc1.weight has shape \(64, 40\), expected \(56, 40\)"
  with pytest.raises(ValueError, match=message):
    blip2.load_vision_params(_rewrite(directory, tmp_path, wrong_shape), cfg, prefix="")

  with pytest.raises(KeyError, match="tensor post_layernorm.weight is missing"):
    reader = _rewrite(directory, tmp_path, lambda tensors: tensors.pop("post_layernorm.weight"))
    blip2.load_vision_params(reader, cfg, prefix="")
