"""k-means on L2-normalised image embeddings, in JAX (spec §1: cluster the
kept images' CLIP embeddings, keep clusters with ≥ 32 images).

`kmeans(embeddings, KMeansConfig(...))` → `KMeansResult` (centroids,
assignments, inertia, iterations run, the config). `keep_clusters(assignments,
min_size)` → {cluster id: member indices} of the clusters big enough to sample
from. `save_clusters` / `load_clusters` persist a result (npz, with the config
as JSON and optional record keys).

Layout: points are padded and laid out as (chunks, devices, chunk_size, d),
sharded on the device axis over a `data` mesh of the local devices. One Lloyd
pass scans the chunks: each device computes distances to all centroids for its
chunk (one matmul), takes the argmin and adds its points into per-device sums;
after the scan the per-device sums are added (XLA's all-reduce of a (k, d)
array), so memory is O(chunk_size · k) whatever n is. Training and the final
assignment are one `jit` each over the sharded points (full-batch training is
one `while_loop`), compiled once per shape: iterations and tolerance are traced.

Modes: full batch (Lloyd; stops after `iterations`, at a fixed point where no
point changes cluster (exactly the result more iterations would give), or when
the inertia improves by less than `tolerance` relatively) or mini-batch (Sculley
2010: each step takes one random chunk per device and moves each centroid by
its per-centroid learning rate 1 / points-seen). Either ends with a full
assignment pass. Inits: greedy k-means++ (Arthur & Vassilvitskii 2007) on a seeded
sample of `init_sample` points, or k distinct random points (faiss's default).
Empty clusters keep their previous centroid. Results are deterministic for a
seed and device count; different device counts add in a different order, so
centroids agree to float32 rounding.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mim_jax.models.config_base import ConfigBase
from mim_jax.nn.sharding import data_mesh

INITS = ("kmeans++", "random")
UPDATES = ("auto", "scatter", "matmul")
TEXTBIND_MIN_CLUSTER_SIZE = 32


@dataclasses.dataclass(frozen=True)
class KMeansConfig(ConfigBase):
  SECTION: ClassVar[str] = "kmeans"

  num_clusters: int = 4096
  iterations: int = 20  # Lloyd iterations (full batch) or steps (mini-batch)
  tolerance: float = 0.0  # full batch: stop when inertia improves by less than this fraction; 0 runs all
  init: str = "kmeans++"
  init_sample: int = 65536  # k-means++ seeds from at most this many points
  minibatch: bool = False
  chunk_size: int = 1024  # points per device per scan step; the per-device mini-batch in mini-batch mode
  # How centroid sums are formed: scatter-add (cheap on CPU) or a one-hot matmul (MXU-friendly on TPU/GPU).
  update: str = "auto"
  seed: int = 0

  def __post_init__(self):
    for field in ("num_clusters", "iterations", "init_sample", "chunk_size"):
      value = getattr(self, field)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"kmeans.{field} must be a positive int, got {value!r}")
    if self.init not in INITS:
      raise ValueError(f"kmeans.init is {self.init!r}; allowed values: {', '.join(INITS)}")
    if self.update not in UPDATES:
      raise ValueError(f"kmeans.update is {self.update!r}; allowed values: {', '.join(UPDATES)}")
    if not 0 <= self.tolerance < 1:
      raise ValueError(f"kmeans.tolerance must be in [0, 1), got {self.tolerance!r}")
    if self.minibatch and self.tolerance:
      raise ValueError("kmeans.tolerance applies to full-batch k-means; mini-batch runs a fixed number of steps "
                       "(set tolerance=0 or minibatch=False)")


@dataclasses.dataclass
class KMeansResult:
  centroids: np.ndarray  # (k, d) float32
  assignments: np.ndarray  # (n,) int32, in input order
  inertia: float  # mean squared distance from a point to its centroid
  iterations: int  # iterations (or mini-batch steps) actually run
  config: KMeansConfig


# --------------------------------------------------------------------------- input checks and layout


def _check_and_normalize(embeddings: np.ndarray, num_clusters: int) -> np.ndarray:
  x = np.asarray(embeddings)
  if x.ndim != 2 or x.shape[1] == 0:
    raise ValueError(f"embeddings must be (num_points, dim), got shape {x.shape}")
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"embeddings must be floating point, got {x.dtype}")
  x = x.astype(np.float32)
  bad = ~np.isfinite(x).all(axis=1)
  if bad.any():
    raise ValueError(f"{int(bad.sum())} embedding rows contain NaN or inf (first: row {int(np.flatnonzero(bad)[0])}); "
                     "drop the records that failed to embed (mim_jax.infer.clip_scores marks them) before clustering")
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  if (norms == 0).any():
    raise ValueError(f"{int((norms == 0).sum())} embedding rows are all zeros and cannot be L2-normalised; drop them")
  if num_clusters > len(x):
    raise ValueError(f"kmeans.num_clusters ({num_clusters}) is more than the number of points ({len(x)}); "
                     "lower num_clusters or embed more images")
  return x / norms


@dataclasses.dataclass(frozen=True)
class _Layout:
  num_points: int
  num_devices: int
  chunk_size: int
  num_chunks: int

  @classmethod
  def of(cls, num_points: int, num_devices: int, chunk_size: int) -> "_Layout":
    chunk = min(chunk_size, -(-num_points // num_devices))
    return cls(num_points, num_devices, chunk, -(-num_points // (num_devices * chunk)))

  def to_device_order(self, x: np.ndarray) -> np.ndarray:
    """(n, ...) → (chunks, devices, chunk, ...), zero-padded: each device holds a contiguous block of points."""
    total = self.num_chunks * self.num_devices * self.chunk_size
    padded = np.zeros((total, *x.shape[1:]), x.dtype)
    padded[:self.num_points] = x
    blocks = padded.reshape(self.num_devices, self.num_chunks, self.chunk_size, *x.shape[1:])
    return np.ascontiguousarray(np.swapaxes(blocks, 0, 1))

  def to_point_order(self, y: np.ndarray) -> np.ndarray:
    return np.swapaxes(y, 0, 1).reshape(-1, *y.shape[3:])[:self.num_points]


# --------------------------------------------------------------------------- device side


def _assign_chunk(x_Dcd, w_Dc, centroids_kd, update: str):
  """Nearest centroid of each point, its squared distance, and per-device (sums, counts)."""
  k = centroids_kd.shape[0]
  dots_Dck = jnp.einsum("Dcd,kd->Dck", x_Dcd, centroids_kd)
  # ||x||^2 is the same for every centroid, so the argmin needs only ||c||^2 - 2 x.c.
  partial_Dck = jnp.sum(centroids_kd * centroids_kd, axis=-1) - 2 * dots_Dck
  assign_Dc = jnp.argmin(partial_Dck, axis=-1).astype(jnp.int32)
  sq_dist_Dc = jnp.maximum(jnp.min(partial_Dck, axis=-1) + jnp.sum(x_Dcd * x_Dcd, axis=-1), 0.0)
  if update == "matmul":
    one_hot_Dck = jax.nn.one_hot(assign_Dc, k, dtype=x_Dcd.dtype) * w_Dc[..., None]
    sums_Dkd = jnp.einsum("Dck,Dcd->Dkd", one_hot_Dck, x_Dcd)
    counts_Dk = jnp.sum(one_hot_Dck, axis=1)
  else:
    segment_sum = lambda values, ids: jax.ops.segment_sum(values, ids, num_segments=k)
    sums_Dkd = jax.vmap(segment_sum)(x_Dcd * w_Dc[..., None], assign_Dc)
    counts_Dk = jax.vmap(segment_sum)(w_Dc, assign_Dc)
  return assign_Dc, sq_dist_Dc * w_Dc, sums_Dkd, counts_Dk


def _full_pass(x_mDcd, w_mDc, centroids_kd, update: str, rows: NamedSharding):
  """One assignment pass over every chunk: (assignments, summed sq. distance, sums (k, d), counts (k,))."""
  _, num_devices, _, d = x_mDcd.shape
  k = centroids_kd.shape[0]

  def step(carry, inputs):
    sums_Dkd, counts_Dk, inertia_D = carry
    assign_Dc, sq_Dc, chunk_sums, chunk_counts = _assign_chunk(*inputs, centroids_kd, update)
    return (sums_Dkd + chunk_sums, counts_Dk + chunk_counts, inertia_D + jnp.sum(sq_Dc, axis=-1)), assign_Dc

  zeros = lambda shape: jax.lax.with_sharding_constraint(jnp.zeros(shape, jnp.float32), rows)
  carry = (zeros((num_devices, k, d)), zeros((num_devices, k)), zeros((num_devices,)))
  (sums_Dkd, counts_Dk, inertia_D), assign_mDc = jax.lax.scan(step, carry, (x_mDcd, w_mDc))
  # Summing the device axis is the all-reduce of the partial sums.
  return assign_mDc, jnp.sum(inertia_D), jnp.sum(sums_Dkd, axis=0), jnp.sum(counts_Dk, axis=0)


@functools.partial(jax.jit, static_argnames=("update", "per_device"))
def _train_lloyd(x_mDcd, w_mDc, centroids_kd, iterations, tolerance, *, update: str, per_device: NamedSharding):
  """Full-batch Lloyd iterations on the devices: (centroids, iterations run). `iterations` and `tolerance`
  are traced, so one compilation serves every run with the same shapes.

  Stops at a fixed point: once a pass changes no assignment, the sums and so the centroids repeat exactly,
  and every further iteration would return the same centroids bit for bit."""

  def cond(state):
    iteration, _, previous, current, _, changed = state
    # The first two passes have no previous inertia to compare with; tolerance 0 disables this test.
    improving = previous - current > tolerance * previous
    return (iteration < iterations) & (changed > 0) & ((tolerance == 0) | (iteration < 2) | improving)

  def body(state):
    iteration, centroids, _, current, assign_before, _ = state
    assign_mDc, inertia, sums_kd, counts_k = _full_pass(x_mDcd, w_mDc, centroids, update, per_device)
    updated = jnp.where(counts_k[:, None] > 0, sums_kd / jnp.maximum(counts_k, 1)[:, None], centroids)
    changed = jnp.sum(assign_mDc != assign_before)
    return iteration + 1, updated, current, inertia, assign_mDc, changed

  inf = jnp.asarray(jnp.inf, jnp.float32)
  unassigned = jnp.full(x_mDcd.shape[:3], -1, jnp.int32)
  state = (jnp.int32(0), centroids_kd, inf, inf, unassigned, jnp.int32(1))
  iteration, centroids, *_ = jax.lax.while_loop(cond, body, state)
  return centroids, iteration


@functools.partial(jax.jit, static_argnames=("update", "per_device"))
def _assign_all(x_mDcd, w_mDc, centroids_kd, *, update: str, per_device: NamedSharding):
  """(assignments (chunks, devices, chunk), summed squared distance)."""
  return _full_pass(x_mDcd, w_mDc, centroids_kd, update, per_device)[:2]


@functools.partial(jax.jit, static_argnames=("update",))
def _train_minibatch(x_mDcd, w_mDc, centroids_kd, key, steps, *, update: str):
  num_chunks = x_mDcd.shape[0]

  def body(step, state):
    centroids, seen_k = state
    chunk = jax.random.randint(jax.random.fold_in(key, step), (), 0, num_chunks)
    _, _, sums_Dkd, counts_Dk = _assign_chunk(x_mDcd[chunk], w_mDc[chunk], centroids, update)
    sums_kd, counts_k = jnp.sum(sums_Dkd, axis=0), jnp.sum(counts_Dk, axis=0)
    seen_k = seen_k + counts_k
    # c ← c + (Σx − n·c) / seen: each centroid is the running mean of every point it has been given.
    centroids = centroids + (sums_kd - counts_k[:, None] * centroids) / jnp.maximum(seen_k, 1)[:, None]
    return centroids, seen_k

  centroids, _ = jax.lax.fori_loop(0, steps, body, (centroids_kd, jnp.zeros(centroids_kd.shape[0], jnp.float32)))
  return centroids


@functools.partial(jax.jit, static_argnums=1)
def _kmeans_plus_plus(sample_sd, num_clusters: int, key):
  """Greedy k-means++ seeding: each step draws 2 + ln(k) candidates with probability ∝ squared distance to
  the centres chosen so far and keeps the one that lowers the total most (plain k-means++ with a single
  candidate falls into poor local optima far more often)."""
  s = sample_sd.shape[0]
  trials = 2 + int(np.log(num_clusters))
  sample_sq_s = jnp.sum(sample_sd * sample_sd, axis=-1)

  def sq_dist(c_td):  # (t, s) as one matmul rather than a (t, s, d) difference
    dots_ts = jnp.einsum("td,sd->ts", c_td, sample_sd)
    return jnp.maximum(sample_sq_s - 2 * dots_ts + jnp.sum(c_td * c_td, axis=-1, keepdims=True), 0.0)

  first = jax.random.randint(jax.random.fold_in(key, 0), (), 0, s)

  def body(i, state):
    centres, min_sq_s = state
    logits = jnp.where(min_sq_s > 0, jnp.log(jnp.maximum(min_sq_s, 1e-30)), -jnp.inf)
    candidates_t = jax.random.categorical(jax.random.fold_in(key, i), logits, shape=(trials,))
    min_sq_ts = jnp.minimum(min_sq_s, sq_dist(sample_sd[candidates_t]))
    best = jnp.argmin(jnp.sum(min_sq_ts, axis=-1))
    return centres.at[i].set(sample_sd[candidates_t[best]]), min_sq_ts[best]

  centres = jnp.zeros((num_clusters, sample_sd.shape[1]), sample_sd.dtype).at[0].set(sample_sd[first])
  centres, _ = jax.lax.fori_loop(1, num_clusters, body, (centres, sq_dist(sample_sd[first][None])[0]))
  return centres


# --------------------------------------------------------------------------- API


def _initial_centroids(x: np.ndarray, cfg: KMeansConfig) -> np.ndarray:
  rng = np.random.default_rng(cfg.seed)
  if cfg.init == "random":
    return x[np.sort(rng.choice(len(x), cfg.num_clusters, replace=False))]
  sample = x[np.sort(rng.choice(len(x), min(len(x), cfg.init_sample), replace=False))]
  if len(sample) < cfg.num_clusters:
    raise ValueError(f"kmeans.init_sample ({cfg.init_sample}) must be at least num_clusters ({cfg.num_clusters})")
  key = jax.random.key(cfg.seed)
  return np.asarray(_kmeans_plus_plus(jnp.asarray(sample), cfg.num_clusters, key))


def kmeans(embeddings: np.ndarray, config: KMeansConfig, *, mesh: Mesh | None = None) -> KMeansResult:
  """k-means of the L2-normalised rows of `embeddings` (n, d); see the module docstring.

  `mesh`: a mesh with a `data` axis to split the points over (default: all local devices)."""
  cfg = config
  x = _check_and_normalize(embeddings, cfg.num_clusters)
  mesh = mesh or data_mesh(jax.local_devices())
  num_devices = mesh.shape["data"]
  layout = _Layout.of(len(x), num_devices, cfg.chunk_size)
  order = np.random.default_rng(cfg.seed).permutation(len(x)) if cfg.minibatch else np.arange(len(x))
  rows = NamedSharding(mesh, PartitionSpec(None, "data"))
  per_device = NamedSharding(mesh, PartitionSpec("data"))
  replicated = NamedSharding(mesh, PartitionSpec())
  # Committed inputs carry their shardings into the jitted functions below.
  x_mDcd = jax.device_put(layout.to_device_order(x[order]), rows)
  # Weight 1 for every point, 0 for the padding.
  w_mDc = jax.device_put(layout.to_device_order(np.ones(len(x), np.float32)), rows)
  centroids = jax.device_put(_initial_centroids(x, cfg), replicated)
  update = cfg.update if cfg.update != "auto" else ("scatter" if jax.default_backend() == "cpu" else "matmul")

  if cfg.minibatch:
    centroids = _train_minibatch(x_mDcd, w_mDc, centroids, jax.random.key(cfg.seed + 1), cfg.iterations,
                                 update=update)
    iterations = cfg.iterations
  else:
    centroids, iterations = _train_lloyd(x_mDcd, w_mDc, centroids, cfg.iterations, cfg.tolerance, update=update,
                                         per_device=per_device)
  assign_mDc, total_sq = _assign_all(x_mDcd, w_mDc, centroids, update=update, per_device=per_device)
  assignments = np.empty(len(x), np.int32)
  assignments[order] = layout.to_point_order(np.asarray(assign_mDc))
  return KMeansResult(np.asarray(centroids), assignments, float(total_sq) / len(x), int(iterations), cfg)


def keep_clusters(assignments: np.ndarray, min_size: int = TEXTBIND_MIN_CLUSTER_SIZE) -> dict[int, np.ndarray]:
  """{cluster id: sorted indices of its points} for every cluster with at least `min_size` points."""
  assignments = np.asarray(assignments)
  if assignments.ndim != 1 or not np.issubdtype(assignments.dtype, np.integer) or (assignments < 0).any():
    raise ValueError(f"assignments must be a 1-D array of cluster ids >= 0, got {assignments.dtype} "
                     f"{assignments.shape}")
  if min_size < 1:
    raise ValueError(f"min_size must be at least 1, got {min_size}")
  order = np.argsort(assignments, kind="stable")
  ids, starts, counts = np.unique(assignments[order], return_index=True, return_counts=True)
  return {int(c): order[s:s + n] for c, s, n in zip(ids, starts, counts) if n >= min_size}


def save_clusters(path: str | os.PathLike, result: KMeansResult, keys: Sequence[str] | None = None) -> None:
  """Writes an .npz: centroids, assignments, inertia, iterations, the config as JSON and optional record
  keys (e.g. image ids, one per assignment) so that assignments stay tied to their records."""
  if keys is not None and len(keys) != len(result.assignments):
    raise ValueError(f"{len(keys)} keys for {len(result.assignments)} assignments; pass one key per point")
  arrays = dict(centroids=result.centroids, assignments=result.assignments, inertia=np.float64(result.inertia),
                iterations=np.int64(result.iterations), config_json=np.array(json.dumps(result.config.to_dict())))
  if keys is not None:
    arrays["keys"] = np.asarray(keys, dtype=str)
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def load_clusters(path: str | os.PathLike) -> tuple[KMeansResult, np.ndarray | None]:
  """(result, keys or None) from `save_clusters`' file."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist; write it with data_gen.kmeans.save_clusters")
  with np.load(path, allow_pickle=False) as data:
    missing = {"centroids", "assignments", "inertia", "iterations", "config_json"} - set(data.files)
    if missing:
      raise ValueError(f"{path} is not a cluster file: it lacks {sorted(missing)}")
    config = KMeansConfig.from_dict(json.loads(str(data["config_json"])))
    result = KMeansResult(data["centroids"], data["assignments"], float(data["inertia"]), int(data["iterations"]),
                          config)
    return result, (data["keys"] if "keys" in data.files else None)
