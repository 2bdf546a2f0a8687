"""Tiny random diffusers pipelines (SD 1.x-style, SDXL base, SDXL refiner) saved
to disk, for loading through our real code, and their torch references."""
from __future__ import annotations

import diffusers
import torch
import transformers

from bench.tiny_clip_tokenizer import save_tiny_clip_tokenizer

UNET = dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
VAE = dict(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
           up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4, layers_per_block=1,
           sample_size=16)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                 timestep_spacing="leading")
# Distinct widths per encoder so a swapped or misplaced one cannot pass.
TEXT = dict(vocab_size=514, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)


def _beside(directory, i):
  """Where a tokenizer's source files go: next to the pipeline, which save_pretrained copies them into."""
  return directory.with_name(f"{directory.name}_tokenizer_{i}")


def _perturb_(model, seed):
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  return model.eval()


def text_encoder(hidden, seed, projection_dim=None):
  config = transformers.CLIPTextConfig(hidden_size=hidden, projection_dim=projection_dim or hidden, **TEXT)
  cls = transformers.CLIPTextModelWithProjection if projection_dim else transformers.CLIPTextModel
  torch.manual_seed(seed)
  return _perturb_(cls(config), seed)


def unet(seed, **overrides):
  torch.manual_seed(seed)
  return _perturb_(diffusers.UNet2DConditionModel(**{**UNET, **overrides}), seed)


def vae(seed):
  torch.manual_seed(seed)
  return _perturb_(diffusers.AutoencoderKL(**VAE), seed)


def sd_pipeline(directory, seed=0, scheduler="ddim", **unet_overrides):
  """An SD 1.x-style pipeline (one text encoder, conv projections), saved to `directory`."""
  schedulers = {"ddim": diffusers.DDIMScheduler(**SCHEDULER, clip_sample=False),
                "euler": diffusers.EulerDiscreteScheduler(**SCHEDULER)}
  pipe = diffusers.StableDiffusionPipeline(
      vae=vae(seed), text_encoder=text_encoder(32, seed), tokenizer=save_tiny_clip_tokenizer(_beside(directory, 1)),
      unet=unet(seed, cross_attention_dim=32, attention_head_dim=(2, 4), **unet_overrides),
      scheduler=schedulers[scheduler],
      safety_checker=None, feature_extractor=None, requires_safety_checker=False)
  pipe.save_pretrained(directory)
  return pipe


def sdxl_pipeline(directory, seed=0, refiner=False):
  """An SDXL-style base (two encoders: 16 + 24 wide, pooled projection 20) or refiner
  (encoder 2 only, aesthetic score), Euler scheduler, saved to `directory`."""
  tokenizer_2 = save_tiny_clip_tokenizer(_beside(directory, 2), pad_token="!")
  encoder_2 = text_encoder(24, seed + 1, projection_dim=20)
  time_ids = 5 if refiner else 6
  unet_model = unet(seed, cross_attention_dim=24 if refiner else 40, attention_head_dim=(2, 4),
                    use_linear_projection=True, transformer_layers_per_block=(2, 1), addition_embed_type="text_time",
                    addition_time_embed_dim=8, projection_class_embeddings_input_dim=20 + time_ids * 8)
  scheduler = diffusers.EulerDiscreteScheduler(**SCHEDULER)
  if refiner:
    pipe = diffusers.StableDiffusionXLImg2ImgPipeline(
        vae=vae(seed), text_encoder=None, text_encoder_2=encoder_2, tokenizer=None, tokenizer_2=tokenizer_2,
        unet=unet_model, scheduler=scheduler, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
  else:
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae(seed), text_encoder=text_encoder(16, seed), text_encoder_2=encoder_2,
        tokenizer=save_tiny_clip_tokenizer(_beside(directory, 1)), tokenizer_2=tokenizer_2, unet=unet_model,
        scheduler=scheduler)
  pipe.save_pretrained(directory)
  return pipe
