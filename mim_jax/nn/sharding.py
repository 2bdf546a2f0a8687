"""Meshes, logical-axis rules and the shardings they imply.

Params carry logical axis names (`nn.with_logical_partitioning`); activations
are constrained with `constrain(x, names)`. One rules table (in the config)
maps logical names to mesh axes `data, fsdp, tensor`. A mesh axis that does not
divide a dimension is dropped for that array, so tiny test models and odd
vocabularies (32003) still shard wherever they can.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Iterable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

Rules = Sequence[tuple[str, Any]]

# Defaults: batch over data+fsdp, params fully sharded over fsdp on their embed
# dimension, Megatron-style tensor parallelism over heads/mlp/vocab.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
    ("cache_length", None),
    # Vision and Q-Former towers: their own widths, sharded like the LLM's.
    ("act_vit_embed", None),
    ("act_qformer_embed", None),
    ("vit_embed", "fsdp"),
    ("vit_heads", "tensor"),
    ("vit_mlp", "tensor"),
    ("qformer_embed", "fsdp"),
    ("qformer_heads", "tensor"),
    ("qformer_mlp", "tensor"),
)


def _resolve_sizes(sizes: dict[str, int], total: int, what: str) -> list[int]:
  values = list(sizes.values())
  fill = [name for name, v in sizes.items() if v == -1]
  bad = [f"{name}={v}" for name, v in sizes.items() if v == 0 or v < -1]
  if bad or len(fill) > 1:
    raise ValueError(
        f"mesh: {', '.join(bad) or ', '.join(fill)} invalid; each of {list(sizes)} must be a positive size, "
        "and at most one may be -1 (fill with the remaining devices)"
    )
  known = math.prod(v for v in values if v != -1)
  if fill:
    if total % known:
      raise ValueError(f"mesh: cannot fill {fill[0]}: {total} {what} is not a multiple of {known}")
    values[values.index(-1)] = total // known
  elif known != total:
    product = "*".join(f"{name}({v})" for name, v in sizes.items())
    raise ValueError(
        f"mesh: {product} = {known} does not match {total} {what}; change those fields or set one to -1"
    )
  return values


def create_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the (data, fsdp, tensor) mesh from `ici_*` / `dcn_*` sizes.

  `dcn_*` spans slices (TPU multislice; DCN between them), `ici_*` the devices
  within one slice. With several slices the mesh is a hybrid mesh so that only
  the dcn axes cross slice boundaries.
  """
  grid = create_mesh_devices(mesh_config, devices)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis mesh, every given device (default: all of them) on `data`: for jobs that only split a batch."""
  devices = list(devices or jax.devices())
  return Mesh(np.array(devices), ("data",), axis_types=(AxisType.Auto,))


def create_mesh_devices(mesh_config, devices: Sequence[jax.Device] | None = None) -> np.ndarray:
  """The device grid of `create_mesh`, shape (data, fsdp, tensor)."""
  devices = list(jax.devices() if devices is None else devices)
  num_slices = 1 + max(getattr(d, "slice_index", 0) or 0 for d in devices)
  dcn = _resolve_sizes({f"dcn_{a}": mesh_config[f"dcn_{a}"] for a in MESH_AXES}, num_slices, "slices")
  per_slice = len(devices) // num_slices
  ici = _resolve_sizes({f"ici_{a}": mesh_config[f"ici_{a}"] for a in MESH_AXES}, per_slice, "devices per slice")
  if num_slices > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  else:
    try:
      grid = mesh_utils.create_device_mesh(ici, devices)
    except (ValueError, NotImplementedError, AssertionError):
      # Emulated CPU devices and some GPU sets have no physical topology.
      grid = np.asarray(devices).reshape(ici)
  return grid


def _rules_dict(rules: Rules) -> dict[str, tuple[str, ...]]:
  table = {}
  for name, axes in rules:
    if axes is None:
      table[name] = ()
    elif isinstance(axes, str):
      table[name] = (axes,)
    else:
      table[name] = tuple(axes)
  return table


def logical_to_spec(logical_axes: Iterable[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules) -> PartitionSpec:
  """PartitionSpec for one array; drops mesh axes that are used already or do not divide."""
  table = _rules_dict(rules)
  used: set[str] = set()
  spec = []
  for name, dim in zip(logical_axes, shape, strict=True):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise KeyError(f"logical axis {name!r} has no rule; add it to the config's sharding rules")
    axes = [a for a in table[name] if a not in used and mesh.shape[a] > 1]
    while axes and dim % math.prod(mesh.shape[a] for a in axes):
      axes.pop()
    used.update(axes)
    spec.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
  return PartitionSpec(*spec)


def logical_shardings(spec_tree: Any, shape_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a tree, given logical PartitionSpecs and arrays/ShapeDtypeStructs."""

  def one(spec, leaf):
    names = tuple(spec) if spec is not None else (None,) * len(leaf.shape)
    if len(names) != len(leaf.shape):
      names = (None,) * len(leaf.shape)
    return NamedSharding(mesh, logical_to_spec(names, leaf.shape, mesh, rules))

  return jax.tree.map(one, spec_tree, shape_tree, is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)


def boxed_shardings(boxed_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """Shardings for a tree of (possibly) `nn.LogicallyPartitioned` leaves, e.g. the
  `jax.eval_shape` of params init or of an optimizer init over boxed params.
  Leaves without annotations (step counters) are replicated."""
  specs = nn.get_partition_spec(boxed_tree)
  return logical_shardings(specs, nn.unbox(boxed_tree), mesh, rules)


_ACTIVATION_CONTEXT: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "mim_jax_activation_sharding", default=None
)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules):
  """While tracing inside this context, `constrain` pins activations to the mesh."""
  token = _ACTIVATION_CONTEXT.set((mesh, tuple(rules)))
  try:
    yield
  finally:
    _ACTIVATION_CONTEXT.reset(token)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """`with_sharding_constraint` by logical names; a no-op outside `activation_sharding`."""
  context = _ACTIVATION_CONTEXT.get()
  if context is None:
    return x
  mesh, rules = context
  spec = logical_to_spec(logical_axes, x.shape, mesh, rules)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def sharded_init(boxed_init_fn, rng: jax.Array, mesh: Mesh, rules: Rules):
  """Initialises params directly into their shardings (no host-side full copy).
  Returns (params, shardings)."""
  shardings = boxed_shardings(jax.eval_shape(boxed_init_fn, rng), mesh, rules)
  params = jax.jit(lambda r: nn.unbox(boxed_init_fn(r)), out_shardings=shardings)(rng)
  return params, shardings
