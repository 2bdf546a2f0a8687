r"""Compiles the configured train step (forward, backward, AdamW update) ahead
of time for a TPU topology, on a machine without TPUs, and reports the
per-chip memory and the compiler's FLOP count: whether a config fits before a
pod is booked. The step is the one training runs: both build it with
mim_jax/train/setup.py:build_run (Llama and MIM configs alike).

  python launch/aot_compile.py --config configs/llama_lm.py:llama2_7b --topology v5p:2x2x2
  python launch/aot_compile.py --config configs/llama_lm.py:llama2_7b --topology v5p:2x2x2 \
      --config.train.batch_size=8 --config.train.seq_len=4096
  python launch/aot_compile.py --config configs/llama_lm.py:llama2_7b --topology v5p:2x2x2 --num_slices=2

`--topology` is `<generation>:<chips per axis>`, e.g. v5p:2x2x2, v5e:4x4, v4:2x2x2,
v6e:2x2 (libtpu's own names; needs libtpu installed, as with `jax[tpu]`).
libtpu warns that TPU_ACCELERATOR_TYPE / TPU_WORKER_HOSTNAMES are unset: harmless
for a compile-only topology.
"""
from __future__ import annotations

import os
import sys

# The CPU backend is enough to trace; without this JAX first tries (and fails,
# after seconds) to start a TPU backend on local chips. Compile-only TPU
# devices still come from the libtpu plugin.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu takes a machine-wide lock (/tmp/libtpu_lockfile) meant for real chips;
# compile-only use needs none, and without this a second compile (another
# terminal, a parallel test) fails with "ABORTED: ... libtpu_lockfile".
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# launch/ is not a package: make `configs` and `mim_jax` importable as a script.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import math  # noqa: E402
import re  # noqa: E402
from dataclasses import replace  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mim_jax.models.mim import MIMConfig  # noqa: E402
from mim_jax.train.metrics import CHIPS, GIB, Chip  # noqa: E402
from mim_jax.train.setup import Run, build_run  # noqa: E402

TOPOLOGY_CHIPS = {chip.topology: chip for chip in CHIPS if chip.topology}
_TOPOLOGY_NAME = re.compile(r"^([a-zA-Z0-9]+)[=_:]([0-9]+(?:x[0-9]+)*)(_twisted|_untwisted)?$")


def chip_for_topology(topology: str) -> Chip:
  match = _TOPOLOGY_NAME.match(topology)
  if not match or match.group(1).lower() not in TOPOLOGY_CHIPS:
    raise ValueError(
        f"unknown TPU topology {topology!r}; expected <generation>:<chips per axis> with generation one of "
        f"{', '.join(sorted(TOPOLOGY_CHIPS))}, e.g. v5p:2x2x2, v5e:2x2, v4:2x2x1, v6e:2x2"
    )
  return TOPOLOGY_CHIPS[match.group(1).lower()]


def topology_devices(topology: str, num_slices: int = 1) -> list:
  """Compile-only TPU devices of `num_slices` slices of `topology`."""
  chip_for_topology(topology)
  if num_slices < 1:
    raise ValueError(f"num_slices must be >= 1, got {num_slices}")
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=topology, num_slices=num_slices).devices)
  except jax.errors.JaxRuntimeError as e:
    raise ValueError(f"libtpu rejected TPU topology {topology!r} (num_slices={num_slices}): {e}") from e


def _bytes(tree) -> int:
  return sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree))


def _bytes_per_device(tree) -> int:
  """The largest shard of each leaf: what one device holds of `tree`."""
  return sum(math.prod(a.sharding.shard_shape(a.shape)) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree))


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def _layer_stacks(cfg) -> dict:
  """name -> (tower config, rebuild(cfg, tower)) for each scanned layer stack."""
  if isinstance(cfg, MIMConfig):
    return {"llm": (cfg.llm, lambda c, t: replace(c, llm=t)), "vision": (cfg.vision, lambda c, t: replace(c, vision=t))}
  return {"llm": (cfg, lambda c, t: t)}


def _unrolled_flops(run: Run, devices, compiler_flops: float) -> float:
  """XLA's cost analysis counts a while loop's body once, so a scanned layer
  stack reports the FLOPs of one layer. One layer's cost is the difference of
  1- and 2-layer unrolled compiles (every other stack at 1 layer); for
  llama2_7b these two take about as long as the full compile."""
  cfg = run.model_cfg
  stacks = {name: s for name, s in _layer_stacks(cfg).items() if s[0].scan_layers and s[0].num_layers > 1}
  if not stacks:
    return compiler_flops

  def shrunk(layers: dict) -> float:
    small = cfg
    for name, (tower, rebuild) in _layer_stacks(cfg).items():
      small = rebuild(small, replace(tower, num_layers=layers.get(name, 1), scan_layers=False))
    return _flops(build_run(run.config, devices, model_cfg=small).lower().compile())

  base = shrunk({})
  return compiler_flops + sum((tower.num_layers - 1) * (shrunk({name: 2}) - base)
                              for name, (tower, _) in stacks.items())


