"""Our Q-Former equals transformers' Blip2QFormerModel (queries only), and the
whole image path equals Blip2ForConditionalGeneration.get_image_features."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from configs import common
from helpers import TINY_BLIP2, randomize_blip2_, tiny_hf_blip2
from mim_jax.convert import blip2
from mim_jax.convert.safetensors_io import CheckpointReader
from mim_jax.models import image_encoder
from mim_jax.models.eva_vit import VisionConfig
from mim_jax.models.image_encoder import ImageEncoder
from mim_jax.models.qformer import QFormer, QFormerConfig
from mim_jax.nn.sharding import DEFAULT_RULES, activation_sharding, create_mesh, sharded_init


@pytest.fixture(scope="module")
def hf_qformer(tmp_path_factory):
  directory = tmp_path_factory.mktemp("qformer")
  config = transformers.Blip2QFormerConfig(**TINY_BLIP2["qformer_config"], encoder_hidden_size=40)
  model = randomize_blip2_(transformers.Blip2QFormerModel(config))
  model.save_pretrained(directory)
  return directory, model


@pytest.fixture(scope="module")
def hf_blip2(tmp_path_factory):
  directory = tmp_path_factory.mktemp("blip2")
  return directory, tiny_hf_blip2(directory)


def _load_qformer(directory, **overrides):
  cfg = blip2.qformer_config_from_hf(json.loads((directory / "config.json").read_text()), num_queries=4, **overrides)
  return cfg, blip2.load_qformer_params(CheckpointReader(directory), cfg, prefix="")


def _inputs(batch=2):
  rng = np.random.RandomState(0)
  return rng.randn(batch, 4, 32).astype(np.float32), rng.randn(batch, 10, 40).astype(np.float32)


def test_qformer_matches_transformers(hf_qformer):
  directory, hf = hf_qformer
  cfg, params = _load_qformer(directory)
  assert [cfg.has_cross_attention(i) for i in range(3)] == [True, False, True]
  queries, image = _inputs()
  with torch.no_grad():
    expected = hf(query_embeds=torch.tensor(queries), encoder_hidden_states=torch.tensor(image)).last_hidden_state
  got = np.asarray(QFormer(cfg).apply({"params": params}, jnp.asarray(queries), jnp.asarray(image)))
  assert got.shape == (2, 4, 32)
  assert np.abs(got - expected.numpy()).max() <= 1e-4


def test_qformer_export_reproduces_the_hf_state_dict(hf_qformer):
  directory, hf = hf_qformer
  cfg, params = _load_qformer(directory)
  exported = dict(blip2.qformer_tensors(cfg, params, np.float32, prefix=""))
  state = {k: v.numpy() for k, v in hf.state_dict().items()}
  assert sorted(exported) == sorted(state)
  for name, array in exported.items():
    np.testing.assert_array_equal(array, state[name], err_msg=name)


def test_dropout_only_when_not_deterministic(hf_qformer):
  directory, _ = hf_qformer
  cfg, params = _load_qformer(directory)
  queries, image = map(jnp.asarray, _inputs())
  model = QFormer(cfg)
  clean = model.apply({"params": params}, queries, image)
  noisy = [model.apply({"params": params}, queries, image, deterministic=False, rngs={"dropout": jax.random.key(s)})
           for s in (0, 1)]
  assert not np.allclose(noisy[0], clean, atol=1e-3)
  assert not np.allclose(noisy[0], noisy[1], atol=1e-3)
  np.testing.assert_array_equal(
      model.apply({"params": params}, queries, image, deterministic=True, rngs={"dropout": jax.random.key(0)}), clean)
  no_rate = QFormer(QFormerConfig.from_dict({**cfg.to_dict(), "dropout_rate": 0.0}))
  np.testing.assert_allclose(
      no_rate.apply({"params": params}, queries, image, deterministic=False, rngs={"dropout": jax.random.key(0)}),
      clean, atol=1e-6)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_image_path_matches_get_image_features(hf_blip2, scan_layers):
  directory, hf = hf_blip2
  vision, qformer_cfg, llm_width, params = blip2.load_hf_image_encoder(
      directory, vision_overrides={"scan_layers": scan_layers})
  assert (vision.embed_dim, qformer_cfg.encoder_dim, qformer_cfg.num_queries, llm_width) == (40, 40, 4, 24)
  pixels = np.random.RandomState(1).randn(3, 42, 42, 3).astype(np.float32)
  with torch.no_grad():
    out = hf.get_image_features(torch.tensor(pixels.transpose(0, 3, 1, 2)))
  model = ImageEncoder(vision, qformer_cfg, llm_width)
  got = np.asarray(model.apply({"params": params}, jnp.asarray(pixels)))
  assert got.shape == (3, 4, 24)
  assert np.abs(got - out.pooler_output.numpy()).max() <= 1e-4

  # Cached ViT features: the vision params are not needed at all.
  no_vision = {k: v for k, v in params.items() if k != "vision"}
  cached = model.apply({"params": no_vision}, vit_features_bse=jnp.asarray(out.last_hidden_state.numpy()))
  assert np.abs(np.asarray(cached) - out.pooler_output.numpy()).max() <= 1e-4


def test_image_encoder_export_reproduces_the_hf_state_dict(hf_blip2):
  directory, hf = hf_blip2
  vision, qformer_cfg, llm_width, params = blip2.load_hf_image_encoder(directory)
  exported = dict(blip2.image_encoder_tensors(vision, qformer_cfg, params, np.float32))
  state = {k: v.numpy() for k, v in hf.state_dict().items() if not k.startswith("language_model.")}
  assert sorted(exported) == sorted(state)
  for name, array in exported.items():
    np.testing.assert_array_equal(array, state[name], err_msg=name)


def test_release_config_gives_the_presets():
  hub = {"model_type": "blip-2", "num_query_tokens": 32, "vision_config": {"model_type": "blip_2_vision_model"},
         "qformer_config": {"model_type": "blip_2_qformer", "vocab_size": 30522},
         "text_config": {"model_type": "llama", "hidden_size": 4096}}
  vision, qformer_cfg, llm_width = blip2.configs_from_hf(hub)
  assert qformer_cfg == QFormerConfig.preset("blip2")
  assert vision.embed_dim == qformer_cfg.encoder_dim == 1408 and llm_width == 4096
  with pytest.raises(ValueError, match="model_type is 'llava'.*BLIP-2 checkpoints"):
    blip2.configs_from_hf({"model_type": "llava"})
  with pytest.raises(ValueError, match="text_config.hidden_size is missing"):
    blip2.configs_from_hf({"model_type": "blip-2"})
  with pytest.raises(ValueError, match=r"qformer.dropout_rate must be in \[0, 1\)"):
    QFormerConfig.preset("tiny", dropout_rate=1.5)
  with pytest.raises(ValueError, match="image features have width 16, qformer.encoder_dim is 32"):
    QFormer(QFormerConfig.preset("tiny")).init(jax.random.key(0), jnp.zeros((1, 4, 32)), jnp.zeros((1, 5, 16)))


def test_frozen_vision_gets_no_gradient_and_sharding_matches():
  vision, qformer_cfg = [cls.preset("tiny") for cls in (VisionConfig, QFormerConfig)]
  params = image_encoder.init_params(vision, qformer_cfg, 24, jax.random.key(0))
  pixels = jnp.asarray(np.random.RandomState(2).randn(8, 28, 28, 3), jnp.float32)
  loss = lambda p: jnp.sum(ImageEncoder(vision, qformer_cfg, 24).apply({"params": p}, pixels) ** 2)
  loss_value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert all(not np.any(g) for g in jax.tree.leaves(grads["vision"]))
  assert np.any(grads["qformer"]["layers_0"]["cross_attn"]["k_kernel"])

  mesh = create_mesh(common.mesh(ici_data=2, ici_fsdp=2, ici_tensor=2))
  sharded, _ = sharded_init(image_encoder.boxed_init_fn(vision, qformer_cfg, 24), jax.random.key(0), mesh,
                            DEFAULT_RULES)

  def traced(p):
    with activation_sharding(mesh, DEFAULT_RULES):
      return loss(p)

  np.testing.assert_allclose(jax.jit(traced)(sharded), loss_value, rtol=1e-5)
  assert sharded["vision"]["layers"]["mlp"]["fc1"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(
      None, "fsdp", "tensor")
