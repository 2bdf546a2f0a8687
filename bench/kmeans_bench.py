"""Our JAX k-means (data_gen.kmeans) vs faiss-cpu's k-means, same data, same iterations, same run.

  python bench/kmeans_bench.py             # 200k x 768 into 1024 clusters, 10 iterations (a few minutes)
  python bench/kmeans_bench.py --quick     # 20k x 128 into 64 clusters (smoke run)

Both start from k random input points (faiss's init; ours with init="random") with the same
iteration budget, then assign every point to its final centroid (ours inside `kmeans`, faiss
with `index.search`). Ours stops early at a fixed point (a pass that moves no point: further
iterations would return the same centroids bit for bit); faiss always runs the whole budget.
The table shows how many iterations ours ran, the time per budgeted iteration (total / budget)
and, to separate the algorithm from the kernels, CPU time per pass over the data. Ours
first runs 1 iteration to compile (iterations are traced, so the timed run reuses it); faiss
compiles nothing. CPU time (process CPU seconds) is the fairer number on a shared machine, where
the two runs may get different shares of the cores. Both mean squared distances show that they
solve the same problem. Both may use every core.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time
from pathlib import Path

# One CPU device: the tests' 8 emulated devices would split the cores.
os.environ["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import cpu_seconds, machine, ms, progress, row  # noqa: E402
from data_gen.kmeans import KMeansConfig, kmeans  # noqa: E402


def clustered_embeddings(n: int, d: int, centres: int, seed: int = 0) -> np.ndarray:
  """Unit vectors scattered around `centres` random directions, like CLIP embeddings of a topical corpus."""
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(centres, d)).astype(np.float32)
  x = means[rng.integers(0, centres, n)] + rng.normal(scale=1.5, size=(n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(fn) -> tuple[float, float]:
  """(wall seconds, process CPU seconds) of one call."""
  wall0, cpu0 = time.perf_counter(), cpu_seconds()
  fn()
  return time.perf_counter() - wall0, cpu_seconds() - cpu0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--iterations", type=int, default=10)
  args = parser.parse_args()
  n, d, k = (20_000, 128, 64) if args.quick else (200_000, 768, 1024)
  wall0 = time.perf_counter()
  x = clustered_embeddings(n, d, centres=k // 2)
  progress(f"data {n} x {d}, k={k}, {args.iterations} iterations", wall0)

  cfg = KMeansConfig(num_clusters=k, iterations=args.iterations, init="random", seed=0)
  # Iterations are traced, so a 1-iteration run compiles everything the timed run uses.
  compile_s, _ = timed(lambda: kmeans(x, dataclasses.replace(cfg, iterations=1)))
  ours_result = []
  ours_s, ours_cpu = timed(lambda: ours_result.append(kmeans(x, cfg)))
  progress("ours done", wall0)

  faiss_result = []

  def run_faiss():
    # max_points_per_centroid high enough that faiss trains on every point, as we do.
    km = faiss.Kmeans(d, k, niter=args.iterations, seed=0, max_points_per_centroid=n, spherical=False)
    km.train(x)
    distances, _ = km.index.search(x, 1)
    faiss_result.append(float(distances.mean()))

  faiss_s, faiss_cpu = timed(run_faiss)
  progress("faiss done", wall0)

  it, ran = args.iterations, ours_result[-1].iterations
  # Passes over the data: the training iterations plus the final assignment (faiss: index.search).
  ours_passes, faiss_passes = ran + 1, it + 1
  print(f"\nMachine: {machine()}; faiss {faiss.__version__} with {faiss.omp_get_max_threads()} OpenMP threads\n")
  print(row("k-means", "iterations (ours ran)", "ours / iteration", "faiss / iteration", "ours / faiss",
            "CPU time / pass (ours, faiss)", "ours / faiss per pass (CPU)", "ours 1-iteration warm-up",
            "mean sq. distance (ours, faiss)"))
  print(row(*["---"] * 9))
  print(row(f"{n // 1000}k x {d} → {k}", f"{it} ({ran})", ms(ours_s / it), ms(faiss_s / it),
            f"{ours_s / faiss_s:.2f}x", f"{ms(ours_cpu / ours_passes)}, {ms(faiss_cpu / faiss_passes)}",
            f"{(ours_cpu / ours_passes) / (faiss_cpu / faiss_passes):.2f}x", ms(compile_s),
            f"{ours_result[-1].inertia:.4f}, {faiss_result[-1]:.4f}"))


if __name__ == "__main__":
  main()
