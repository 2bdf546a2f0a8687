"""The SDXL base UNet at 1024x1024 (release shapes, 2.57 B random weights) on one
NVIDIA GPU, bfloat16: ours (JAX/Flax) vs diffusers (PyTorch, its default SDPA
attention), same weights, same run.

  python bench/sdxl_gpu_bench.py             # one UNet call, then the 40-step guided Euler loop
  python bench/sdxl_gpu_bench.py --steps 10

The UNet call is one guided pair (batch 2, 128x128 latents, 77 text tokens);
ours is timed with XLA's dense attention and with cuDNN's fused attention
(`attention_impl="cudnn"`). The loop is what `Denoiser` jits (lax.fori_loop,
classifier-free guidance 5.0) against the same loop written with diffusers'
EulerDiscreteScheduler, as StableDiffusionXLPipeline runs it.
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
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from jax.sharding import AxisType, Mesh  # noqa: E402

from mim_jax.convert.diffusers import read_params, unet_example_args  # noqa: E402
from mim_jax.convert.diffusers_config import scheduler_config_from_diffusers, unet_config_from_diffusers  # noqa: E402
from mim_jax.convert.table import ArrayReader  # noqa: E402
from mim_jax.models.diffusion import presets, schedulers  # noqa: E402
from mim_jax.models.diffusion.denoise import Conditioning, Denoiser  # noqa: E402
from mim_jax.models.diffusion.unet import UNet2DConditionModel  # noqa: E402

GUIDANCE, SIZE = 5.0, 1024


def log(message: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def timed(fn, repeats: int) -> tuple[float, float]:
  """(first call s, median of `repeats` further calls s); `fn` must block until done."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    runs.append(time.perf_counter() - start)
  return first, statistics.median(runs)


