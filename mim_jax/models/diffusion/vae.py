"""diffusers' AutoencoderKL (the SD/SDXL VAE), NHWC: `encode` images in [-1, 1]
to the latent Gaussian's mean and log-variance, `decode` latents to images.

Latents the UNet sees are the VAE's times `scaling_factor` (0.18215 SD 1.x/2.x,
0.13025 SDXL); `decode_latents` / `encode_latents` apply it (and `shift_factor`).
SDXL's VAE overflows in float16 (its config sets `force_upcast`); `compute_dtype`
keeps such a VAE in float32 whatever dtype the pipeline asks for.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models.config_checks import DTYPES
from mim_jax.models.diffusion.layers import ResnetBlock2D, Upsample2D, conv, group_norm
from mim_jax.models.diffusion.unet_blocks import DownBlock
from mim_jax.nn.attention import dot_product_attention

EPS = 1e-6  # diffusers' VAE blocks hard-code this norm epsilon


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (64,)
  layers_per_block: int = 1
  latent_channels: int = 4
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215
  shift_factor: float | None = None
  force_upcast: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  dtype: str = "float32"

  def compute_dtype(self, requested: str) -> str:
    return "float32" if self.force_upcast else requested


class VAEAttention(nn.Module):
  """The mid block's single-head attention over pixels, with its own GroupNorm and residual."""

  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    b, h, w, c = x_bhwc.shape
    normed_btc = group_norm(self.groups, EPS, self.dtype, "group_norm")(x_bhwc).reshape(b, h * w, c)
    project = lambda name, y: nn.Dense(c, dtype=self.dtype, name=name)(y)
    q_bt1c, k_bt1c, v_bt1c = (project(name, normed_btc)[:, :, None, :] for name in ("to_q", "to_k", "to_v"))
    out_btc = dot_product_attention(q_bt1c, k_bt1c, v_bt1c, None)[:, :, 0, :]
    return x_bhwc + project("to_out_0", out_btc).reshape(b, h, w, c)


class UpDecoderBlock(nn.Module):
  out_channels: int
  num_layers: int
  groups: int
  add_upsample: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    for i in range(self.num_layers):
      x_bhwc = ResnetBlock2D(self.out_channels, self.groups, EPS, dtype=self.dtype, name=f"resnets_{i}")(x_bhwc, None)
    if self.add_upsample:
      x_bhwc = Upsample2D(self.out_channels, self.dtype, name="upsamplers_0")(x_bhwc)
    return x_bhwc


class VAEMidBlock(nn.Module):
  groups: int
  add_attention: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    c = x_bhwc.shape[-1]
    x_bhwc = ResnetBlock2D(c, self.groups, EPS, dtype=self.dtype, name="resnets_0")(x_bhwc, None)
    if self.add_attention:
      x_bhwc = VAEAttention(self.groups, self.dtype, name="attentions_0")(x_bhwc)
    return ResnetBlock2D(c, self.groups, EPS, dtype=self.dtype, name="resnets_1")(x_bhwc, None)


class Encoder(nn.Module):
  config: VAEConfig

  @nn.compact
  def __call__(self, images_bhwc: jax.Array) -> jax.Array:
    cfg, dtype = self.config, DTYPES[self.config.dtype]
    channels = cfg.block_out_channels
    x = conv(channels[0], 3, dtype, "conv_in")(images_bhwc.astype(dtype))
    for i, width in enumerate(channels):
      x, _ = DownBlock(width, cfg.layers_per_block, cfg.norm_num_groups, EPS, add_downsample=i < len(channels) - 1,
                       downsample_padding=0, dtype=dtype, name=f"down_blocks_{i}")(x, None, None)
    x = VAEMidBlock(cfg.norm_num_groups, cfg.mid_block_add_attention, dtype, name="mid_block")(x)
    x = nn.silu(group_norm(cfg.norm_num_groups, EPS, dtype, "conv_norm_out")(x))
    return conv(2 * cfg.latent_channels, 3, dtype, "conv_out")(x)


class Decoder(nn.Module):
  config: VAEConfig

  @nn.compact
  def __call__(self, latents_bhwc: jax.Array) -> jax.Array:
    cfg, dtype = self.config, DTYPES[self.config.dtype]
    channels = cfg.block_out_channels[::-1]
    x = conv(channels[0], 3, dtype, "conv_in")(latents_bhwc.astype(dtype))
    x = VAEMidBlock(cfg.norm_num_groups, cfg.mid_block_add_attention, dtype, name="mid_block")(x)
    for i, width in enumerate(channels):
      x = UpDecoderBlock(width, cfg.layers_per_block + 1, cfg.norm_num_groups, i < len(channels) - 1, dtype,
                         name=f"up_blocks_{i}")(x)
    x = nn.silu(group_norm(cfg.norm_num_groups, EPS, dtype, "conv_norm_out")(x))
    return conv(cfg.out_channels, 3, dtype, "conv_out")(x)


class AutoencoderKL(nn.Module):
  config: VAEConfig

  def setup(self):
    cfg = self.config
    dtype = DTYPES[cfg.dtype]
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)
    self.quant_conv = conv(2 * cfg.latent_channels, 1, dtype) if cfg.use_quant_conv else None
    self.post_quant_conv = conv(cfg.latent_channels, 1, dtype) if cfg.use_post_quant_conv else None

  def encode(self, images_bhwc: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, log-variance) of the latent distribution, float32, for images in [-1, 1]."""
    moments = self.encoder(images_bhwc)
    if self.quant_conv is not None:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, latents_bhwc: jax.Array) -> jax.Array:
    """Images in about [-1, 1], float32."""
    if self.post_quant_conv is not None:
      latents_bhwc = self.post_quant_conv(latents_bhwc.astype(DTYPES[self.config.dtype]))
    return self.decoder(latents_bhwc).astype(jnp.float32)

  def encode_latents(self, images_bhwc: jax.Array) -> jax.Array:
    """The UNet-space latents of images (the distribution's mean, scaled)."""
    mean, _ = self.encode(images_bhwc)
    return (mean - (self.config.shift_factor or 0.0)) * self.config.scaling_factor

  def decode_latents(self, latents_bhwc: jax.Array) -> jax.Array:
    """Images in [0, 1] from UNet-space latents."""
    latents_bhwc = latents_bhwc / self.config.scaling_factor + (self.config.shift_factor or 0.0)
    return jnp.clip(self.decode(latents_bhwc) / 2 + 0.5, 0.0, 1.0)

  def __call__(self, images_bhwc: jax.Array) -> jax.Array:
    """Reconstruction through the mean latent (used to initialise every parameter)."""
    mean, _ = self.encode(images_bhwc)
    return self.decode(mean)
