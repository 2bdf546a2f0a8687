"""UNet2DConditionModel's configuration, one entry per block; read from a
diffusers `unet/config.json` by convert/diffusers_config.py."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  in_channels: int
  out_channels: int
  block_out_channels: tuple[int, ...]
  down_block_types: tuple[str, ...]
  up_block_types: tuple[str, ...]
  layers_per_block: tuple[int, ...]
  transformer_layers_per_block: tuple[int, ...]
  num_heads: tuple[int, ...]  # per down block; what diffusers calls attention_head_dim (its naming slip)
  cross_attention_dim: int
  use_linear_projection: bool
  flip_sin_to_cos: bool
  freq_shift: int
  norm_num_groups: int
  norm_eps: float
  downsample_padding: int
  mid_block_scale_factor: float
  # SDXL: "text_time" adds Linear(pooled text ++ sinusoidal(time ids)) to the time embedding.
  addition_embed_type: str | None
  addition_time_embed_dim: int | None
  projection_class_embeddings_input_dim: int | None
  conv_in_kernel: int = 3
  conv_out_kernel: int = 3
  sample_size: int | None = None  # the latent size it was trained at (pipelines' default image size / 8)
  dtype: str = "float32"
  attention_impl: str = "xla"  # nn/attention.py's implementations; "cudnn" on NVIDIA GPUs (bf16/fp16)

  @property
  def time_embed_dim(self) -> int:
    return 4 * self.block_out_channels[0]

  def added_text_dim(self, num_time_ids: int) -> int:
    """The pooled-text width the added embedding leaves room for, given `num_time_ids` time ids."""
    return self.projection_class_embeddings_input_dim - num_time_ids * self.addition_time_embed_dim
