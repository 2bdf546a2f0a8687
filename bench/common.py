"""What both benchmarks share: timing with CPU utilisation, the machine line,
and markdown table helpers. Imported after the benchmark has set up its
environment (one CPU device, thread settings)."""
from __future__ import annotations

import dataclasses
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import jax
import torch
import transformers


@dataclasses.dataclass
class Timing:
  median_s: float
  first_s: float  # the warm-up call: compilation, or torch's allocator and kernel selection
  cpu_per_wall: float  # process CPU seconds per wall second while timing: ~nproc means every core worked


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def measure(fn, repeats: int) -> Timing:
  """One warm-up call, then the median of `repeats` calls; `fn` must block until done."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  runs, cpu0, wall0 = [], cpu_seconds(), time.perf_counter()
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    runs.append(time.perf_counter() - start)
  return Timing(statistics.median(runs), first, (cpu_seconds() - cpu0) / (time.perf_counter() - wall0))


def machine() -> str:
  cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
  cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
             platform.processor())
  flags = next((line.split() for line in cpuinfo if line.startswith("flags")), [])
  simd = " ".join(f for f in ("avx2", "fma", "avx512f", "amx_tile") if f in flags)
  omp = os.environ.get("OMP_WAIT_POLICY")
  return (f"{os.cpu_count()} cores ({cpu}, {simd}), jax {jax.__version__} on {jax.devices()[0].platform} "
          f"x{jax.device_count()}, torch {torch.__version__} with {torch.get_num_threads()} threads"
          f"{f' and OMP_WAIT_POLICY={omp}' if omp else ''}, transformers {transformers.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")


def row(*cells) -> str:
  return "| " + " | ".join(str(c) for c in cells) + " |"


def ms(seconds: float) -> str:
  return f"{seconds * 1e3:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def progress(what: str, wall0: float) -> None:
  print(f"[{time.perf_counter() - wall0:6.0f} s] {what}", flush=True)
