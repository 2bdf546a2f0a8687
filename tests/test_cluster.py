"""data_gen.kmeans: k-means finds known clusters, sharded equals unsharded, bad input is refused."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from data_gen.kmeans import KMeansConfig, keep_clusters, kmeans, load_clusters, save_clusters
from mim_jax.nn.sharding import data_mesh


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
  """Hubert & Arabie's ARI from the contingency table."""
  _, a = np.unique(a, return_inverse=True)
  _, b = np.unique(b, return_inverse=True)
  table = np.zeros((a.max() + 1, b.max() + 1))
  np.add.at(table, (a, b), 1)
  pairs = lambda counts: np.sum(counts * (counts - 1) / 2)
  index, rows, cols, total = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), pairs(np.array(len(a)))
  expected = rows * cols / total
  return float((index - expected) / ((rows + cols) / 2 - expected))


def blobs(n=1200, k=8, d=32, noise=0.15, seed=0):
  """Unit vectors around k random unit centres, with unequal cluster sizes."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(k, d))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  labels = rng.choice(k, size=n, p=np.arange(1, k + 1) / np.sum(np.arange(1, k + 1)))
  x = centres[labels] + noise * rng.normal(size=(n, d)) / np.sqrt(d)
  return x.astype(np.float32), labels


def test_adjusted_rand_index_reference_values():
  assert adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([5, 5, 2, 2])) == 1.0
  assert adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])) == pytest.approx(-0.5)


@pytest.mark.parametrize("minibatch,update", [(False, "scatter"), (True, "scatter"), (False, "matmul")])
def test_finds_known_clusters(minibatch, update):
  x, labels = blobs()
  cfg = KMeansConfig(num_clusters=8, iterations=40 if minibatch else 20, minibatch=minibatch, chunk_size=32,
                     update=update, seed=1)
  result = kmeans(x, cfg)
  assert adjusted_rand_index(result.assignments, labels) >= 0.95
  assert result.centroids.shape == (8, 32) and result.assignments.shape == (1200,)
  # The reported inertia is the mean squared distance of the normalised points to their centroids.
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  expected = np.mean(np.sum((unit - result.centroids[result.assignments]) ** 2, axis=1))
  assert result.inertia == pytest.approx(expected, rel=1e-4)


def test_sharded_equals_unsharded_and_is_deterministic():
  x, _ = blobs(n=1000, seed=2)
  cfg = KMeansConfig(num_clusters=8, iterations=10, chunk_size=16, seed=3)
  sharded = kmeans(x, cfg)
  single = kmeans(x, cfg, mesh=data_mesh(jax.devices()[:1]))
  assert data_mesh().shape["data"] == 8
  np.testing.assert_array_equal(sharded.assignments, single.assignments)
  np.testing.assert_allclose(sharded.centroids, single.centroids, atol=1e-5)
  again = kmeans(x, cfg)
  np.testing.assert_array_equal(again.centroids, sharded.centroids)
  # Another seed finds the same clusters but numbers them differently.
  other = kmeans(x, KMeansConfig(num_clusters=8, iterations=10, chunk_size=16, seed=4))
  assert not np.array_equal(other.assignments, sharded.assignments)


def test_random_init_and_both_updates_agree():
  x, _ = blobs(n=300, seed=7)
  scatter = kmeans(x, KMeansConfig(num_clusters=5, iterations=4, init="random", update="scatter", chunk_size=16))
  matmul = kmeans(x, KMeansConfig(num_clusters=5, iterations=4, init="random", update="matmul", chunk_size=16))
  np.testing.assert_array_equal(scatter.assignments, matmul.assignments)
  np.testing.assert_allclose(scatter.centroids, matmul.centroids, atol=1e-5)
  # Random init starts from 5 distinct input points, so no cluster starts empty.
  assert len(np.unique(scatter.assignments)) == 5


def test_stops_at_the_fixed_point_or_tolerance():
  x, _ = blobs(n=2000, k=40, noise=0.6, seed=5)
  cfg = KMeansConfig(num_clusters=40, iterations=100, init="random", chunk_size=64)
  converged = kmeans(x, cfg)
  assert 3 < converged.iterations < 100
  # Stopping at the fixed point is exact: a budget of more iterations gives the same result.
  longer = kmeans(x, dataclasses.replace(cfg, iterations=converged.iterations + 5))
  np.testing.assert_array_equal(longer.centroids, converged.centroids)
  assert longer.iterations == converged.iterations
  # The last iteration only found that nothing changed; the one before it still moved points.
  shorter = kmeans(x, dataclasses.replace(cfg, iterations=converged.iterations - 2))
  assert shorter.iterations == converged.iterations - 2 and shorter.inertia > converged.inertia
  early = kmeans(x, dataclasses.replace(cfg, tolerance=0.05))
  assert 2 <= early.iterations < converged.iterations
  assert early.inertia == pytest.approx(converged.inertia, rel=0.1)


def test_keep_clusters_and_persistence(tmp_path):
  assignments = np.array([3, 1, 3, 0, 3, 1, 2])
  kept = keep_clusters(assignments, min_size=2)
  assert sorted(kept) == [1, 3]
  np.testing.assert_array_equal(kept[3], [0, 2, 4])
  np.testing.assert_array_equal(kept[1], [1, 5])
  assert keep_clusters(assignments, min_size=4) == {}

  x, _ = blobs(n=200, seed=6)
  result = kmeans(x, KMeansConfig(num_clusters=4, iterations=3, chunk_size=8))
  keys = [f"img{i}" for i in range(200)]
  save_clusters(tmp_path / "clusters.npz", result, keys)
  loaded, loaded_keys = load_clusters(tmp_path / "clusters.npz")
  assert loaded.config == result.config and loaded.iterations == 3 and loaded.inertia == result.inertia
  np.testing.assert_array_equal(loaded.assignments, result.assignments)
  assert list(loaded_keys) == keys
  assert json.loads(json.dumps(result.config.to_dict()))["num_clusters"] == 4


def test_bad_input_is_refused(tmp_path):
  x, _ = blobs(n=50)
  with pytest.raises(ValueError, match=r"num_clusters \(64\) is more than the number of points \(50\)"):
    kmeans(x, KMeansConfig(num_clusters=64))
  bad = x.copy()
  bad[[3, 7]] = np.nan
  with pytest.raises(ValueError, match="2 embedding rows contain NaN or inf .first: row 3."):
    kmeans(bad, KMeansConfig(num_clusters=4))
  bad[[3, 7]] = 0
  with pytest.raises(ValueError, match="2 embedding rows are all zeros"):
    kmeans(bad, KMeansConfig(num_clusters=4))
  with pytest.raises(ValueError, match=r"embeddings must be \(num_points, dim\), got shape \(50,\)"):
    kmeans(x[:, 0], KMeansConfig(num_clusters=4))
  with pytest.raises(ValueError, match="kmeans.init is 'kmeans||'"):
    KMeansConfig(init="kmeans||")
  with pytest.raises(ValueError, match="kmeans.tolerance applies to full-batch"):
    KMeansConfig(minibatch=True, tolerance=1e-3)
  with pytest.raises(ValueError, match=r"unknown kmeans field\(s\) \['k'\]"):
    KMeansConfig.from_dict({"k": 3})
  with pytest.raises(ValueError, match="3 keys for 50 assignments"):
    save_clusters(tmp_path / "c.npz", kmeans(x, KMeansConfig(num_clusters=2, iterations=1)), ["a", "b", "c"])
  with pytest.raises(FileNotFoundError, match="write it with data_gen.kmeans.save_clusters"):
    load_clusters(tmp_path / "none.npz")
