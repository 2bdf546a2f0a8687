"""The machinery every mapping table shares: entries with transform hooks, the
transforms more than one family uses, reading tensors with shape checks, and
stacked (scan) vs unrolled layer layouts."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import numpy as np

from mim_jax.convert.json_files import read_json
from mim_jax.convert.safetensors_io import CheckpointReader

Transform = Callable[[np.ndarray, Any], np.ndarray]
same: Transform = lambda w, c: w
transpose: Transform = lambda w, c: w.T
# (to_ours, to_hf) pairs. HF Linear weights are (out, in); our attention splits heads out of them:
# q/k/v kernels (in, heads, head_dim), o kernels (heads, head_dim, out), biases (heads, head_dim).
heads_in: tuple[Transform, Transform] = (lambda w, c: w.T.reshape(w.shape[1], c.num_heads, c.head_dim),
                                         lambda w, c: w.reshape(w.shape[0], -1).T)
heads_out: tuple[Transform, Transform] = (lambda w, c: w.T.reshape(c.num_heads, c.head_dim, w.shape[0]),
                                          lambda w, c: w.reshape(-1, w.shape[-1]).T)
head_bias: tuple[Transform, Transform] = (lambda w, c: w.reshape(c.num_heads, c.head_dim), lambda w, c: w.reshape(-1))
conv_kernel: tuple[Transform, Transform] = (lambda w, c: w.transpose(2, 3, 1, 0),  # torch OIHW → flax HWIO
                                            lambda w, c: w.transpose(3, 2, 0, 1))


@dataclasses.dataclass(frozen=True)
class Entry:
  hf: str  # "{i}" stands for the layer index
  ours: tuple[str, ...]  # path under the params root, or under one layer
  to_ours: Transform = same
  to_hf: Transform = same

  @property
  def per_layer(self) -> bool:
    return "{i}" in self.hf


def norm_entries(hf: str, ours: str) -> tuple[Entry, Entry]:
  """A LayerNorm: `{hf}.weight` / `.bias` ⇄ `ours/scale` / `ours/bias`."""
  return Entry(f"{hf}.weight", (ours, "scale")), Entry(f"{hf}.bias", (ours, "bias"))


def linear_entries(hf: str, ours: tuple[str, ...]) -> tuple[Entry, Entry]:
  """A Linear with bias: (out, in) `{hf}.weight` ⇄ (in, out) `ours/kernel`."""
  return Entry(f"{hf}.weight", ours + ("kernel",), transpose, transpose), Entry(f"{hf}.bias", ours + ("bias",))


def read_config_json(directory: str | os.PathLike, kind: str) -> tuple[dict, Path]:
  """(config.json contents, its path); `kind` names the expected checkpoint in errors."""
  path = Path(directory) / "config.json"
  return read_json(path, f"point at a Hugging Face {kind} directory (config.json + safetensors)"), path


def get_path(tree: Mapping, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def to_host(array) -> np.ndarray:
  """A numpy copy, gathering from other hosts when the array spans processes."""
  if isinstance(array, jax.Array) and not array.is_fully_addressable:
    from jax.experimental import multihost_utils

    array = multihost_utils.process_allgather(array, tiled=True)
  return np.asarray(array)


def shapes_of(tree) -> dict:
  return jax.tree.map(lambda x: tuple(x.shape), tree, is_leaf=lambda x: hasattr(x, "shape"))


def read_tensor(reader: CheckpointReader, entry: Entry, name: str, our_shape: tuple[int, ...], cfg) -> np.ndarray:
  """One tensor in our layout and `cfg.weight_dtype`, its HF shape checked first."""
  if name not in reader:
    raise KeyError(f"{reader.directory}: tensor {name} is missing from the checkpoint (is the prefix right?)")
  array = reader.get(name)
  # np.empty does not touch its pages, so this costs nothing even for 7B tensors.
  want = entry.to_hf(np.empty(our_shape, np.int8), cfg).shape
  if tuple(array.shape) != tuple(want):
    raise ValueError(
        f"{reader.file_of(name)}: tensor {name} has shape {tuple(array.shape)}, expected {tuple(want)} "
        "from the config; the weights and config.json disagree"
    )
  try:
    return entry.to_ours(array, cfg).astype(np.dtype(cfg.weight_dtype))
  except ValueError as e:
    raise ValueError(f"{reader.file_of(name)}: tensor {name}: {e}") from None


def load_layered(reader: CheckpointReader, entries: Iterable[Entry], cfg, shapes: Mapping, *, prefix: str,
                 num_layers: int, scan_layers: bool) -> dict:
  """Params for a table whose per-layer entries live under `layers` (stacked on
  axis 0) when scanned, or `layers_{i}` when unrolled."""
  params: dict = {}
  for entry in entries:
    if not entry.per_layer:
      set_path(params, entry.ours, read_tensor(reader, entry, prefix + entry.hf, get_path(shapes, entry.ours), cfg))
    elif scan_layers:
      shape = get_path(shapes, ("layers",) + entry.ours)[1:]
      layers = [read_tensor(reader, entry, prefix + entry.hf.format(i=i), shape, cfg) for i in range(num_layers)]
      set_path(params, ("layers",) + entry.ours, np.stack(layers))
    else:
      for i in range(num_layers):
        path = (f"layers_{i}",) + entry.ours
        set_path(params, path, read_tensor(reader, entry, prefix + entry.hf.format(i=i), get_path(shapes, path), cfg))
  return params


def layered_tensors(entries: Iterable[Entry], cfg, params: Mapping, dtype: np.dtype, *, prefix: str,
                    num_layers: int, scan_layers: bool) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, array in HF layout and `dtype`) for every weight, one at a time."""
  for entry in entries:
    if not entry.per_layer:
      yield prefix + entry.hf, entry.to_hf(to_host(get_path(params, entry.ours)), cfg).astype(dtype)
      continue
    stacked = get_path(params, ("layers",) + entry.ours) if scan_layers else None
    for i in range(num_layers):
      array = stacked[i] if stacked is not None else get_path(params, (f"layers_{i}",) + entry.ours)
      yield prefix + entry.hf.format(i=i), entry.to_hf(to_host(array), cfg).astype(dtype)


class ArrayReader:
  """The CheckpointReader interface over in-memory arrays (e.g. a torch state dict)."""

  def __init__(self, arrays: Mapping[str, np.ndarray], source: str):
    self.arrays, self.directory = dict(arrays), source

  def __contains__(self, name: str) -> bool:
    return name in self.arrays

  def keys(self) -> list[str]:
    return list(self.arrays)

  def get(self, name: str) -> np.ndarray:
    return self.arrays[name]

  def file_of(self, name: str) -> str:
    return self.directory
