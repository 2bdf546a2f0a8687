"""The whole SDXL base + refiner pipeline at 1024x1024 (release shapes, random
weights written as diffusers directories) on one NVIDIA GPU: ours, loaded
through `StableDiffusion.load` and rendered with the spec's settings (40 steps,
switch at 0.8, guidance 5.0), vs diffusers' StableDiffusionXLPipeline →
StableDiffusionXLImg2ImgPipeline, bfloat16 (our VAE decodes in float32, as its force_upcast asks), from the same
initial latents.

  python bench/sdxl_pipeline_gpu.py --out /tmp/sdxl   # writes ~14 GB of random checkpoints there

The text encoders are CLIP ViT-L/14 and OpenCLIP bigG/14 shapes with a byte-level
stand-in tokenizer (tests/diffusion_helpers.py): the shapes, not the words, set the cost.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diffusers  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from bench.tiny_clip_tokenizer import save_tiny_clip_tokenizer  # noqa: E402
from mim_jax.infer.sd_pipeline import StableDiffusion  # noqa: E402
from mim_jax.models.diffusion import presets  # noqa: E402

DESCRIPTIONS = ["a red fox in fresh snow", "a lighthouse at dusk"]
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", projection_dim=768)
CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                 hidden_act="gelu", projection_dim=1280)


def log(message: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def clip(values: dict, projection: bool):
  config = transformers.CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=512,
                                       eos_token_id=513, pad_token_id=513, **values)
  cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
  return cls(config)


def without_class(values: dict) -> dict:
  return {k: v for k, v in values.items() if k[0] != "_"}


def save_pipelines(out: Path):
  torch.manual_seed(0)
  tokenizer, tokenizer_2 = save_tiny_clip_tokenizer(out / "tok"), save_tiny_clip_tokenizer(out / "tok2", "!")
  scheduler = diffusers.EulerDiscreteScheduler(**without_class(presets.SDXL_SCHEDULER))  # host tables, as diffusers
  with torch.device("cuda"):
    vae = diffusers.AutoencoderKL(**without_class(presets.SDXL_VAE))
    encoder_2 = clip(CLIP_BIGG, True)
    base = diffusers.StableDiffusionXLPipeline(
        vae=vae, text_encoder=clip(CLIP_L, False), text_encoder_2=encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=diffusers.UNet2DConditionModel(**without_class(presets.SDXL_BASE_UNET)),
        scheduler=scheduler)
    refiner = diffusers.StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=encoder_2, tokenizer=None, tokenizer_2=tokenizer_2,
        unet=diffusers.UNet2DConditionModel(**without_class(presets.SDXL_REFINER_UNET)), scheduler=scheduler,
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
  for pipe in (base, refiner):  # all bf16: diffusers only upcasts a float16 VAE
    pipe.to(torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
  base.save_pretrained(out / "base")
  refiner.save_pretrained(out / "refiner")
  return base, refiner


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", type=Path, required=True)
  args = parser.parse_args()
  log(f"{torch.cuda.get_device_name()}, jax {jax.__version__}, torch {torch.__version__}")
  base, refiner = save_pipelines(args.out)
  log("random SDXL base and refiner written")
  start = time.perf_counter()
  ours = StableDiffusion.load(args.out / "base", refiner_dir=args.out / "refiner", dtype="bfloat16",
                              attention_impl="cudnn")
  log(f"ours loaded in {time.perf_counter() - start:.0f} s")
  latents = torch.randn(len(DESCRIPTIONS), 4, 128, 128, generator=torch.Generator().manual_seed(42))

  def reference():
    handed_over = base(DESCRIPTIONS, num_inference_steps=40, denoising_end=0.8, latents=latents.cuda().to(torch.bfloat16),
                       output_type="latent").images
    images = refiner(DESCRIPTIONS, image=handed_over, num_inference_steps=40, denoising_start=0.8,
                     output_type="np").images
    torch.cuda.synchronize()
    return images

  def ours_render():
    return ours.render_arrays(DESCRIPTIONS, steps=40, latents=latents.numpy().transpose(0, 2, 3, 1))

  results = {}
  for name, fn in (("diffusers", reference), ("ours", ours_render)):
    start = time.perf_counter()
    images = fn()
    first = time.perf_counter() - start
    runs = []
    for _ in range(2):
      start = time.perf_counter()
      fn()
      runs.append(time.perf_counter() - start)
    results[name] = (statistics.median(runs), images)
    log(f"{name}: {results[name][0]:.2f} s per render of {len(DESCRIPTIONS)} images (first {first:.1f} s)")
  diff = np.abs(results["ours"][1] - results["diffusers"][1])
  log(f"images: max |ours - diffusers| {diff.max():.3f}, mean {diff.mean():.4f} (bf16 UNets, pixel range 0..1)")
  print(f"\n| SDXL base + refiner, 1024x1024, 40 steps (switch 0.8), 2 images, bf16, {torch.cuda.get_device_name()} "
        f"| ours (JAX, cudnn) | diffusers (PyTorch) | speed-up |\n| --- | --- | --- | --- |\n"
        f"| text encoders + 32 base + 8 refiner guided steps + VAE decode | {results['ours'][0]:.2f} s | "
        f"{results['diffusers'][0]:.2f} s | {results['diffusers'][0] / results['ours'][0]:.2f}x |")


if __name__ == "__main__":
  main()
