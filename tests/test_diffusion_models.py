"""UNet and VAE parity with diffusers (PyTorch) on tiny random models loaded
through our diffusers loader, and the loader's errors."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from diffusion_helpers import unet, vae
from mim_jax.convert.diffusers import load_unet, load_vae
from mim_jax.convert.diffusers_config import unet_config_from_diffusers
from mim_jax.models.diffusion.unet import UNet2DConditionModel
from mim_jax.models.diffusion.vae import AutoencoderKL

SD_STYLE = dict(cross_attention_dim=24, attention_head_dim=(2, 4), layers_per_block=2)  # 2: skips bookkeeping
# SD 2.x/XL: Linear projections; SDXL: several transformer layers per block and "text_time" added embeddings.
XL_STYLE = dict(cross_attention_dim=24, attention_head_dim=(2, 4), use_linear_projection=True,
                transformer_layers_per_block=(2, 1), addition_embed_type="text_time", addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=16 + 6 * 8)


def apply(model, params, *args, method="__call__"):
  # Jitted: op-by-op dispatch of a whole UNet costs a minute on two cores.
  return jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=method))(params, *args)


def nhwc(x):
  return jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


def nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("style", ["sd", "xl"])
def test_unet_matches_diffusers(tmp_path, style):
  reference = unet(0, **(SD_STYLE if style == "sd" else XL_STYLE))
  reference.save_pretrained(tmp_path)
  config, params = load_unet(tmp_path)
  torch.manual_seed(1)
  latents, context = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 24)
  timesteps = torch.tensor([10.0, 901.0])
  ours_args, added = (), {}
  if style == "xl":
    pooled, time_ids = torch.randn(2, 16), torch.tensor([[16.0, 16, 0, 0, 16, 16], [32, 24, 4, 2, 16, 16]])
    added = dict(added_cond_kwargs=dict(text_embeds=pooled, time_ids=time_ids))
    ours_args = (jnp.asarray(pooled.numpy()), jnp.asarray(time_ids.numpy()))
  with torch.no_grad():
    want = reference(latents, timesteps, context, **added).sample.numpy()
  got = apply(UNet2DConditionModel(config), params, nhwc(latents), jnp.asarray(timesteps.numpy()),
              jnp.asarray(context.numpy()), *ours_args)
  np.testing.assert_allclose(nchw(got), want, atol=5e-5, rtol=1e-4)
  assert np.abs(want).max() > 0.5  # a real signal, not zeros on both sides
  if style == "sd":  # bfloat16 weights and compute stay close to float32
    config, params = load_unet(tmp_path, dtype="bfloat16")
    assert params["conv_in"]["kernel"].dtype == jnp.bfloat16
    got_bf16 = apply(UNet2DConditionModel(config), params, nhwc(latents), jnp.asarray(timesteps.numpy()),
                     jnp.asarray(context.numpy()))
    assert got_bf16.dtype == jnp.float32
    assert np.abs(nchw(got_bf16) - want).max() < 0.05 * np.abs(want).max()


def test_vae_encode_and_decode_match_diffusers(tmp_path):
  reference = vae(0)
  reference.save_pretrained(tmp_path)
  config, params = load_vae(tmp_path)
  model = AutoencoderKL(config)
  torch.manual_seed(2)
  images = torch.rand(2, 3, 16, 16) * 2 - 1
  with torch.no_grad():
    dist = reference.encode(images).latent_dist
    decoded = reference.decode(dist.mean).sample.numpy()
  mean, logvar = apply(model, params, nhwc(images), method="encode")
  np.testing.assert_allclose(nchw(mean), dist.mean.numpy(), atol=2e-5)
  np.testing.assert_allclose(nchw(logvar), dist.logvar.numpy(), atol=2e-5)
  scaled = apply(model, params, nhwc(images), method="encode_latents")
  np.testing.assert_allclose(nchw(scaled), dist.mean.numpy() * config.scaling_factor, atol=2e-5)
  pixels = apply(model, params, scaled, method="decode_latents")
  np.testing.assert_allclose(nchw(pixels), np.clip(decoded / 2 + 0.5, 0, 1), atol=2e-5)


def test_vae_force_upcast_keeps_float32(tmp_path):
  vae(0).save_pretrained(tmp_path)  # diffusers' AutoencoderKL default force_upcast=True, as SDXL's VAE
  config, params = load_vae(tmp_path, dtype="bfloat16")
  assert config.dtype == "float32" and params["decoder"]["conv_in"]["kernel"].dtype == jnp.float32


def test_legacy_vae_attention_names_load(tmp_path):
  """Checkpoints saved before diffusers renamed query/key/value/proj_attn load the same."""
  from mim_jax.convert.safetensors_io import SafetensorsFile, write_safetensors

  vae(0).save_pretrained(tmp_path / "new")
  shutil.copytree(tmp_path / "new", tmp_path / "old")
  path = tmp_path / "old" / "diffusion_pytorch_model.safetensors"
  stored = SafetensorsFile(path)

  def legacy(name):
    for new, old in {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}.items():
      name = name.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
    return name

  renamed = {legacy(name): np.array(stored.get(name)) for name in stored.keys()}
  assert any("proj_attn" in n for n in renamed)
  write_safetensors(path, renamed)
  new, old = load_vae(tmp_path / "new")[1], load_vae(tmp_path / "old")[1]
  for module in ("to_q", "to_out_0"):
    np.testing.assert_array_equal(old["decoder"]["mid_block"]["attentions_0"][module]["kernel"],
                                  new["decoder"]["mid_block"]["attentions_0"][module]["kernel"])


def test_config_and_weights_disagreeing_is_an_error(tmp_path):
  unet(0, **SD_STYLE).save_pretrained(tmp_path)
  config_path = tmp_path / "config.json"
  original = json.loads(config_path.read_text())
  config_path.write_text(json.dumps({**original, "cross_attention_dim": 32}))
  with pytest.raises(ValueError, match="attn2.to_k.weight has shape .* the weights and config.json disagree"):
    load_unet(tmp_path)
  config_path.write_text(json.dumps({**original, "down_block_types": ["DownBlock2D", "DownBlock2D"]}))
  with pytest.raises(ValueError, match="tensor\\(s\\) the model built from config.json does not use"):
    load_unet(tmp_path)


def test_unsupported_unet_options_are_named():
  with pytest.raises(ValueError, match="class_embed_type='timestep' is not supported"):
    unet_config_from_diffusers({"class_embed_type": "timestep"})
  with pytest.raises(ValueError, match="down_block_types \\['SimpleCrossAttnDownBlock2D'\\] are not supported"):
    unet_config_from_diffusers({"down_block_types": ["SimpleCrossAttnDownBlock2D", "DownBlock2D"],
                               "up_block_types": ["UpBlock2D"] * 2, "block_out_channels": [32, 64]})
  with pytest.raises(ValueError, match="needs addition_time_embed_dim"):
    unet_config_from_diffusers({"addition_embed_type": "text_time"})
  with pytest.raises(ValueError, match="unet.attention_impl is 'flash'; allowed values: xla, cudnn"):
    unet_config_from_diffusers({}, attention_impl="flash")
