"""The UNet's down, mid and up blocks (diffusers' CrossAttnDownBlock2D,
DownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D, UpBlock2D).

A block with `num_heads` set has a Transformer2DModel after each resnet (the
"CrossAttn" variants); without, resnets only. Down blocks return their output
and the skip activations the up blocks concatenate back in reverse order.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models.diffusion.layers import Downsample2D, ResnetBlock2D, Upsample2D
from mim_jax.models.diffusion.transformer import Transformer2DModel

Dtype = Any


class BlockShape(nn.Module):
  """Fields every block has. `num_heads` 0 means no attention (DownBlock2D / UpBlock2D)."""

  out_channels: int
  num_layers: int
  groups: int
  eps: float
  num_heads: int = 0
  transformer_layers: int = 1
  use_linear_projection: bool = False
  dtype: Dtype = jnp.float32
  attention_impl: str = "xla"

  def resnet(self, i: int) -> ResnetBlock2D:
    return ResnetBlock2D(self.out_channels, self.groups, self.eps, dtype=self.dtype, name=f"resnets_{i}")

  def transformer(self, i: int, channels: int) -> Transformer2DModel:
    return Transformer2DModel(self.num_heads, channels // self.num_heads, self.transformer_layers, self.groups,
                              self.use_linear_projection, self.dtype, self.attention_impl, name=f"attentions_{i}")


class DownBlock(BlockShape):
  add_downsample: bool = True
  downsample_padding: int = 1

  @nn.compact
  def __call__(self, x_bhwc, temb_bd, context_bsd) -> tuple[jax.Array, list[jax.Array]]:
    skips = []
    for i in range(self.num_layers):
      x_bhwc = self.resnet(i)(x_bhwc, temb_bd)
      if self.num_heads:
        x_bhwc = self.transformer(i, self.out_channels)(x_bhwc, context_bsd)
      skips.append(x_bhwc)
    if self.add_downsample:
      x_bhwc = Downsample2D(self.out_channels, self.downsample_padding, self.dtype, name="downsamplers_0")(x_bhwc)
      skips.append(x_bhwc)
    return x_bhwc, skips


class MidBlock(BlockShape):
  """resnet, then (transformer, resnet) per layer; the width is unchanged."""

  output_scale_factor: float = 1.0

  @nn.compact
  def __call__(self, x_bhwc, temb_bd, context_bsd) -> jax.Array:
    resnet = lambda i: ResnetBlock2D(self.out_channels, self.groups, self.eps, self.output_scale_factor,
                                     self.dtype, name=f"resnets_{i}")
    x_bhwc = resnet(0)(x_bhwc, temb_bd)
    for i in range(self.num_layers):
      x_bhwc = self.transformer(i, self.out_channels)(x_bhwc, context_bsd)
      x_bhwc = resnet(i + 1)(x_bhwc, temb_bd)
    return x_bhwc


class UpBlock(BlockShape):
  """Each layer first concatenates (channels last) the newest remaining skip."""

  add_upsample: bool = True

  @nn.compact
  def __call__(self, x_bhwc, skips: list[jax.Array], temb_bd, context_bsd) -> jax.Array:
    for i, skip_bhwc in enumerate(reversed(skips)):
      x_bhwc = self.resnet(i)(jnp.concatenate([x_bhwc, skip_bhwc], axis=-1), temb_bd)
      if self.num_heads:
        x_bhwc = self.transformer(i, self.out_channels)(x_bhwc, context_bsd)
    if self.add_upsample:
      x_bhwc = Upsample2D(self.out_channels, self.dtype, name="upsamplers_0")(x_bhwc)
    return x_bhwc
