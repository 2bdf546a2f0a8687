"""Reading and writing safetensors without torch, bf16 included.

The format is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then raw little-endian data. We parse it
directly (memory-mapped) so bf16 arrives as `ml_dtypes.bfloat16` rather than
failing in numpy, and so checkpoints load without torch.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path
from typing import Iterator, Mapping

import ml_dtypes
import numpy as np

from mim_jax.convert.json_files import read_json

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class SafetensorsFile:
  """Lazy, memory-mapped access to one .safetensors file."""

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    try:
      with open(self.path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        self.header = json.loads(f.read(header_len))
        self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
      raise ValueError(f"{self.path} is not a readable safetensors file ({e}); re-download or re-export it") from e
    self.metadata = self.header.pop("__metadata__", {}) or {}
    self._data_start = 8 + header_len

  def keys(self) -> list[str]:
    return list(self.header)

  def get(self, name: str) -> np.ndarray:
    info = self.header[name]
    if info["dtype"] not in DTYPES:
      raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    dtype = DTYPES[info["dtype"]]
    array = np.frombuffer(self._map, dtype=dtype, count=(end - start) // dtype.itemsize,
                          offset=self._data_start + start)
    return array.reshape(info["shape"])


class CheckpointReader:
  """All tensors of a HF-style directory: one model.safetensors or an index
  with shards (`model.safetensors.index.json`), or any *.safetensors set."""

  def __init__(self, directory: str | os.PathLike, index_name: str = INDEX_NAME, single_name: str = SINGLE_NAME):
    directory = Path(directory)
    self.directory = directory
    index_path = directory / index_name
    if index_path.exists():
      weight_map = read_json(index_path, "a sharded checkpoint's index")["weight_map"]
      files = sorted(set(weight_map.values()))
    elif (directory / single_name).exists():
      files = [single_name]
    else:
      files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
      raise FileNotFoundError(
          f"no safetensors weights in {directory}: expected {single_name} or {index_name} with shards "
          "(convert .bin checkpoints to safetensors first)"
      )
    self._location: dict[str, SafetensorsFile] = {}
    for name in files:
      path = directory / name
      if not path.exists():
        raise FileNotFoundError(f"{path} is listed in {index_path.name} but missing; the download is incomplete")
      shard = SafetensorsFile(path)
      for key in shard.keys():
        self._location[key] = shard

  def __contains__(self, name: str) -> bool:
    return name in self._location

  def keys(self) -> list[str]:
    return list(self._location)

  def get(self, name: str) -> np.ndarray:
    if name not in self._location:
      raise KeyError(f"tensor {name} not found in the checkpoint at {self.directory}")
    return self._location[name].get(name)

  def file_of(self, name: str) -> Path:
    return self._location[name].path


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes one safetensors file (atomically: temp file then rename)."""
  header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset = 0
  arrays = []
  for name, array in tensors.items():
    array = np.ascontiguousarray(array)
    if array.dtype not in _NAMES:
      raise ValueError(f"tensor {name}: dtype {array.dtype} cannot be written to safetensors")
    header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes]}
    offset += array.nbytes
    arrays.append(array)
  header_bytes = json.dumps(header, separators=(",", ":")).encode()
  header_bytes += b" " * (-len(header_bytes) % 8)
  tmp = Path(f"{path}.tmp")
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(header_bytes)))
    f.write(header_bytes)
    for array in arrays:
      f.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
  os.replace(tmp, path)


def write_sharded(directory: str | os.PathLike, tensors: Iterator[tuple[str, np.ndarray]],
                  max_shard_bytes: int = 5 * 2**30, prefix: str = "model") -> list[str]:
  """Writes tensors into shards of at most `max_shard_bytes` plus the HF index
  (or a single `{prefix}.safetensors` when everything fits in one shard).

  Each shard is written as soon as it is full, so at most one shard is held in
  host memory (a 7B export never materialises all 13 GB at once)."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  pending: dict[str, np.ndarray] = {}
  written: list[tuple[Path, list[str], int]] = []

  def flush():
    path = directory / f".{prefix}-part-{len(written):05d}.safetensors"
    write_safetensors(path, pending)
    written.append((path, list(pending), sum(a.nbytes for a in pending.values())))
    pending.clear()

  for name, array in tensors:
    if pending and sum(a.nbytes for a in pending.values()) + array.nbytes > max_shard_bytes:
      flush()
    pending[name] = np.asarray(array)
  if pending or not written:
    flush()
  if len(written) == 1:
    os.replace(written[0][0], directory / f"{prefix}.safetensors")
    return [f"{prefix}.safetensors"]
  names = [f"{prefix}-{i + 1:05d}-of-{len(written):05d}.safetensors" for i in range(len(written))]
  weight_map = {}
  for name, (path, keys, _) in zip(names, written):
    os.replace(path, directory / name)
    weight_map.update({key: name for key in keys})
  index = {"metadata": {"total_size": sum(size for *_, size in written)}, "weight_map": weight_map}
  (directory / f"{prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2))
  return names
