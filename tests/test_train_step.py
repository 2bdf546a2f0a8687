"""The train step: gradient accumulation equals the one-shot step, frozen params
get no gradient and no Adam state, per-module learning rates, dropout keys,
and the NaN/Inf guard naming the first bad gradient."""
import ml_collections
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from mim_jax.data.batches import pack_batch
from mim_jax.models.eva_vit import VisionConfig
from mim_jax.models.llama_config import LlamaConfig
from mim_jax.models.mim import MIM, MIMConfig, init_params
from mim_jax.models.qformer import QFormerConfig
from mim_jax.train.step import make_train_step
from mim_jax.train.freeze import STAGE_TRAINABLE
from mim_jax.train.loop import _finish
from mim_jax.train.optimizer import make_optimizer

B, T, M = 4, 24, 2


def tiny_mim():
  llm = LlamaConfig(vocab_size=64, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                    max_positions=64)
  return MIMConfig(llm, VisionConfig.preset("tiny"), QFormerConfig.preset("tiny", num_queries=4))


def host_batch(cfg, seed=0):
  rng = np.random.default_rng(seed)
  valid = np.array([[1, 1], [1, 0], [0, 0], [1, 0]], bool)
  size = cfg.vision.image_size
  return {
      "tokens": rng.integers(3, 60, (B, T), dtype=np.int32), "targets": rng.integers(3, 60, (B, T), dtype=np.int32),
      "weights": (rng.random((B, T)) < 0.7).astype(np.float32),
      "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
      "mask": np.broadcast_to(np.tril(np.ones((T, T), bool)), (B, T, T)).copy(),
      "image_starts": np.tile(np.array([2, 10], np.int32), (B, 1)), "image_valid": valid,
      "pixels": rng.integers(0, 256, (B, M, size, size, 3), dtype=np.uint8),
  }


def opt_config(**overrides):
  return common.optimizer(learning_rate=1e-2, warmup_steps=0, **overrides)


def run_step(cfg, params, batch, optimizer, **step_kwargs):
  step = jax.jit(make_train_step(MIM(cfg), optimizer, **step_kwargs))
  state = {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}
  return step(state, {k: jnp.asarray(v) for k, v in batch.items()})


def test_accumulation_equals_one_shot_step():
  cfg = tiny_mim()
  params = init_params(cfg, jax.random.key(0))
  # SGD: the update is linear in the gradient, so it shows the gradients agree (Adam's first
  # step, g / (|g| + eps), would amplify rounding in near-zero gradients).
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1.0))
  raw = host_batch(cfg)
  one, _ = pack_batch(raw, budget=4)
  two, _ = pack_batch(raw, budget=4, accum_steps=2)
  state1, m1 = run_step(cfg, params, one, optimizer, trainable=STAGE_TRAINABLE["stage2"])
  state2, m2 = run_step(cfg, params, two, optimizer, trainable=STAGE_TRAINABLE["stage2"], accum_steps=2)
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
  np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-4)
  assert m1["images"] == m2["images"] == 4
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), state1["params"],
               state2["params"])
  moved = jax.tree.map(lambda a, b: bool((a != b).any()), params, state1["params"])
  assert moved["llm"]["embedding"] and moved["image_encoder"]["qformer"]
  assert not any(jax.tree.leaves(moved["image_encoder"]["vision"]))


def test_stage1_freezes_the_llm_without_optimizer_state():
  cfg = tiny_mim()
  params = init_params(cfg, jax.random.key(0))
  optimizer = make_optimizer(opt_config(), 10, trainable=STAGE_TRAINABLE["stage1"])
  state, metrics = run_step(cfg, params, pack_batch(host_batch(cfg), budget=4)[0], optimizer,
                            trainable=STAGE_TRAINABLE["stage1"])
  moved = jax.tree.map(lambda a, b: bool((a != b).any()), params, state["params"])
  assert not any(jax.tree.leaves(moved["llm"])) and not any(jax.tree.leaves(moved["image_encoder"]["vision"]))
  assert any(jax.tree.leaves(moved["image_encoder"]["qformer"])) and moved["image_encoder"]["projection"]["kernel"]
  llm_size = sum(x.size for x in jax.tree.leaves(params["llm"]))
  state_size = sum(x.size for x in jax.tree.leaves(state["opt_state"]))
  trained = sum(x.size for x in jax.tree.leaves(params["image_encoder"])) - sum(
      x.size for x in jax.tree.leaves(params["image_encoder"]["vision"]))
  assert state_size < 2 * trained + 16 < llm_size + 2 * trained  # Adam moments of the trained params only
  assert metrics["grads_finite"].all()


def test_lr_multipliers_scale_the_first_update():
  cfg = tiny_mim()
  params = init_params(cfg, jax.random.key(1))
  batch = pack_batch(host_batch(cfg), budget=4)[0]
  trainable = STAGE_TRAINABLE["stage2"]
  base, _ = run_step(cfg, params, batch, make_optimizer(opt_config(weight_decay=0.0), 10, trainable=trainable),
                     trainable=trainable)
  scaled, _ = run_step(cfg, params, batch, make_optimizer(opt_config(weight_decay=0.0), 10, trainable=trainable,
                                                          lr_multipliers=((r"^llm/", 0.25),)), trainable=trainable)
  delta = lambda s, path: s["params"]["llm"]["embedding"] - params["llm"]["embedding"] if path == "llm" else (
      s["params"]["image_encoder"]["projection"]["kernel"] - params["image_encoder"]["projection"]["kernel"])
  np.testing.assert_allclose(delta(scaled, "llm"), 0.25 * delta(base, "llm"), rtol=1e-4, atol=1e-8)
  np.testing.assert_allclose(delta(scaled, "proj"), delta(base, "proj"), rtol=1e-5)
  with pytest.raises(ValueError, match="must be positive"):
    make_optimizer(opt_config(), 10, trainable=trainable, lr_multipliers=((r"^llm/", 0.0),))


def test_dropout_depends_on_the_step_key_only():
  cfg = tiny_mim()
  params = init_params(cfg, jax.random.key(2))
  batch = pack_batch(host_batch(cfg), budget=4)[0]
  optimizer = make_optimizer(opt_config(), 10, trainable=STAGE_TRAINABLE["stage2"])
  _, a = run_step(cfg, params, batch, optimizer, dropout_seed=3)
  _, b = run_step(cfg, params, batch, optimizer, dropout_seed=3)
  _, c = run_step(cfg, params, batch, optimizer, dropout_seed=4)
  _, off = run_step(cfg, params, batch, optimizer)
  assert a["loss"] == b["loss"] and a["loss"] != c["loss"] and a["loss"] != off["loss"]


def test_nan_guard_names_the_first_bad_gradient():
  params = {"a": jnp.zeros(2), "b": {"kernel": jnp.zeros((2, 2))}}
  train_cfg = ml_collections.ConfigDict(dict(log_every=100, steps=10))
  values = {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0), "tokens": jnp.float32(3.0),
            "grads_finite": jnp.array([True, False])}
  with pytest.raises(FloatingPointError, match=r"step 7: loss 1.0, first non-finite gradient: b/kernel"):
    _finish((7, values), None, None, optax.constant_schedule(1.0), {}, train_cfg, {"params": params})
  values["loss"] = jnp.float32(np.nan)
  values["grads_finite"] = jnp.array([True, True])
  with pytest.raises(FloatingPointError, match="step 2: loss nan, first non-finite gradient: none"):
    _finish((2, values), None, None, optax.constant_schedule(1.0), {}, train_cfg, {"params": params})
