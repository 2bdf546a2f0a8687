"""The train state {'params', 'opt_state', 'step'}: its shardings, its
abstract shape and its initialisation; and the batch's sharding."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from mim_jax.nn.sharding import Rules, boxed_shardings, logical_to_spec


def _state(params, optimizer) -> dict:
  return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}


def state_shardings(boxed_init_fn, optimizer, rng, mesh: Mesh, rules: Rules):
  """Shardings of the state: optimizer moments follow their params."""
  return boxed_shardings(jax.eval_shape(lambda r: _state(boxed_init_fn(r), optimizer), rng), mesh, rules)


def abstract_state(boxed_init_fn, optimizer, rng, shardings):
  """The state's shapes and dtypes, each with its sharding (for restore and AOT compiles)."""
  shapes = jax.eval_shape(lambda r: _state(nn.unbox(boxed_init_fn(r)), optimizer), rng)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def init_state(boxed_init_fn, optimizer, rng, shardings):
  return jax.jit(lambda r: _state(nn.unbox(boxed_init_fn(r)), optimizer), out_shardings=shardings)(rng)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
  """Leading (batch) dimension over the rules' batch axes, the rest replicated;
  fits batch arrays of any rank."""
  return NamedSharding(mesh, logical_to_spec(("batch",), (mesh.size,), mesh, rules))
