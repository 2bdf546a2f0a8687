"""An `EmbeddingRenderer` on Stable Diffusion 1.x/2.x: the `qformer` image
medium's (n, 77, D) conditioning takes the place of the text encoder's output
(diffusers' `prompt_embeds`); the unconditional half of classifier-free
guidance is the encoded empty prompt, as in text rendering.

Noise, schedule, denoising and VAE decoding are the pipeline's own pieces,
called the way `StableDiffusion.render_arrays` calls them, so the same
embeddings the text encoder would produce give the same image as `render`
(tested). SDXL is refused: it also conditions on pooled text embeddings and
size ids, which the medium does not produce (the release regresses onto SD-2.1).
"""
from __future__ import annotations

import jax
import numpy as np
from PIL import Image

from mim_jax.infer.renderers import to_images
from mim_jax.infer.sd_pipeline import StableDiffusion
from mim_jax.models.diffusion import schedulers
from mim_jax.models.diffusion.denoise import Conditioning
from mim_jax.models.diffusion.vae import AutoencoderKL


class StableDiffusionEmbeddingRenderer:
  def __init__(self, pipe: StableDiffusion, seed: int = 42, steps: int = 40, guidance: float = 7.5):
    if pipe.base.xl or pipe.refiner is not None:
      raise ValueError("rendering from embeddings needs an SD 1.x/2.x pipeline; SDXL also conditions on pooled "
                       "embeddings the qformer medium does not produce")
    self.pipe, self.seed, self.steps, self.guidance = pipe, seed, steps, guidance
    vae = AutoencoderKL(pipe.vae_config)
    self._decode = jax.jit(lambda params, z: vae.apply({"params": params}, z, method="decode_latents"))

  def __call__(self, embeds_nld: np.ndarray) -> list[Image.Image]:
    pipe = self.pipe
    n = len(embeds_nld)
    expected = (pipe.base.text.encoders[0].max_length, pipe.base.text.context_dim)
    if np.ndim(embeds_nld) != 3 or tuple(np.shape(embeds_nld)[1:]) != expected:
      raise ValueError(f"conditioning has shape {np.shape(embeds_nld)}, this pipeline takes (n, {expected[0]}, "
                       f"{expected[1]}); medium.cond_length / cond_dim must match its text encoder")
    padded = n + (-n % pipe.mesh.shape["data"])  # the denoiser splits whole pairs over the devices
    empty, _ = pipe.base.text.encode([""] * padded)
    context = empty.copy()
    context[:n] = embeds_nld
    cond = Conditioning(np.stack([empty, context], axis=1))
    latent = pipe.base.unet_config.sample_size or 64  # the UNet's native size, as `render` uses
    shape = (latent, latent, pipe.base.unet_config.in_channels)
    key = jax.random.key(self.seed)
    noise = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(key, i), shape)) for i in range(padded)])
    schedule = schedulers.make_schedule(pipe.base.scheduler, self.steps)
    z = pipe.base.denoise(noise * schedule.init_noise_sigma, cond, schedule, 0, self.steps, self.guidance)
    pixels = np.asarray(self._decode(pipe.vae_params, z))[:n]
    return to_images(pixels)
