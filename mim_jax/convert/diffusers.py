"""Loading diffusers checkpoint directories without torch.

A pipeline directory has `model_index.json` naming its components, each a
sub-folder with `config.json` (or `scheduler_config.json`) and
`diffusion_pytorch_model.safetensors` (or `model.safetensors` for the
transformers text encoders). Our UNet and VAE modules carry diffusers'
attribute names (list indices as `_<i>`), so each mapping table is derived from
the abstract parameter tree: `down_blocks_1/resnets_0/conv1/kernel` is
`down_blocks.1.resnets.0.conv1.weight`; conv kernels go OIHW → HWIO, Linear
weights (out, in) → (in, out), norm weights → `scale`. Every tensor is
shape-checked, and tensors the model does not use are an error: both mean the
config and the weights disagree. The config files are translated by
diffusers_config.py; a pipeline's text encoders load with sd_text_encoder.py.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from mim_jax.convert.diffusers_config import (
  scheduler_config_from_diffusers,
  unet_config_from_diffusers,
  vae_config_from_diffusers,
)
from mim_jax.convert.json_files import read_json
from mim_jax.convert.safetensors_io import CheckpointReader
from mim_jax.convert.table import Entry, conv_kernel, get_path, read_tensor, same, set_path, shapes_of, transpose
from mim_jax.models.config_checks import DTYPES
from mim_jax.models.diffusion.schedulers import SchedulerConfig
from mim_jax.models.diffusion.unet import UNet2DConditionModel
from mim_jax.models.diffusion.unet_config import UNetConfig
from mim_jax.models.diffusion.vae import AutoencoderKL, VAEConfig

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_INDEXED = re.compile(r"^(down_blocks|up_blocks|resnets|attentions|transformer_blocks|downsamplers|upsamplers|to_out"
                      r"|net)_(\d+)$")
# Checkpoints saved before diffusers 0.14 name the VAE attention's projections differently.
_LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class _WeightDtype:
  """What table.read_tensor needs of a config: the dtype weights are stored in."""

  def __init__(self, dtype: str):
    self.weight_dtype = DTYPES[dtype]


def read_model_index(directory: str | os.PathLike) -> dict:
  return read_json(Path(directory) / "model_index.json",
                   "point at a diffusers pipeline directory (model_index.json, unet/, vae/, scheduler/, text encoders)")


def component_dir(directory: str | os.PathLike, name: str, index: Mapping[str, Any] | None = None) -> Path:
  """The folder of component `name`, checked against model_index.json and the disk."""
  directory = Path(directory)
  index = read_model_index(directory) if index is None else index
  listed = index.get(name)
  if not listed or listed[0] is None:
    raise ValueError(f"{directory}/model_index.json lists no {name!r} component "
                     f"(components: {sorted(k for k, v in index.items() if isinstance(v, list) and v[0])})")
  path = directory / name
  if not path.is_dir():
    raise FileNotFoundError(f"{path} is missing: the pipeline directory lacks its {name!r} component "
                            "(download the whole repository, not only some folders)")
  return path


def table_from_shapes(shapes: Mapping) -> list[Entry]:
  """One Entry per parameter of a module whose names follow diffusers' (see the module docstring)."""
  entries = []
  for path, shape in traverse_util.flatten_dict(shapes).items():
    *modules, leaf = path
    prefix = ".".join(f"{m[1]}.{m[2]}" if (m := _INDEXED.match(name)) else name for name in modules)
    if leaf == "kernel" and len(shape) == 4:
      entries.append(Entry(f"{prefix}.weight", path, *conv_kernel))
    elif leaf == "kernel":
      entries.append(Entry(f"{prefix}.weight", path, transpose, transpose))
    elif leaf == "scale":
      entries.append(Entry(f"{prefix}.weight", path, same, same))
    elif leaf == "bias":
      entries.append(Entry(f"{prefix}.bias", path, same, same))
    else:
      raise ValueError(f"parameter {'/'.join(path)} has no diffusers counterpart")
  return entries


