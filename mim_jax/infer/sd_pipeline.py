"""Stable Diffusion (SD 1.x/2.x, SDXL base + refiner) in JAX: the image decoder
MIM hands its `<start> description <end>` text to (spec §2). Loads a diffusers
directory (optionally with an SDXL refiner) and renders descriptions to images:

  from mim_jax.infer.sd_pipeline import StableDiffusion

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

The base runs the first `denoising_end` of the schedule, the refiner the rest
(diffusers' "ensemble of expert denoisers"), then the VAE decodes. The maths is
models/diffusion/'s; weights and configs come from convert/diffusers.py, the
text encoders from convert/sd_text_encoder.py.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image

from mim_jax.convert.diffusers import component_dir, load_scheduler, load_unet, load_vae, read_model_index
from mim_jax.convert.sd_text_encoder import TextEncoder
from mim_jax.infer.renderers import to_images
from mim_jax.infer.sd_text_conditioning import TextConditioner
from mim_jax.models.diffusion import schedulers
from mim_jax.models.diffusion.denoise import Conditioning, Denoiser
from mim_jax.models.diffusion.unet import UNet2DConditionModel
from mim_jax.models.diffusion.unet_config import UNetConfig
from mim_jax.models.diffusion.vae import AutoencoderKL, VAEConfig
from mim_jax.nn.sharding import data_mesh

# diffusers' SDXL img2img micro-conditioning: the aesthetic score of the wanted and the unwanted image.
AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5
_TOKENIZERS = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}


@dataclasses.dataclass
class Stage:
  """One denoiser: a UNet with its scheduler and text conditioning (SD, SDXL base or refiner)."""

  directory: Path
  unet_config: UNetConfig
  unet_params: dict
  scheduler: schedulers.SchedulerConfig
  text: TextConditioner
  aesthetic: bool  # time ids carry an aesthetic score instead of the target size (the SDXL refiner)
  denoiser: Denoiser

  @classmethod
  def load(cls, directory: str | os.PathLike, dtype: str, mesh: Mesh, scheduler: str | None = None,
           attention_impl: str = "xla") -> "Stage":
    directory = Path(directory)
    index = read_model_index(directory)
    unet_config, unet_params = load_unet(component_dir(directory, "unet", index), dtype,
                                         attention_impl=attention_impl)
    names = [name for name in _TOKENIZERS if (index.get(name) or [None])[0]]
    if not names:
      raise ValueError(f"{directory}/model_index.json lists no text_encoder or text_encoder_2 component")
    xl = "text_encoder_2" in names
    encoders = [TextEncoder.load(component_dir(directory, _TOKENIZERS[name], index),
                                 component_dir(directory, name, index), dtype) for name in names]
    text = TextConditioner(encoders, xl, zero_unconditional=xl and index.get("force_zeros_for_empty_prompt", True))
    aesthetic = bool(index.get("requires_aesthetics_score", False))
    _check_dimensions(directory, names, unet_config, text, aesthetic)
    replicated = NamedSharding(mesh, PartitionSpec())
    return cls(directory, unet_config, jax.device_put(unet_params, replicated),
               load_scheduler(component_dir(directory, "scheduler", index), scheduler), text, aesthetic,
               Denoiser(UNet2DConditionModel(unet_config), mesh))

  @property
  def xl(self) -> bool:
    return self.unet_config.addition_embed_type == "text_time"

  def conditioning(self, descriptions: Sequence[str], height: int, width: int) -> Conditioning:
    context, pooled = self.text.encode_pairs(descriptions)
    if not self.xl:
      return Conditioning(context)
    if self.aesthetic:
      pair = [[height, width, 0, 0, NEGATIVE_AESTHETIC_SCORE], [height, width, 0, 0, AESTHETIC_SCORE]]
    else:  # original size, crop top-left, target size
      pair = [[height, width, 0, 0, height, width]] * 2
    time_ids = np.broadcast_to(np.asarray(pair, np.float32), (len(descriptions), 2, len(pair[0])))
    return Conditioning(context, pooled, np.ascontiguousarray(time_ids))

  def denoise(self, latents, cond: Conditioning, schedule, start: int, end: int, guidance: float):
    return self.denoiser(self.unet_params, latents, cond, schedule, start, end, guidance)


def _check_dimensions(directory: Path, names: list[str], unet: UNetConfig, text: TextConditioner,
                      aesthetic: bool) -> None:
  if unet.cross_attention_dim != text.context_dim:
    widths = " + ".join(f"{name} {e.config.embed_dim}" for name, e in zip(names, text.encoders))
    raise ValueError(f"{directory}: unet/config.json cross_attention_dim is {unet.cross_attention_dim}, but the text "
                     f"encoders give {text.context_dim} features ({widths}); the UNet and the text encoders come "
                     "from different models")
  if unet.addition_embed_type != "text_time":
    if text.xl:
      raise ValueError(f"{directory}: two text encoders (SDXL) but the UNet has no 'text_time' added embedding")
    return
  if not text.xl:
    raise ValueError(f"{directory}: the UNet is SDXL's (addition_embed_type 'text_time') but the pipeline has no "
                     "text_encoder_2 for its pooled text embedding")
  num_time_ids = 5 if aesthetic else 6
  got = text.pooled_dim + num_time_ids * unet.addition_time_embed_dim
  if got != unet.projection_class_embeddings_input_dim:
    raise ValueError(
        f"{directory}: unet/config.json projection_class_embeddings_input_dim is "
        f"{unet.projection_class_embeddings_input_dim}, but text_encoder_2's projection_dim {text.pooled_dim} plus "
        f"{num_time_ids} time ids x addition_time_embed_dim {unet.addition_time_embed_dim} is {got} "
        f"(model_index.json requires_aesthetics_score={aesthetic}: 5 time ids with an aesthetic score, 6 without)")


class StableDiffusion:
  def __init__(self, base: Stage, vae_config: VAEConfig, vae_params: dict, mesh: Mesh, refiner: Stage | None = None):
    self.base, self.refiner, self.mesh = base, refiner, mesh
    self.vae_config = vae_config
    self.vae_params = jax.device_put(vae_params, NamedSharding(mesh, PartitionSpec()))
    batch = NamedSharding(mesh, PartitionSpec("data"))
    vae = AutoencoderKL(vae_config)
    self._decode = jax.jit(lambda params, z: vae.apply({"params": params}, z, method="decode_latents"),
                           out_shardings=batch)
    self._noise = jax.jit(_noise, static_argnums=(1, 2), out_shardings=batch)

  @classmethod
  def load(cls, directory: str | os.PathLike, refiner_dir: str | os.PathLike | None = None, dtype: str = "float32",
           mesh: Mesh | None = None, scheduler: str | None = None, attention_impl: str = "xla") -> "StableDiffusion":
    """A diffusers SD 1.x/2.x/XL directory, and optionally an SDXL refiner directory.
    `dtype` ("float32" / "bfloat16") for the UNets and text encoders; the VAE stays
    float32 when its config asks (`force_upcast`). `scheduler` "euler"/"ddim" replaces
    the directories' own scheduler class (their config still applies). `attention_impl`
    "cudnn" uses cuDNN's fused attention in the UNets on NVIDIA GPUs (bfloat16)."""
    mesh = mesh or data_mesh()
    base = Stage.load(directory, dtype, mesh, scheduler, attention_impl)
    refiner = None if refiner_dir is None else Stage.load(refiner_dir, dtype, mesh, scheduler, attention_impl)
    if refiner is not None and not (base.xl and refiner.xl):
      raise ValueError(f"a refiner ({refiner_dir}) needs an SDXL base and an SDXL refiner (both UNets with "
                       "addition_embed_type 'text_time')")
    if refiner is not None and refiner.unet_config.in_channels != base.unet_config.out_channels:
      raise ValueError(f"{refiner_dir}: the refiner's UNet takes {refiner.unet_config.in_channels} latent channels, "
                       f"the base makes {base.unet_config.out_channels}")
    last = refiner or base
    vae_config, vae_params = load_vae(component_dir(last.directory, "vae"), dtype)
    if vae_config.latent_channels != last.unet_config.out_channels:
      raise ValueError(f"{last.directory}: vae latent_channels {vae_config.latent_channels} differ from the UNet's "
                       f"{last.unet_config.out_channels} output channels")
    return cls(base, vae_config, vae_params, mesh, refiner)

  @property
  def vae_scale(self) -> int:
    return 2 ** (len(self.vae_config.block_out_channels) - 1)

  def render(self, descriptions: Sequence[str], seed: int = 42, steps: int = 40, **options) -> list[Image.Image]:
    """One PIL image per description; options as `render_arrays`."""
    pixels = self.render_arrays(descriptions, seed=seed, steps=steps, **options)
    return to_images(pixels)

  def render_arrays(self, descriptions: Sequence[str], seed: int = 42, steps: int = 40, guidance: float | None = None,
                    height: int | None = None, width: int | None = None, denoising_end: float = 0.8,
                    latents: np.ndarray | None = None) -> np.ndarray:
    """Images (b, height, width, 3) float32 in [0, 1]. `guidance` defaults to 5.0 (SDXL) or 7.5;
    `denoising_end` is where the refiner takes over (ignored without one); `latents`
    (b, height / vae_scale, width / vae_scale, channels) replaces the seeded initial noise."""
    if isinstance(descriptions, str) or not descriptions or not all(isinstance(d, str) for d in descriptions):
      raise ValueError("descriptions must be a non-empty list of strings")
    height, width = self._size(height, width)
    guidance = (5.0 if self.base.xl else 7.5) if guidance is None else float(guidance)
    b = len(descriptions)
    padded = list(descriptions) + [""] * (-b % self.mesh.shape["data"])  # every device gets whole pairs
    shape = (height // self.vae_scale, width // self.vae_scale, self.base.unet_config.in_channels)
    schedule = schedulers.make_schedule(self.base.scheduler, steps)
    if latents is None:
      noise = self._noise(jax.random.key(seed), len(padded), shape)
    else:
      if tuple(latents.shape) != (b, *shape):
        raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {(b, *shape)}")
      noise = np.concatenate([latents, np.zeros((len(padded) - b, *shape), latents.dtype)]).astype(np.float32)
    z = noise * schedule.init_noise_sigma
    end = schedulers.steps_before(schedule, denoising_end) if self.refiner else steps
    z = self.base.denoise(z, self.base.conditioning(padded, height, width), schedule, 0, end, guidance)
    if self.refiner is not None:
      schedule = schedulers.make_schedule(self.refiner.scheduler, steps)
      start = schedulers.first_step_after(schedule, denoising_end)
      z = self.refiner.denoise(z, self.refiner.conditioning(padded, height, width), schedule, start, steps, guidance)
    return np.asarray(self._decode(self.vae_params, z))[:b]

  def _size(self, height: int | None, width: int | None) -> tuple[int, int]:
    native = (self.base.unet_config.sample_size or 64) * self.vae_scale
    height, width = height or native, width or native
    # Every UNet level halves the latents, and the up path must land on the skips' sizes.
    levels = max(len(stage.unet_config.block_out_channels) for stage in (self.base, self.refiner) if stage)
    multiple = self.vae_scale * 2 ** (levels - 1)
    if height % multiple or width % multiple:
      raise ValueError(f"height and width must be multiples of {multiple} for this model, got {height}x{width}")
    return height, width


def _noise(key: jax.Array, count: int, shape: tuple[int, ...]) -> jax.Array:
  """Image i's noise depends on (seed, i) only, not on the batch it is rendered in."""
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape))(jnp.arange(count))
