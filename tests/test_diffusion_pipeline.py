"""The whole Stable Diffusion pipeline against diffusers' StableDiffusionPipeline
and StableDiffusionXL(Img2Img)Pipeline on tiny random checkpoints, from the same
initial latents; the text conditioning; device sharding; bad input."""
import shutil

import jax
import numpy as np
import pytest
import torch

import diffusion_helpers as helpers
from mim_jax.infer.sd_pipeline import StableDiffusion
from mim_jax.nn.sharding import data_mesh

DESCRIPTIONS = ["a red fox in fresh snow", "a lighthouse at dusk"]
LONG = "a very long description " * 20  # about 100 CLIP tokens


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
  directory = tmp_path_factory.mktemp("sd") / "pipe"
  return directory, helpers.sd_pipeline(directory)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
  root = tmp_path_factory.mktemp("sdxl")
  return (root / "base", helpers.sdxl_pipeline(root / "base"),
          root / "refiner", helpers.sdxl_pipeline(root / "refiner", seed=3, refiner=True))


def initial_latents(b=2, size=8):
  torch.manual_seed(7)
  return torch.randn(b, 4, size, size)


def nhwc(x):
  return x.numpy().transpose(0, 2, 3, 1)


def test_sd_text_conditioning_matches(sd):
  directory, reference = sd
  ours = StableDiffusion.load(directory).base.text
  context, pooled = ours.encode_pairs(DESCRIPTIONS)
  with torch.no_grad():
    want, want_negative = reference.encode_prompt(DESCRIPTIONS, "cpu", 1, True)
  assert pooled is None and context.shape == (2, 2, 77, 32)
  np.testing.assert_allclose(context[:, 1], want.numpy(), atol=2e-5)
  np.testing.assert_allclose(context[:, 0], want_negative.numpy(), atol=2e-5)


def test_sd_pipeline_matches_diffusers(sd):
  directory, reference = sd
  latents = initial_latents()
  want = reference(DESCRIPTIONS, num_inference_steps=3, guidance_scale=7.5, latents=latents, height=16, width=16,
                   output_type="np").images
  pipe = StableDiffusion.load(directory)
  got = pipe.render_arrays(DESCRIPTIONS, steps=3, guidance=7.5, latents=nhwc(latents))
  assert got.shape == (2, 16, 16, 3)
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert want.std() > 0.05


def test_sdxl_text_conditioning_matches(sdxl):
  base_dir, base, refiner_dir, refiner = sdxl
  pipe = StableDiffusion.load(base_dir, refiner_dir=refiner_dir)
  with torch.no_grad():
    embeds, negative, pooled, negative_pooled = base.encode_prompt(DESCRIPTIONS, device="cpu")
    refiner_embeds, refiner_negative, refiner_pooled, _ = refiner.encode_prompt(DESCRIPTIONS, device="cpu")
  context, ours_pooled = pipe.base.text.encode_pairs(DESCRIPTIONS)
  assert context.shape == (2, 2, 77, 40)  # 16 + 24: both encoders' penultimate states
  np.testing.assert_allclose(context[:, 1], embeds.numpy(), atol=2e-5)
  np.testing.assert_allclose(ours_pooled[:, 1], pooled.numpy(), atol=2e-5)
  assert not context[:, 0].any() and not ours_pooled[:, 0].any()  # force_zeros_for_empty_prompt
  assert not negative.any() and not negative_pooled.any()
  context, ours_pooled = pipe.refiner.text.encode_pairs(DESCRIPTIONS)
  np.testing.assert_allclose(context[:, 1], refiner_embeds.numpy(), atol=2e-5)
  np.testing.assert_allclose(context[:, 0], refiner_negative.numpy(), atol=2e-5)  # the refiner encodes ""
  np.testing.assert_allclose(ours_pooled[:, 1], refiner_pooled.numpy(), atol=2e-5)


def test_sdxl_base_and_refiner_match_diffusers(sdxl):
  base_dir, base, refiner_dir, refiner = sdxl
  latents = initial_latents()
  handed_over = base(DESCRIPTIONS, num_inference_steps=5, denoising_end=0.6, latents=latents, height=16, width=16,
                     output_type="latent").images
  want = refiner(DESCRIPTIONS, image=handed_over, num_inference_steps=5, denoising_start=0.6,
                 output_type="np").images
  pipe = StableDiffusion.load(base_dir, refiner_dir=refiner_dir)
  got = pipe.render_arrays(DESCRIPTIONS, steps=5, denoising_end=0.6, latents=nhwc(latents))
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert want.std() > 0.05