def inputs(batch: int):
  g = torch.Generator().manual_seed(0)
  latent = SIZE // 8
  return dict(latents=torch.randn(batch, 4, latent, latent, generator=g),
              context=torch.randn(batch, 77, presets.SDXL_CONTEXT_DIM, generator=g),
              pooled=torch.randn(batch, presets.SDXL_POOLED_DIM, generator=g),
              time_ids=torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * batch, dtype=torch.float32))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  log(f"{torch.cuda.get_device_name()}, jax {jax.__version__} {jax.devices()[0].platform}, torch {torch.__version__}, "
      f"diffusers {diffusers.__version__}")

  torch.manual_seed(0)
  with torch.device("cuda"):
    reference = diffusers.UNet2DConditionModel(**{k: v for k, v in presets.SDXL_BASE_UNET.items() if k[0] != "_"})
  reference = reference.to(torch.bfloat16).eval()
  state = {name: t.float().cpu().numpy() for name, t in reference.state_dict().items()}
  configs = {impl: unet_config_from_diffusers(presets.SDXL_BASE_UNET, dtype="bfloat16", attention_impl=impl)
             for impl in ("xla", "cudnn")}
  params = read_params(ArrayReader(state, "torch state dict"), UNet2DConditionModel(configs["xla"]),
                       unet_example_args(configs["xla"]), "bfloat16")
  del state
  params = jax.device_put(params)
  log(f"weights: {sum(p.size for p in jax.tree.leaves(params)):,} params in bfloat16 on both sides")

  x = inputs(2)
  cuda = {k: v.cuda().to(torch.bfloat16) for k, v in x.items()}
  t = torch.tensor([500.0, 500.0], device="cuda")

  def torch_call():
    with torch.inference_mode():
      out = reference(cuda["latents"], t, cuda["context"],
                      added_cond_kwargs=dict(text_embeds=cuda["pooled"], time_ids=cuda["time_ids"])).sample
    torch.cuda.synchronize()
    return out

  first, torch_unet = timed(torch_call, args.repeats)
  want = torch_call().float().cpu().numpy()
  log(f"diffusers UNet call: {torch_unet * 1e3:.1f} ms (first {first:.1f} s)")
  ours_args = (jnp.asarray(x["latents"].numpy().transpose(0, 2, 3, 1)), jnp.full((2,), 500.0),
               jnp.asarray(x["context"].numpy()), jnp.asarray(x["pooled"].numpy()), jnp.asarray(x["time_ids"].numpy()))
  unet_times = {}
  for impl, config in configs.items():
    call = jax.jit(lambda p, *a, c=config: UNet2DConditionModel(c).apply({"params": p}, *a))
    try:
      first, unet_times[impl] = timed(lambda call=call: jax.block_until_ready(call(params, *ours_args)), args.repeats)
    except Exception as e:  # cuDNN's fused attention depends on the GPU, driver and cuDNN version
      log(f"ours ({impl}) failed: {type(e).__name__}: {str(e)[:300]}")
      continue
    got = np.asarray(call(params, *ours_args)).transpose(0, 3, 1, 2)
    error = np.abs(got - want).max() / np.abs(want).max()
    log(f"ours ({impl}) UNet call: {unet_times[impl] * 1e3:.1f} ms (first {first:.1f} s incl. compile), "
        f"{torch_unet / unet_times[impl]:.2f}x diffusers; max |ours - diffusers| / max |diffusers| = {error:.3f}")

  impl = min(unet_times, key=unet_times.get)
  scheduler_values = presets.SDXL_SCHEDULER
  scheduler = diffusers.EulerDiscreteScheduler(**{k: v for k, v in scheduler_values.items() if k[0] != "_"})
  noise = inputs(1)
  pair = lambda v: torch.cat([torch.zeros_like(v), v]).cuda().to(torch.bfloat16)  # zero unconditional (SDXL)
  context, pooled = pair(noise["context"]), pair(noise["pooled"])
  time_ids = torch.cat([noise["time_ids"]] * 2).cuda().to(torch.bfloat16)

  def torch_loop():
    scheduler.set_timesteps(args.steps, device="cuda")
    latents = noise["latents"].cuda() * scheduler.init_noise_sigma
    with torch.inference_mode():
      for step_t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), step_t).to(torch.bfloat16)
        out = reference(model_input, step_t, context,
                        added_cond_kwargs=dict(text_embeds=pooled, time_ids=time_ids)).sample
        uncond, text = out.chunk(2)
        latents = scheduler.step(uncond + GUIDANCE * (text - uncond), step_t, latents).prev_sample
    torch.cuda.synchronize()
    return latents

  first, torch_loop_s = timed(torch_loop, 2)
  log(f"diffusers {args.steps}-step guided loop: {torch_loop_s:.2f} s (first {first:.1f} s)")
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",), axis_types=(AxisType.Auto,))
  denoiser = Denoiser(UNet2DConditionModel(configs[impl]), mesh)
  schedule = schedulers.make_schedule(scheduler_config_from_diffusers(scheduler_values), args.steps)
  to_pair = lambda v: np.stack([np.zeros_like(v), v], axis=1)
  cond = Conditioning(to_pair(noise["context"].numpy()), to_pair(noise["pooled"].numpy()),
                      to_pair(noise["time_ids"].numpy()))
  latents = noise["latents"].numpy().transpose(0, 2, 3, 1) * schedule.init_noise_sigma
  run = lambda: jax.block_until_ready(denoiser(params, latents, cond, schedule, 0, args.steps, GUIDANCE))
  first, ours_loop_s = timed(run, 2)
  log(f"ours ({impl}) {args.steps}-step guided loop: {ours_loop_s:.2f} s (first {first:.1f} s incl. compile), "
      f"{torch_loop_s / ours_loop_s:.2f}x diffusers")
  print(f"\n| SDXL base UNet, 1024x1024, bf16, {torch.cuda.get_device_name()} | ours (JAX, {impl}) | diffusers "
        "(PyTorch) | speed-up |\n| --- | --- | --- | --- |\n"
        f"| UNet call, guided pair (batch 2) | {unet_times[impl] * 1e3:.1f} ms | {torch_unet * 1e3:.1f} ms | "
        f"{torch_unet / unet_times[impl]:.2f}x |\n| {args.steps}-step guided Euler loop | {ours_loop_s:.2f} s | "
        f"{torch_loop_s:.2f} s | {torch_loop_s / ours_loop_s:.2f}x |")


if __name__ == "__main__":
  main()
