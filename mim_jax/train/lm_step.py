"""Loss and the jitted, sharded train step for a causal language model.

The batch is `tokens`, `targets`, `weights` (b, t) and optionally explicit
`positions` (b, t) and `mask` (b, t, t); weights are 0 where no loss is taken.
A MIM batch adds `image_starts`, `image_rows` (b, m) and packed `images`
(uint8 or normalised float) or `vit_features` (n, …); see models/mim.py and
data/batches.py. Other keys (e.g. `valid`) are ignored.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mim_jax.data.images import pixel_table
from mim_jax.nn.sharding import Rules, activation_sharding, boxed_shardings, logical_to_spec
from mim_jax.train.freeze import trainable_mask


def cross_entropy(logits_btv: jax.Array, targets_bt: jax.Array, weights_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean loss over weighted tokens, total weight)."""
  losses_bt = optax.softmax_cross_entropy_with_integer_labels(logits_btv.astype(jnp.float32), targets_bt)
  weights_bt = weights_bt.astype(jnp.float32)
  total = weights_bt.sum()
  return (losses_bt * weights_bt).sum() / jnp.maximum(total, 1.0), total


# Batch keys that MIM takes as keyword inputs (absent for a text-only LLM batch).
IMAGE_INPUTS = {"image_starts": "image_starts_bm", "image_rows": "image_rows_bm", "images": "images",
                "vit_features": "vit_features"}


def image_inputs(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """MIM's image keyword arguments from a batch; uint8 images are normalised
  here, exactly as data/images.preprocess_image does on the host."""
  images = {arg: batch[key] for key, arg in IMAGE_INPUTS.items() if key in batch}
  if "images" in images and images["images"].dtype == jnp.uint8:
    images["images"] = jnp.asarray(pixel_table())[images["images"].astype(jnp.int32), jnp.arange(3)]
  return images


def loss_fn(model: nn.Module, params, batch: dict[str, jax.Array], *, dropout_rng: jax.Array | None = None,
            totals: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict]:
  """Mean cross-entropy over weighted tokens. With `totals` (the whole batch's
  sums of its weight arrays, for gradient accumulation) it is this
  microbatch's share of the batch mean instead. `images` may be uint8
  (normalised here, exactly as data/images.preprocess_image does) or float.
  `dropout_rng` turns dropout on (MIM's Q-Former)."""
  images = image_inputs(batch)
  extra = {}
  if dropout_rng is not None:
    extra = {"rngs": {"dropout": dropout_rng}, "deterministic": False}
  logits_btv = model.apply({"params": params}, batch["tokens"], batch.get("positions"), batch.get("mask"), **images,
                           **extra)
  loss, tokens = batch_share(*cross_entropy(logits_btv, batch["targets"], batch["weights"]), totals, "weights")
  return loss, {"loss": loss, "tokens": tokens}


def batch_share(mean: jax.Array, weight: jax.Array, totals: dict[str, jax.Array] | None, key: str):
  """(a microbatch's weighted mean → its share of the batch mean, its weight)."""
  if totals is None:
    return mean, weight
  return mean * weight / jnp.maximum(totals[key], 1.0), weight


# Batch arrays whose sum over the whole batch a loss needs under gradient accumulation.
TOTALED = ("weights", "medium_valid")
# Step metrics that are not a loss term (a loss's other aux scalars are summed over microbatches).
_COUNTS = ("tokens",)


def _loss_terms(aux: dict) -> dict:
  """The loss and its terms from a loss function's aux (each a batch-mean share, so they sum over microbatches)."""
  return {k: v.astype(jnp.float32) for k, v in aux.items() if k not in _COUNTS}


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, *,
                    trainable: Sequence[str] | None = None, accum_steps: int = 1, dropout_seed: int | None = None,
                    loss=loss_fn):
  """state, batch → state, metrics. `trainable`: regexes of the params that
  train (the rest get stop_gradient, so their weight gradients are never
  computed). `accum_steps` > 1 runs the batch as that many microbatches (rows
  b % k == i, see data/batches.py) and sums their gradients: the update equals
  the one-shot step's up to float rounding. `dropout_seed` turns dropout on,
  with a key folded from (seed, step, microbatch). Metrics: loss, tokens,
  images, grad_norm and `grads_finite`, one bool per gradient leaf (in
  jax.tree.leaves order) for the loop's NaN/Inf guard. `loss` has `loss_fn`'s
  signature (train/medium_step.loss_fn adds the qformer image medium's term);
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
