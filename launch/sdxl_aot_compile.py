r"""Compiles the SDXL 1024x1024 pipeline (40-step guided base loop, optionally the
refiner's loop, and the VAE decode) ahead of time for a TPU topology, on a
machine without TPUs, from the release configs (models/diffusion/presets.py)
and abstract weights: whether a batch fits a chip before a pod is booked.

  python launch/sdxl_aot_compile.py --topology v5p:2x2x2
  python launch/sdxl_aot_compile.py --topology v5e:2x2 --per_chip 2 --dtype bfloat16 --refiner
  python launch/sdxl_aot_compile.py --topology local --attention_impl cudnn --refiner   # on a GPU machine

The batch (`--per_chip` descriptions per chip) is split over every device along
`data`; weights are replicated (2.6 B UNet params: 5.1 GB in bfloat16).
"""
from __future__ import annotations

import math
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # see launch/aot_compile.py
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from launch.aot_compile import GIB, chip_for_topology, topology_devices  # noqa: E402
from mim_jax.convert.diffusers import unet_example_args  # noqa: E402
from mim_jax.convert.diffusers_config import (  # noqa: E402
  scheduler_config_from_diffusers,
  unet_config_from_diffusers,
  vae_config_from_diffusers,
)
from mim_jax.models.diffusion import presets, schedulers  # noqa: E402
from mim_jax.models.diffusion.denoise import Conditioning, Denoiser  # noqa: E402
from mim_jax.models.diffusion.unet import UNet2DConditionModel  # noqa: E402
from mim_jax.models.diffusion.vae import AutoencoderKL  # noqa: E402
from mim_jax.nn.sharding import data_mesh  # noqa: E402

STEPS, SIZE = 40, 1024


def _abstract(tree, sharding, dtype=None):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype or x.dtype, sharding=sharding), tree)


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
           + m.generated_code_size_in_bytes)
  return dict(arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes, temporaries=m.temp_size_in_bytes,
              code=m.generated_code_size_in_bytes, total=total)


def compile_denoiser(unet_values: dict, mesh, batch: int, dtype: str, num_time_ids: int, context_dim: int,
                     attention_impl: str = "xla") -> dict:
  """Lowers and compiles the 40-step guided loop of one UNet; memory per device."""
  config = unet_config_from_diffusers(unet_values, dtype=dtype, attention_impl=attention_impl)
  unet = UNet2DConditionModel(config)
  replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
  shapes = jax.eval_shape(unet.init, jax.random.key(0), *unet_example_args(config, num_time_ids))["params"]
  params = _abstract(shapes, replicated, jnp.dtype(dtype))
  latent = SIZE // 8
  cond = Conditioning(
      jax.ShapeDtypeStruct((batch, 2, presets.SDXL_TEXT_LENGTH, context_dim), jnp.float32, sharding=split),
      jax.ShapeDtypeStruct((batch, 2, presets.SDXL_POOLED_DIM), jnp.float32, sharding=split),
      jax.ShapeDtypeStruct((batch, 2, num_time_ids), jnp.float32, sharding=split))
  schedule = schedulers.make_schedule(scheduler_config_from_diffusers(presets.SDXL_SCHEDULER), STEPS)
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=replicated)
  latents = jax.ShapeDtypeStruct((batch, latent, latent, config.in_channels), jnp.float32, sharding=split)
  lowered = Denoiser(unet, mesh)._run.lower(params, latents, cond, _abstract(schedule, replicated),
                                            scalar(jnp.int32), scalar(jnp.int32), scalar(jnp.float32), True)
  compiled = lowered.compile()
  num_params = sum(math.prod(p.shape) for p in jax.tree.leaves(shapes))
  return dict(num_params=num_params, **_memory(compiled))


