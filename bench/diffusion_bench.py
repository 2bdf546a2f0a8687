"""Our Stable Diffusion (JAX/Flax) vs diffusers' PyTorch StableDiffusionPipeline on CPU, same weights, same run.

  python bench/diffusion_bench.py            # small SD-1.x-shaped model, 128x128 images (32x32 latents), 40 steps
  python bench/diffusion_bench.py --quick    # tiny widths, 10 steps (smoke run)

Two workloads: one UNet call on a guided batch (2 descriptions = 4 latents), and
the whole pipeline (text encoding, 40 guided Euler steps, VAE decode) from the
same initial latents. Ours loads the diffusers directory through
`StableDiffusion.load` and runs the jitted `lax.fori_loop` loop, as the MIM
generation loop does. Both frameworks get every core; "CPU util" shows how many
a measurement really got. The SDXL TPU memory check is launch/sdxl_aot_compile.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tempfile
import time
from pathlib import Path

# One CPU device: the tests' 8 emulated devices would split the cores and the batch.
os.environ["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench/mim_bench.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diffusers  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from bench.common import machine, measure, ms, progress, row  # noqa: E402
from bench.tiny_clip_tokenizer import save_tiny_clip_tokenizer  # noqa: E402
from mim_jax.infer.sd_pipeline import StableDiffusion  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sizes:
  unet_channels: tuple[int, ...]
  heads: tuple[int, ...]
  text_width: int
  text_layers: int
  vae_channels: tuple[int, ...]
  latent: int
  steps: int
  repeats: int


FULL = Sizes(unet_channels=(64, 128, 256), heads=(2, 4, 8), text_width=128, text_layers=4,
             vae_channels=(32, 64, 64), latent=32, steps=40, repeats=3)
QUICK = Sizes(unet_channels=(32, 64), heads=(2, 4), text_width=32, text_layers=2, vae_channels=(16, 32), latent=8,
              steps=10, repeats=2)
DESCRIPTIONS = ["a red fox in fresh snow", "a lighthouse at dusk"]


def save_pipeline(sizes: Sizes, directory: Path) -> diffusers.StableDiffusionPipeline:
  n = len(sizes.unet_channels)
  torch.manual_seed(0)
  unet = diffusers.UNet2DConditionModel(
      sample_size=sizes.latent, block_out_channels=sizes.unet_channels, layers_per_block=1, norm_num_groups=16,
      down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
      up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1), cross_attention_dim=sizes.text_width,
      attention_head_dim=sizes.heads)
  vae = diffusers.AutoencoderKL(block_out_channels=sizes.vae_channels, norm_num_groups=16, latent_channels=4,
                                layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * len(sizes.vae_channels),
                                up_block_types=("UpDecoderBlock2D",) * len(sizes.vae_channels))
  text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
      vocab_size=514, hidden_size=sizes.text_width, intermediate_size=4 * sizes.text_width,
      num_hidden_layers=sizes.text_layers, num_attention_heads=4, max_position_embeddings=77, bos_token_id=512,
      eos_token_id=513, pad_token_id=513))
  scheduler = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                               steps_offset=1, timestep_spacing="leading")
  pipe = diffusers.StableDiffusionPipeline(
      vae=vae.eval(), text_encoder=text.eval(), tokenizer=save_tiny_clip_tokenizer(directory / "tokenizer_source"),
      unet=unet.eval(), scheduler=scheduler, safety_checker=None, feature_extractor=None,
      requires_safety_checker=False)
  pipe.save_pretrained(directory / "pipeline")
  pipe.set_progress_bar_config(disable=True)
  return pipe


def bench_unet(sizes: Sizes, ours: StableDiffusion, reference) -> tuple:
  b = 2 * len(DESCRIPTIONS)
  rng = np.random.default_rng(0)
  latents = rng.standard_normal((b, sizes.latent, sizes.latent, 4), dtype=np.float32)
  context = rng.standard_normal((b, 77, sizes.text_width), dtype=np.float32)
  unet = ours.base.denoiser.unet
  call = jax.jit(lambda p, x, t, c: unet.apply({"params": p}, x, t, c))
  args = (ours.base.unet_params, jnp.asarray(latents), jnp.full((b,), 501.0), jnp.asarray(context))
  out = []
  ours_t = measure(lambda: out.append(jax.block_until_ready(call(*args))), 5 * sizes.repeats)
  x, c = torch.from_numpy(latents.transpose(0, 3, 1, 2).copy()), torch.from_numpy(context)

  def torch_call():
    with torch.inference_mode():
      out.append(reference.unet(x, torch.full((b,), 501.0), c).sample)

  torch_t = measure(torch_call, 5 * sizes.repeats)
  diff = float(np.abs(np.asarray(out[0]).transpose(0, 3, 1, 2) - out[-1].numpy()).max())
  return ours_t, torch_t, diff


def bench_pipeline(sizes: Sizes, ours: StableDiffusion, reference) -> tuple:
  torch.manual_seed(1)
  latents = torch.randn(len(DESCRIPTIONS), 4, sizes.latent, sizes.latent)
  size = sizes.latent * ours.vae_scale
  out = []
  ours_t = measure(lambda: out.append(ours.render_arrays(DESCRIPTIONS, steps=sizes.steps, guidance=7.5,
                                                         latents=latents.numpy().transpose(0, 2, 3, 1))),
                   sizes.repeats)

  def torch_call():
    with torch.inference_mode():
      out.append(reference(DESCRIPTIONS, num_inference_steps=sizes.steps, guidance_scale=7.5, latents=latents,
                           height=size, width=size, output_type="np").images)

  torch_t = measure(torch_call, sizes.repeats)
  return ours_t, torch_t, float(np.abs(out[0] - out[-1]).max())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="tiny widths and 10 steps")
  sizes = QUICK if parser.parse_args().quick else FULL
  wall0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    reference = save_pipeline(sizes, Path(tmp))
    ours = StableDiffusion.load(Path(tmp) / "pipeline")
    progress("saved and loaded", wall0)
    unet = bench_unet(sizes, ours, reference)
    progress("UNet call timed", wall0)
    pipeline = bench_pipeline(sizes, ours, reference)
    progress("pipeline timed", wall0)
  size = sizes.latent * ours.vae_scale
  print(f"\n{machine()}, diffusers {diffusers.__version__}")
  print(f"UNet {sizes.unet_channels}, heads {sizes.heads}, text width {sizes.text_width}; {len(DESCRIPTIONS)} "
        f"descriptions, guidance 7.5, {size}x{size} images ({sizes.latent}x{sizes.latent} latents), "
        f"{sizes.steps} Euler steps, float32\n")
  print(row("workload", "ours (JAX)", "diffusers (PyTorch)", "speed-up", "CPU util ours / torch", "max |diff|"))
  print(row(*["---"] * 6))
  for name, (ours_t, torch_t, diff) in (("UNet call (batch 4)", unet), (f"pipeline, {sizes.steps} steps", pipeline)):
    print(row(name, ms(ours_t.median_s), ms(torch_t.median_s), f"{torch_t.median_s / ours_t.median_s:.2f}x",
              f"{ours_t.cpu_per_wall:.1f} / {torch_t.cpu_per_wall:.1f}", f"{diff:.1e}"))
  print(f"\nfirst call (compile / warm-up): ours {ms(pipeline[0].first_s)}, torch {ms(pipeline[1].first_s)}")


if __name__ == "__main__":
  main()
