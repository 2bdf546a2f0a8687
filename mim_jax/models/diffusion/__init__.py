"""Stable Diffusion (SD 1.x/2.x, SDXL base + refiner) in JAX: the image decoder
MIM hands its `<start> description <end>` text to (spec §2).

The API the generation loop calls (mim_jax/models/diffusion/pipeline.py):

  from mim_jax.models.diffusion.pipeline import StableDiffusion

  pipe = StableDiffusion.load("/ckpt/stable-diffusion-xl-base-1.0",
                              refiner_dir="/ckpt/stable-diffusion-xl-refiner-1.0",  # optional
                              dtype="bfloat16")                                    # or "float32"
  images = pipe.render(["a red fox in fresh snow", "a lighthouse at dusk"],
                       seed=42, steps=40)            # list[PIL.Image], one per description

`render` defaults follow the spec (40 steps, seed 42, base → refiner switch at
0.8 when a refiner is loaded) and diffusers' pipeline defaults for the rest
(guidance 5.0 for SDXL, 7.5 for SD 1.x/2.x; the UNet's native size). A
description longer than CLIP's 77 tokens is truncated with a warning. The same
seed and description always give the same image, whatever else is in the batch.
The batch is split over all local devices (or a given mesh's `data` axis).

Pieces: unet_config / layers / transformer / unet_blocks / unet (the denoiser),
vae (AutoencoderKL), schedulers (Euler, DDIM), denoise (the jitted loop with
classifier-free guidance), pipeline (loading and rendering). Weights come from
diffusers directories via mim_jax/convert/diffusers.py, without torch.
"""