def compile_decoder(mesh, batch: int) -> dict:
  config = vae_config_from_diffusers(presets.SDXL_VAE)  # force_upcast: float32
  vae = AutoencoderKL(config)
  replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
  latent = SIZE // 8
  shapes = jax.eval_shape(vae.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
  decode = jax.jit(lambda p, z: vae.apply({"params": p}, z, method="decode_latents"), out_shardings=split)
  compiled = decode.lower(_abstract(shapes, replicated),
                          jax.ShapeDtypeStruct((batch, latent, latent, 4), jnp.float32, sharding=split)).compile()
  return dict(num_params=sum(math.prod(p.shape) for p in jax.tree.leaves(shapes)), **_memory(compiled))


def _devices(topology: str) -> tuple[list, int, int]:
  """(devices, chips, HBM bytes per device) of a TPU topology, or of this machine's accelerators ("local")."""
  if topology == "local":
    devices = jax.local_devices()
    return devices, len(devices), (devices[0].memory_stats() or {}).get("bytes_limit", 0)
  devices = topology_devices(topology)
  num_chips = len({tuple(d.coords) for d in devices})
  return devices, num_chips, chip_for_topology(topology).hbm_bytes * num_chips // len(devices)


def compile_pipeline(topology: str, per_chip: int = 1, dtype: str = "bfloat16", refiner: bool = False,
                     attention_impl: str = "xla") -> dict:
  devices, num_chips, hbm_per_device = _devices(topology)
  mesh = data_mesh(devices)
  batch = per_chip * num_chips
  jobs = {"base denoise (40 steps, guided)": lambda: compile_denoiser(
      presets.SDXL_BASE_UNET, mesh, batch, dtype, 6, presets.SDXL_CONTEXT_DIM, attention_impl)}
  if refiner:  # the refiner conditions on text_encoder_2 alone (1280) with 5 time ids
    jobs["refiner denoise (40 steps, guided)"] = lambda: compile_denoiser(
        presets.SDXL_REFINER_UNET, mesh, batch, dtype, 5, presets.SDXL_POOLED_DIM, attention_impl)
  jobs["VAE decode (float32)"] = lambda: compile_decoder(mesh, batch)
  parts = {}
  for name, job in jobs.items():
    start = time.perf_counter()
    parts[name] = job()
    print(f"compiled {name} in {time.perf_counter() - start:.0f} s", flush=True)
  return dict(topology=topology, devices=len(devices), chips=num_chips, device_kind=devices[0].device_kind,
              batch=batch, hbm_per_device=hbm_per_device, parts=parts)


FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string("topology", "v5p:2x2x2", "TPU topology, <generation>:<chips per axis>; 'local' compiles "
                      "for this machine's own devices (e.g. a GPU).")
  flags.DEFINE_enum("attention_impl", "xla", ["xla", "cudnn"], "UNet attention ('cudnn' on NVIDIA GPUs only).")
  flags.DEFINE_integer("per_chip", 1, "Descriptions per chip (each is a guided pair in the UNet).")
  flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "UNet weights and compute dtype.")
  flags.DEFINE_bool("refiner", False, "Also compile the SDXL refiner's loop.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  r = compile_pipeline(FLAGS.topology, FLAGS.per_chip, FLAGS.dtype, FLAGS.refiner, FLAGS.attention_impl)
  print(f"SDXL {SIZE}x{SIZE}, {STEPS} steps, {FLAGS.dtype} UNet, batch {r['batch']} on {r['topology']}: "
        f"{r['chips']} chips, {r['devices']} devices ({r['device_kind']}), batch split over 'data'")
  size = lambda n: f"{n / GIB:.2f} GiB"
  print(f"{'memory per device':<36}{'params':>14}{'arguments':>12}{'temporaries':>13}{'total':>11}")
  for name, p in r["parts"].items():
    print(f"{name:<36}{p['num_params']:>14,}{size(p['arguments']):>12}{size(p['temporaries']):>13}"
          f"{size(p['total']):>11}")
  peak = max(p["total"] for p in r["parts"].values())
  print(f"largest stage {size(peak)} of {size(r['hbm_per_device'])} HBM per device: "
        f"{'fits' if peak <= r['hbm_per_device'] else 'DOES NOT FIT'} (stages run one after another; "
        "all stages' weights resident together add their argument sizes)")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