def test_sharded_batch_equals_one_device_and_is_batch_independent(sd):
  directory, _ = sd
  assert jax.device_count() == 8
  sharded = StableDiffusion.load(directory, mesh=data_mesh())
  single = StableDiffusion.load(directory, mesh=data_mesh(jax.devices()[:1]))
  three = DESCRIPTIONS + ["a bowl of ramen"]
  got = single.render_arrays(three, seed=42, steps=2)
  np.testing.assert_allclose(sharded.render_arrays(three, seed=42, steps=2), got, atol=1e-5)  # padded to 8
  # An image depends on its seed and description, not on the rest of the batch.
  np.testing.assert_allclose(sharded.render_arrays(three[:1], seed=42, steps=2), got[:1], atol=1e-5)
  assert not np.allclose(got[0], sharded.render_arrays(three[:1], seed=43, steps=2)[0], atol=1e-3)
  images = sharded.render(three[:1], seed=42, steps=2)
  assert images[0].size == (16, 16) and images[0].mode == "RGB"
  np.testing.assert_array_equal(np.asarray(images[0]), np.round(got[0] * 255).astype(np.uint8))


def test_long_description_is_truncated_with_a_warning(sd):
  directory, reference = sd
  encoder = StableDiffusion.load(directory).base.text.encoders[0]
  with pytest.warns(UserWarning, match="description truncated to CLIP's 77 tokens; dropped: '"):
    ids = encoder.tokenize([LONG, "short"])
  want = reference.tokenizer([LONG, "short"], padding="max_length", max_length=77, truncation=True).input_ids
  np.testing.assert_array_equal(ids, np.asarray(want))
  assert ids.shape == (2, 77) and ids[0, -1] == 513  # ends with the end token


def test_missing_component_is_named(sd, tmp_path):
  directory, _ = sd
  broken = tmp_path / "broken"
  shutil.copytree(directory, broken)
  shutil.rmtree(broken / "vae")
  with pytest.raises(FileNotFoundError, match="broken/vae is missing: the pipeline directory lacks its 'vae'"):
    StableDiffusion.load(broken)
  with pytest.raises(FileNotFoundError, match="model_index.json not found: point at a diffusers pipeline"):
    StableDiffusion.load(broken / "unet")


def test_text_width_mismatch_is_named(sd, tmp_path):
  directory, _ = sd
  broken = tmp_path / "broken"
  shutil.copytree(directory, broken)
  shutil.rmtree(broken / "text_encoder")
  helpers.text_encoder(24, 0).save_pretrained(broken / "text_encoder")
  with pytest.raises(ValueError, match="cross_attention_dim is 32, but the text encoders give 24 features"):
    StableDiffusion.load(broken)


def test_added_embedding_mismatch_is_named(sdxl, tmp_path):
  base_dir, *_ = sdxl
  broken = tmp_path / "broken"
  shutil.copytree(base_dir, broken)
  shutil.rmtree(broken / "text_encoder_2")
  helpers.text_encoder(24, 1, projection_dim=12).save_pretrained(broken / "text_encoder_2")
  with pytest.raises(ValueError, match="projection_class_embeddings_input_dim is 68, but text_encoder_2's "
                                       "projection_dim 12 plus 6 time ids x addition_time_embed_dim 8 is 60"):
    StableDiffusion.load(broken)


def test_bad_render_arguments(sd):
  directory, _ = sd
  pipe = StableDiffusion.load(directory)
  with pytest.raises(ValueError, match="descriptions must be a non-empty list of strings"):
    pipe.render_arrays("a fox")
  with pytest.raises(ValueError, match="height and width must be multiples of 4"):
    pipe.render_arrays(["a fox"], height=18, width=16)
  with pytest.raises(ValueError, match="latents have shape"):
    pipe.render_arrays(["a fox"], latents=np.zeros((1, 4, 8, 8), np.float32))
