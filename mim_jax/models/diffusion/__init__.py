"""Stable Diffusion's maths (SD 1.x/2.x, SDXL base + refiner) in Flax/NumPy: the
image decoder MIM hands its `<start> description <end>` text to (spec §2).

Pieces: unet_config / layers / transformer / unet_blocks / unet (the denoiser),
vae (AutoencoderKL), schedulers (Euler, DDIM), denoise (the jitted loop with
classifier-free guidance), presets (the SDXL release configs, for shape-only
work). Configs and weights are read from diffusers directories by
mim_jax/convert/diffusers.py (without torch); loading a whole pipeline and
rendering descriptions to images is mim_jax/infer/sd_pipeline.py.
"""
