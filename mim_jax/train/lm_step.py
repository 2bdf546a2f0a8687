"""Loss and the jitted, sharded train step for a causal language model.

The batch is `tokens`, `targets`, `weights` (b, t) and optionally explicit
`positions` (b, t) and `mask` (b, t, t); weights are 0 where no loss is taken.
A MIM batch adds `image_starts`, `image_rows` (b, m) and packed `images` or
`vit_features` (n, …); see models/mim.py.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mim_jax.nn.sharding import Rules, activation_sharding, boxed_shardings, logical_to_spec


def cross_entropy(logits_btv: jax.Array, targets_bt: jax.Array, weights_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean loss over weighted tokens, total weight)."""
  losses_bt = optax.softmax_cross_entropy_with_integer_labels(logits_btv.astype(jnp.float32), targets_bt)
  weights_bt = weights_bt.astype(jnp.float32)
  total = weights_bt.sum()
  return (losses_bt * weights_bt).sum() / jnp.maximum(total, 1.0), total


# Batch keys that MIM takes as keyword inputs (absent for a text-only LLM batch).
IMAGE_INPUTS = {"image_starts": "image_starts_bm", "image_rows": "image_rows_bm", "images": "images",
                "vit_features": "vit_features"}


def loss_fn(model: nn.Module, params, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
  images = {arg: batch[key] for key, arg in IMAGE_INPUTS.items() if key in batch}
  logits_btv = model.apply({"params": params}, batch["tokens"], batch.get("positions"), batch.get("mask"), **images)
  loss, tokens = cross_entropy(logits_btv, batch["targets"], batch["weights"])
  return loss, {"loss": loss, "tokens": tokens}


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, loss=loss_fn):
  """`loss(model, params, batch) -> (loss, metrics)`; e.g. train/medium_step.loss_fn."""
  def train_step(state: dict[str, Any], batch: dict[str, jax.Array]):
    (_, metrics), grads = jax.value_and_grad(lambda p: loss(model, p, batch), has_aux=True)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  return train_step


def state_shardings(boxed_init_fn, optimizer, rng, mesh: Mesh, rules: Rules):
  """Shardings of {'params', 'opt_state', 'step'}: optimizer moments follow their params."""

  def abstract_state(r):
    params = boxed_init_fn(r)
    return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}

  return boxed_shardings(jax.eval_shape(abstract_state, rng), mesh, rules)


def init_state(boxed_init_fn, optimizer, rng, shardings):
  def init(r):
    params = nn.unbox(boxed_init_fn(r))
    return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}

  return jax.jit(init, out_shardings=shardings)(rng)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
  """Leading (batch) dimension over the rules' batch axes, the rest replicated;
  fits batch arrays of any rank."""
  return NamedSharding(mesh, logical_to_spec(("batch",), (mesh.size,), mesh, rules))


def jit_train_step(train_step, shardings, mesh: Mesh, rules: Rules):
  """jit with explicit in/out shardings and the state donated; activation
  constraints resolve against `mesh`/`rules` while tracing."""
  data = batch_sharding(mesh, rules)
  replicated = NamedSharding(mesh, PartitionSpec())

  def traced(state, batch):
    with activation_sharding(mesh, rules):
      return train_step(state, batch)

  return jax.jit(traced, in_shardings=(shardings, data), out_shardings=(shardings, replicated), donate_argnums=0)
