"""The jitted, sharded train step: gradients of a loss (train/loss.py) over
one batch or accumulated over microbatches, frozen params under
stop_gradient, the optimizer update and the step's metrics.

The batch is the step view of data/batch_spec.py; other keys are ignored.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mim_jax.data.batch_spec import TOTALED
from mim_jax.nn.sharding import Rules, activation_sharding
from mim_jax.train.freeze import trainable_mask
from mim_jax.train.loss import lm_loss
from mim_jax.train.state import batch_sharding


# Step metrics that are not a loss term (a loss's other aux scalars are summed over microbatches).
_COUNTS = ("tokens",)


def _loss_terms(aux: dict) -> dict:
  """The loss and its terms from a loss function's aux (each a batch-mean share, so they sum over microbatches)."""
  return {k: v.astype(jnp.float32) for k, v in aux.items() if k not in _COUNTS}


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, *,
                    trainable: Sequence[str] | None = None, accum_steps: int = 1, dropout_seed: int | None = None,
                    loss=lm_loss):
  """state, batch → state, metrics. `trainable`: regexes of the params that
  train (the rest get stop_gradient, so their weight gradients are never
  computed). `accum_steps` > 1 runs the batch as that many microbatches (rows
  b % k == i, see data/batches.py) and sums their gradients: the update equals
  the one-shot step's up to float rounding. `dropout_seed` turns dropout on,
  with a key folded from (seed, step, microbatch). Metrics: loss, tokens,
  images, grad_norm and `grads_finite`, one bool per gradient leaf (in
  jax.tree.leaves order) for the loop's NaN/Inf guard. `loss` has `lm_loss`'s
  signature (train/loss.medium_loss_fn adds the qformer image medium's term);
  every scalar in its aux but `tokens` (the loss and its terms) is reported."""

  def microbatch_grads(params, batch, totals, rng):
    def objective(p):
      if trainable is not None:
        mask = trainable_mask(p, trainable)
        p = jax.tree.map(lambda x, m: x if m else jax.lax.stop_gradient(x), p, mask)
      return loss(model, p, batch, dropout_rng=rng, totals=totals)

    return jax.value_and_grad(objective, has_aux=True)(params)

  def train_step(state: dict[str, Any], batch: dict[str, jax.Array]):
    params = state["params"]
    totals = {k: batch[k].astype(jnp.float32).sum() for k in TOTALED if k in batch}
    step_rng = None if dropout_seed is None else jax.random.fold_in(jax.random.key(dropout_seed), state["step"])
    if accum_steps == 1:
      (_, aux), grads = microbatch_grads(params, batch, totals, step_rng)
    else:
      micro = {k: v.reshape(v.shape[0] // accum_steps, accum_steps, *v.shape[1:]) for k, v in batch.items()}

      def microbatch(i):
        part = {k: jax.lax.dynamic_index_in_dim(v, i, axis=1, keepdims=False) for k, v in micro.items()}
        rng = None if step_rng is None else jax.random.fold_in(step_rng, i)
        (_, aux), grads = microbatch_grads(params, part, totals, rng)
        return _loss_terms(aux), grads

      def accumulate(i, carry):
        terms, grads = microbatch(i)
        return jax.tree.map(lambda a, g: a + g.astype(jnp.float32), carry, (terms, grads))

      zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), jax.eval_shape(microbatch, 0))
      aux, grads = jax.lax.fori_loop(0, accum_steps, accumulate, zeros)
      grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    metrics = {**_loss_terms(aux), "tokens": totals["weights"], "grad_norm": optax.global_norm(grads),
               "grads_finite": jnp.stack([jnp.isfinite(g).all() for g in jax.tree.leaves(grads)])}
    if "image_rows" in batch:
      metrics["images"] = (batch["image_rows"] >= 0).sum()
    new_state = {"params": optax.apply_updates(params, updates), "opt_state": opt_state, "step": state["step"] + 1}
    return new_state, metrics

  return train_step


def jit_train_step(train_step, shardings, mesh: Mesh, rules: Rules):
  """jit with explicit in/out shardings and the state donated; activation
  constraints resolve against `mesh`/`rules` while tracing."""
  data = batch_sharding(mesh, rules)
  replicated = NamedSharding(mesh, PartitionSpec())

  def traced(state, batch):
    with activation_sharding(mesh, rules):
      return train_step(state, batch)

  return jax.jit(traced, in_shardings=(shardings, data), out_shardings=(shardings, replicated), donate_argnums=0)
