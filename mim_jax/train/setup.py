"""One run, built from its config: model, init, optimizer, loss, trainable
mask, step, shardings and batch spec.

Training (train/loop.py, which the quickstart runs) and the AOT fit proof
(launch/aot_compile.py) both build through `build_run`, so the fit proof
compiles exactly the step that trains. The model family comes from the
config (`config.model` with `llm`/`vision`/`qformer` towers is MIM, a flat
one a Llama); what differs between families is the `Family` record, not
branches through the callers.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh

from mim_jax.config import is_mim, model_config, validate
from mim_jax.data.batch_spec import BatchSpec
from mim_jax.models import llama, mim
from mim_jax.models.llama_config import LlamaConfig
from mim_jax.models.mim import MIMConfig
from mim_jax.nn.sharding import create_mesh
from mim_jax.train import metrics, state
from mim_jax.train.freeze import trains_under
from mim_jax.train.loss import lm_loss, weighted_medium_loss
from mim_jax.train.optimizer import make_optimizer
from mim_jax.train.step import jit_train_step, make_train_step


@dataclasses.dataclass(frozen=True)
class Family:
  module: Callable[..., nn.Module]
  boxed_init_fn: Callable
  llm: Callable[..., LlamaConfig]  # the family's language model config
  images: bool  # reads images: conversation data, image inputs, freezing by `config.trainable`
  dropout: bool  # has dropout layers (MIM's Q-Former), so `train.dropout` applies


FAMILIES = {
    "llama": Family(llama.Llama, llama.boxed_init_fn, lambda cfg: cfg, images=False, dropout=False),
    "mim": Family(mim.MIM, mim.boxed_init_fn, lambda cfg: cfg.llm, images=True, dropout=True),
}


def family_name(config) -> str:
  return "mim" if is_mim(config) else "llama"


@dataclasses.dataclass(frozen=True)
class Run:
  config: object
  model_cfg: LlamaConfig | MIMConfig
  family: Family
  optimizer: object
  trainable: tuple[str, ...] | None  # None: every param trains
  loss: Callable
  mesh: Mesh
  shardings: dict  # of the train state
  batch: BatchSpec
  rng: jax.Array

  @property
  def llm(self) -> LlamaConfig:
    return self.family.llm(self.model_cfg)

  @property
  def model(self) -> nn.Module:
    return self.family.module(self.model_cfg)

  @property
  def init_fn(self):
    return self.family.boxed_init_fn(self.model_cfg)

  @property
  def rules(self):
    return self.config.sharding_rules

  @property
  def medium(self) -> bool:
    return self.batch.medium

  @property
  def data_sharding(self):
    return state.batch_sharding(self.mesh, self.rules)

  def trains(self, prefix: str) -> bool:
    """Whether any param under `prefix` trains."""
    return trains_under(jax.eval_shape(self.init_fn, self.rng), self.trainable, prefix)

  def train_step(self):
    """The step, unjitted (tests jit it without shardings)."""
    train = self.config.train
    dropout = train.dropout and self.family.dropout
    return make_train_step(self.model, self.optimizer, trainable=self.trainable, accum_steps=train.grad_accum_steps,
                           dropout_seed=train.seed if dropout else None, loss=self.loss)

  def jit_step(self):
    return jit_train_step(self.train_step(), self.shardings, self.mesh, self.rules)

  def init_state(self):
    return state.init_state(self.init_fn, self.optimizer, self.rng, self.shardings)

  def abstract_state(self):
    return state.abstract_state(self.init_fn, self.optimizer, self.rng, self.shardings)

  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    sharding = self.data_sharding
    return {name: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for name, (shape, dtype)
            in self.batch.step().items()}

  def lower(self):
    """The jitted step lowered for the abstract state and batch (what an AOT compile compiles)."""
    return self.jit_step().lower(self.abstract_state(), self.abstract_batch())

  def flops(self) -> float:
    """Model FLOPs per step (train/metrics.py documents the formula)."""
    train = self.config.train
    images = train.images_per_batch if self.family.images else 0
    return metrics.step_flops(self.model_cfg, batch=train.batch_size, seq_len=train.seq_len, images=images,
                              llm_trains=self.trains("llm/"), qformer_trains=self.trains("image_encoder/qformer/"))


def build_run(config, devices: Sequence[jax.Device] | None = None,
              model_cfg: LlamaConfig | MIMConfig | None = None) -> Run:
  """The run `config` describes, on `devices` (default: all; compile-only TPU
  devices for AOT). `model_cfg` replaces the config's model (the AOT FLOP
  count compiles shrunk copies)."""
  validate(config)
  family = FAMILIES[family_name(config)]
  cfg = model_cfg or model_config(config)
  train = config.train
  trainable = tuple(config.trainable) or None
  optimizer = make_optimizer(config.optimizer, train.steps, trainable=trainable,
                             lr_multipliers=tuple(tuple(r) for r in config.optimizer.lr_multipliers))
  mesh = create_mesh(config.mesh, devices)
  rng = jax.random.key(train.seed)
  shardings = state.state_shardings(family.boxed_init_fn(cfg), optimizer, rng, mesh, config.sharding_rules)
  medium = family.images and cfg.medium.kind == "qformer"
  if medium and not trains_under(jax.eval_shape(family.boxed_init_fn(cfg), rng), trainable, "image_medium/"):
    raise ValueError("model.medium.kind is 'qformer' but no `trainable` pattern matches its params; add "
                     "r'^image_medium/' (configs/ablations.py:qformer_medium does)")
  if config.medium_targets and not medium:
    raise ValueError("medium_targets is set but model.medium.kind is 'language', which has no regression targets; "
                     "set --config.model.medium.kind=qformer or clear medium_targets")
  batch = BatchSpec(batch_size=train.batch_size, seq_len=train.seq_len, images=family.images)
  if family.images:
    batch = dataclasses.replace(
        batch, max_images=config.data.max_images, image_size=cfg.vision.image_size,
        images_per_batch=train.images_per_batch, medium=medium, caption_length=cfg.medium.cond_length,
        cond_length=cfg.medium.cond_length, cond_dim=cfg.medium.cond_dim)
  loss = weighted_medium_loss(train.medium_loss_weight) if medium else lm_loss
  return Run(config=config, model_cfg=cfg, family=family, optimizer=optimizer, trainable=trainable, loss=loss,
             mesh=mesh, shardings=shardings, batch=batch, rng=rng)