def load_params(directory: Path, module: nn.Module, example_args: tuple, dtype: str) -> dict:
  """`module`'s params read from the safetensors in `directory`, in `dtype`."""
  reader = CheckpointReader(directory, index_name=f"{WEIGHTS_NAME}.index.json", single_name=WEIGHTS_NAME)
  return read_params(reader, module, example_args, dtype)


def read_params(reader, module: nn.Module, example_args: tuple, dtype: str) -> dict:
  """`module`'s params from a CheckpointReader (or table.ArrayReader over a state dict), in `dtype`."""
  names = {_modern_name(name): name for name in reader.keys()}
  shapes = shapes_of(jax.eval_shape(module.init, jax.random.key(0), *example_args)["params"])
  params: dict = {}
  for entry in table_from_shapes(shapes):
    stored = names.pop(entry.hf, entry.hf)
    array = read_tensor(reader, Entry(stored, entry.ours, entry.to_ours, entry.to_hf), stored,
                        get_path(shapes, entry.ours), _WeightDtype(dtype))
    set_path(params, entry.ours, array)
  if names:
    unused = sorted(names.values())
    raise ValueError(f"{reader.directory}: {len(unused)} tensor(s) the model built from config.json does not use, "
                     f"e.g. {unused[:3]}; the weights and config.json disagree")
  return params


def _modern_name(name: str) -> str:
  parts = name.split(".")
  if len(parts) > 2 and parts[-2] in _LEGACY_VAE_ATTENTION and "attentions" in parts:
    return ".".join(parts[:-2] + [_LEGACY_VAE_ATTENTION[parts[-2]], parts[-1]])
  return name


def load_unet(directory: str | os.PathLike, dtype: str = "float32", weight_dtype: str | None = None,
              attention_impl: str = "xla") -> tuple[UNetConfig, dict]:
  """(config, params) of a diffusers `unet/` folder; computes in `dtype`, stores weights in
  `weight_dtype` (default: `dtype`)."""
  directory = Path(directory)
  config = unet_config_from_diffusers(read_json(directory / "config.json", "point at a diffusers unet/ folder"),
                                     str(directory / "config.json"), dtype=dtype, attention_impl=attention_impl)
  return config, load_params(directory, UNet2DConditionModel(config), unet_example_args(config), weight_dtype or dtype)


def unet_example_args(config: UNetConfig, num_time_ids: int = 6) -> tuple:
  """Inputs that trace every UNet parameter (for init / eval_shape). Only the sum of the
  pooled-text and time-id widths shapes a parameter, so any split of it will do."""
  factor = 2 ** (len(config.block_out_channels) - 1)
  args = (jnp.zeros((1, factor, factor, config.in_channels)), jnp.zeros((1,)),
          jnp.zeros((1, 1, config.cross_attention_dim)))
  if config.addition_embed_type != "text_time":
    return args
  return args + (jnp.zeros((1, config.added_text_dim(num_time_ids))), jnp.zeros((1, num_time_ids)))


def load_vae(directory: str | os.PathLike, dtype: str = "float32") -> tuple[VAEConfig, dict]:
  """(config, params) of a diffusers `vae/` folder; a `force_upcast` VAE stays float32."""
  directory = Path(directory)
  raw = read_json(directory / "config.json", "point at a diffusers vae/ folder")
  config = vae_config_from_diffusers(raw, str(directory / "config.json"))
  config = vae_config_from_diffusers(raw, str(directory / "config.json"), dtype=config.compute_dtype(dtype))
  size = 2 ** (len(config.block_out_channels) - 1)
  example = (jnp.zeros((1, size, size, config.in_channels)),)
  return config, load_params(directory, AutoencoderKL(config), example, config.dtype)


def load_scheduler(directory: str | os.PathLike, kind: str | None = None) -> SchedulerConfig:
  path = Path(directory) / "scheduler_config.json"
  return scheduler_config_from_diffusers(read_json(path, "point at a diffusers scheduler/ folder"), str(path), kind)