def compile_for_topology(config, topology: str, num_slices: int = 1, exact_flops: bool = True) -> dict:
  """Lowers and compiles one train step for `topology` with abstract inputs.

  Memory figures are bytes per device, from XLA's `memory_analysis()`.
  `compiler_flops_per_device` is `cost_analysis()` of the partitioned program
  as XLA reports it (one iteration of the layer scan); `flops_per_device` adds
  the other layers (see `_unrolled_flops`; skipped with `exact_flops=False`,
  which saves two to four small compiles) and `flops` is that times the
  devices. On v4 the compile-only topology has one device per TensorCore (two
  per chip), so per-device HBM and peak are half a chip's.
  """
  chip = chip_for_topology(topology)
  devices = topology_devices(topology, num_slices)
  num_chips = len({(getattr(d, "slice_index", 0) or 0, tuple(d.coords)) for d in devices})
  devices_per_chip = len(devices) // num_chips
  run = build_run(config, devices)
  mesh, state = run.mesh, run.abstract_state()
  compiled = run.lower().compile()
  memory = compiled.memory_analysis()
  compiler_flops = _flops(compiled)
  flops_per_device = _unrolled_flops(run, devices, compiler_flops) if exact_flops else compiler_flops
  # Donated state is aliased to the output, so count it once.
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
           + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)
  hbm_per_device = chip.hbm_bytes // devices_per_chip
  model_flops = run.flops()
  peak_per_device = chip.peak_bf16_flops / devices_per_chip
  return dict(
      topology=topology,
      num_slices=num_slices,
      num_devices=len(devices),
      num_chips=num_chips,
      device_kind=devices[0].device_kind,
      mesh_shape=dict(mesh.shape),
      num_params=sum(math.prod(p.shape) for p in jax.tree.leaves(state["params"])),
      tokens_per_step=config.train.batch_size * config.train.seq_len,
      state_bytes=_bytes(state),
      state_bytes_per_device=_bytes_per_device(state),
      params_bytes_per_device=_bytes_per_device(state["params"]),
      argument_bytes=memory.argument_size_in_bytes,
      output_bytes=memory.output_size_in_bytes,
      alias_bytes=memory.alias_size_in_bytes,
      temp_bytes=memory.temp_size_in_bytes,
      generated_code_bytes=memory.generated_code_size_in_bytes,
      total_bytes=total,
      hbm_bytes_per_device=hbm_per_device,
      fits=total <= hbm_per_device,
      compiler_flops_per_device=compiler_flops,
      flops_per_device=flops_per_device,
      flops=flops_per_device * len(devices),
      step_time_s=flops_per_device / peak_per_device,
      model_flops=model_flops,
      # Compute-bound at peak with no communication: an upper bound on MFU, set by
      # what the compiled step executes beyond the model FLOPs (remat recompute, etc.).
      mfu_bound=model_flops / (flops_per_device * len(devices)),
  )


FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Only when run as a script, so importing this module (tests) does not claim
  the global `--config` flag other programs define."""
  config_flags.DEFINE_config_file("config", None, "Run config file, e.g. configs/llama_lm.py:llama2_7b.")
  flags.DEFINE_string("topology", "v5p:2x2x2", "TPU topology, <generation>:<chips per axis>.")
  flags.DEFINE_integer("num_slices", 1, "Slices of --topology joined over DCN (multislice).")
  flags.mark_flags_as_required(["config"])


def _size(n: float) -> str:
  return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  r = compile_for_topology(FLAGS.config, FLAGS.topology, FLAGS.num_slices)
  print(f"topology      {r['topology']} x {r['num_slices']} slice(s): {r['num_chips']} chips, "
        f"{r['num_devices']} devices ({r['device_kind']})")
  print(f"mesh          {r['mesh_shape']}")
  print(f"parameters    {r['num_params']:,}; train state {_size(r['state_bytes'])}, "
        f"{_size(r['state_bytes_per_device'])} per device")
  print(f"batch         {r['tokens_per_step']:,} tokens per step")
  print("memory per device (XLA memory_analysis):")
  for label, key in (("arguments", "argument_bytes"), ("outputs", "output_bytes"), ("temporaries", "temp_bytes"),
                     ("code", "generated_code_bytes")):
    print(f"  {label:<12}{_size(r[key]):>12}")
  print(f"  {'aliased':<12}{_size(r['alias_bytes']):>12}  (outputs in donated arguments, counted once)")
  print(f"  {'total':<12}{_size(r['total_bytes']):>12}  of {_size(r['hbm_bytes_per_device'])} HBM: "
        f"{'fits' if r['fits'] else 'DOES NOT FIT'}")
  scanned = (f", of which XLA reports {r['compiler_flops_per_device']:.4g}: one scanned layer"
             if r["compiler_flops_per_device"] != r["flops_per_device"] else "")
  print(f"flops         {r['flops']:.4g} per step, {r['flops_per_device']:.4g} per device{scanned}; "
        f"{r['flops'] / (6 * r['num_params'] * r['tokens_per_step']):.2f} x 6*N*T")
  print(f"step time     >= {r['step_time_s'] * 1e3:.3g} ms at peak bf16 FLOP/s")
  if r["mfu_bound"] <= 1:
    print(f"MFU           <= {r['mfu_bound']:.1%}: model FLOPs {r['model_flops']:.4g} (mim_jax/train/metrics.py) over "
          f"the {r['flops']:.4g} the step executes, if it ran at peak with no communication")
  else:
    # Seen for the MIM step: the per-layer difference of the small unrolled compiles undercounts there.
    print(f"MFU           not estimated: the compiler's corrected count ({r['flops']:.4g}) is below the model "
          f"FLOPs ({r['model_flops']:.4g}), so it undercounts this program; at peak the model FLOPs alone take "
          f">= {r['model_flops'] / r['num_devices'] / (r['flops_per_device'] / r['step_time_s']) * 1e3:.3g} ms")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
