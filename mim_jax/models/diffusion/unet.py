"""diffusers' UNet2DConditionModel (SD 1.x, SD 2.x, SDXL base and refiner) in
Linen, NHWC: the noise (or v) prediction for latents at a timestep, conditioned
on text hidden states and, for SDXL, on pooled text + micro-conditioning time ids.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models.config_checks import DTYPES
from mim_jax.models.diffusion.layers import TimestepEmbedding, conv, group_norm, timestep_embedding
from mim_jax.models.diffusion.unet_blocks import DownBlock, MidBlock, UpBlock
from mim_jax.models.diffusion.unet_config import UNetConfig


class UNet2DConditionModel(nn.Module):
  config: UNetConfig

  @nn.compact
  def __call__(self, latents_bhwc: jax.Array, timesteps_b: jax.Array, context_bsd: jax.Array,
               text_embeds_bd: jax.Array | None = None, time_ids_bk: jax.Array | None = None) -> jax.Array:
    """`text_embeds_bd` (pooled text) and `time_ids_bk` are required for "text_time" (SDXL) configs.
    Returns float32 predictions shaped like `latents_bhwc`."""
    cfg = self.config
    dtype = DTYPES[cfg.dtype]
    channels = cfg.block_out_channels
    t_emb = timestep_embedding(jnp.broadcast_to(timesteps_b, latents_bhwc.shape[:1]), channels[0],
                               cfg.flip_sin_to_cos, cfg.freq_shift)
    temb_bd = TimestepEmbedding(cfg.time_embed_dim, dtype, name="time_embedding")(t_emb)
    if cfg.addition_embed_type == "text_time":
      if text_embeds_bd is None or time_ids_bk is None:
        raise ValueError("this UNet (addition_embed_type 'text_time', SDXL) needs text_embeds_bd and time_ids_bk")
      b, k = time_ids_bk.shape
      time_embeds = timestep_embedding(time_ids_bk.reshape(-1), cfg.addition_time_embed_dim, cfg.flip_sin_to_cos,
                                       cfg.freq_shift).reshape(b, k * cfg.addition_time_embed_dim)
      added = jnp.concatenate([text_embeds_bd.astype(jnp.float32), time_embeds], axis=-1)
      temb_bd = temb_bd + TimestepEmbedding(cfg.time_embed_dim, dtype, name="add_embedding")(added)

    common = dict(groups=cfg.norm_num_groups, eps=cfg.norm_eps, use_linear_projection=cfg.use_linear_projection,
                  dtype=dtype, attention_impl=cfg.attention_impl)
    x = conv(channels[0], cfg.conv_in_kernel, dtype, "conv_in")(latents_bhwc.astype(dtype))
    skips = [x]
    for i, kind in enumerate(cfg.down_block_types):
      heads = cfg.num_heads[i] if kind.startswith("CrossAttn") else 0
      x, block_skips = DownBlock(channels[i], cfg.layers_per_block[i], num_heads=heads,
                                 transformer_layers=cfg.transformer_layers_per_block[i],
                                 add_downsample=i < len(channels) - 1, downsample_padding=cfg.downsample_padding,
                                 name=f"down_blocks_{i}", **common)(x, temb_bd, context_bsd)
      skips += block_skips
    x = MidBlock(channels[-1], 1, num_heads=cfg.num_heads[-1], transformer_layers=cfg.transformer_layers_per_block[-1],
                 output_scale_factor=cfg.mid_block_scale_factor, name="mid_block", **common)(x, temb_bd, context_bsd)
    reversed_heads = cfg.num_heads[::-1]
    reversed_layers = cfg.transformer_layers_per_block[::-1]
    for i, kind in enumerate(cfg.up_block_types):
      num_layers = cfg.layers_per_block[::-1][i] + 1
      block_skips, skips = skips[-num_layers:], skips[:-num_layers]
      x = UpBlock(channels[::-1][i], num_layers, num_heads=reversed_heads[i] if kind.startswith("CrossAttn") else 0,
                  transformer_layers=reversed_layers[i], add_upsample=i < len(channels) - 1,
                  name=f"up_blocks_{i}", **common)(x, block_skips, temb_bd, context_bsd)
    x = nn.silu(group_norm(cfg.norm_num_groups, cfg.norm_eps, dtype, "conv_norm_out")(x))
    return conv(cfg.out_channels, cfg.conv_out_kernel, dtype, "conv_out")(x).astype(jnp.float32)
