"""The training loop: state, data, steps, checkpoints, metrics, preemption.

One step in flight: step s+1 is dispatched before step s's metrics are read,
so the host's data work overlaps the device's compute. Per-step scalars go to
`workdir/metrics.jsonl` (process 0; rewritten up to the restored step on
resume, so it always reads as one run) and every `train.log_every` steps to
the console and TensorBoard.
"""
from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

from etils import epath

import jax
import numpy as np
from jax.experimental import multihost_utils

from mim_jax.config import is_mim, model_config, validate
from mim_jax.data.batches import ReaderGroup, to_global
from mim_jax.data.features import FeatureConfig
from mim_jax.data.pipeline import DataSource, InputPipeline
from mim_jax.models import llama, mim
from mim_jax.models.mim import MIMConfig
from mim_jax.nn.sharding import create_mesh
from mim_jax.train import checkpoint, distributed, lm_step, medium_step, metrics
from mim_jax.train.freeze import trains_under
from mim_jax.train.init import load_tokenizer, place, pretrained_params
from mim_jax.train.medium_targets import MediumTargets
from mim_jax.train.optimizer import learning_rate_schedule, make_optimizer

log = logging.getLogger("mim_jax.train")
STEP_KEYS = ("tokens", "targets", "weights", "positions", "mask", "image_starts", "image_rows", "images",
             "medium_starts", "medium_valid", "medium_caption_ids")


class Preempted(Exception):
  """Raised after the checkpoint of a SIGTERM'd run is safely written."""


def model_config_dict(cfg) -> dict:
  if isinstance(cfg, MIMConfig):
    return {"llm": cfg.llm.to_dict(), "vision": cfg.vision.to_dict(), "qformer": cfg.qformer.to_dict(),
            "medium": cfg.medium.to_dict()}
  return cfg.to_dict()


def _uses_medium(cfg) -> bool:
  return isinstance(cfg, MIMConfig) and cfg.medium.kind == "qformer"


def _readers(config, tokenizer, cfg, medium: MediumTargets | None) -> ReaderGroup:
  data, train = config.data, config.train
  data_dir = epath.Path(data.data_dir).expanduser()
  sources = [DataSource(path=str(data_dir / s.path), weight=s.weight, split=s.split) for s in data.sources.values()]
  features = FeatureConfig(
      max_len=train.seq_len, max_images=data.max_images,
      num_image_tokens=cfg.num_image_tokens if isinstance(cfg, MIMConfig) else 32,
      caption_branches=data.caption_branches, branches_see_earlier_branches=data.branches_see_earlier_branches,
      pad_id=tokenizer.pad_id or 0, medium_prompt_tokens=cfg.medium.num_prompt_tokens if medium else 0)
  readers = data.readers or jax.process_count()

  def make_pipeline(index: int, count: int) -> InputPipeline:
    return InputPipeline(sources, tokenizer, features, batch_size=train.batch_size // count, seed=train.seed,
                         shard_index=index, shard_count=count, shuffle_buffer=data.shuffle_buffer,
                         num_parallel_calls=data.num_parallel_calls,
                         image_size=cfg.vision.image_size if isinstance(cfg, MIMConfig) else 224,
                         caption_tokenizer=medium.tokenizer if medium else None)

  return ReaderGroup(make_pipeline, readers=readers, budget=train.images_per_batch,
                     accum_steps=train.grad_accum_steps)


def _check_batch_shape(config) -> None:
  train, readers = config.train, config.data.readers or jax.process_count()
  for name, value in (("batch_size", train.batch_size), ("images_per_batch", train.images_per_batch)):
    if value % (readers * train.grad_accum_steps):
      raise ValueError(f"train.{name} ({value}) must divide by data.readers × train.grad_accum_steps "
                       f"({readers} × {train.grad_accum_steps})")
  if train.batch_size // train.grad_accum_steps % jax.device_count():
    log.warning("the microbatch (%d rows) does not divide over %d devices; it is replicated, not split",
                train.batch_size // train.grad_accum_steps, jax.device_count())


class _Preemption:
  """SIGTERM sets a flag; all processes agree on it at each step, so they save the same step."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def agreed(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    return bool(multihost_utils.process_allgather(np.int32(self.requested)).any())

  def close(self):
    signal.signal(signal.SIGTERM, self._previous)


def _first_bad_leaf(params, finite) -> str:
  paths = [jax.tree_util.keystr(path, simple=True, separator="/")
           for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  bad = np.flatnonzero(~np.asarray(finite))
  return paths[bad[0]] if len(bad) else "none (the loss itself)"


def train(config, workdir: str | Path) -> dict:
  """Runs (or resumes) the configured training; returns {"step", "losses"} of this invocation."""
  distributed.initialize()
  validate(config)
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  train_cfg = config.train
  _check_batch_shape(config)
  cfg = model_config(config)
  llm_cfg = cfg.llm if isinstance(cfg, MIMConfig) else cfg
  tokenizer = load_tokenizer(config, workdir, llm_cfg.vocab_size)
  mesh, rules = create_mesh(config.mesh), config.sharding_rules
  rng = jax.random.key(train_cfg.seed)
  trainable = tuple(config.trainable) if is_mim(config) else None
  optimizer = make_optimizer(config.optimizer, train_cfg.steps, trainable=trainable,
                             lr_multipliers=tuple(tuple(r) for r in config.optimizer.lr_multipliers))
  init_fn = mim.boxed_init_fn(cfg) if isinstance(cfg, MIMConfig) else llama.boxed_init_fn(cfg)
  model = mim.MIM(cfg) if isinstance(cfg, MIMConfig) else llama.Llama(cfg)
  shardings = lm_step.state_shardings(init_fn, optimizer, rng, mesh, rules)
  data_sharding = lm_step.batch_sharding(mesh, rules)
  abstract_params = jax.eval_shape(init_fn, rng)
  medium = None
  if _uses_medium(cfg):
    if not trains_under(abstract_params, trainable, "image_medium/"):
      raise ValueError("model.medium.kind is 'qformer' but no `trainable` pattern matches its params; add "
                       "r'^image_medium/' (configs/ablations.py:qformer_medium does)")
    medium = MediumTargets(config.medium_targets, cfg.medium, mesh, data_sharding)
  elif config.get("medium_targets"):
    raise ValueError("medium_targets is set but model.medium.kind is 'language', which has no regression targets; "
                     "set --config.model.medium.kind=qformer or clear medium_targets")
  readers = _readers(config, tokenizer, cfg, medium)
  manager = checkpoint.make_manager(workdir / "checkpoints", keep_last=config.checkpoint.keep_last,
                                    keep_every=config.checkpoint.keep_every or None,
                                    async_save=config.checkpoint.async_save)
  model_dict = model_config_dict(cfg)
  state, start = _initial_state(config, cfg, manager, model_dict, init_fn, optimizer, rng, shardings, readers)
  dropout = train_cfg.dropout and isinstance(cfg, MIMConfig)
  loss = medium_step.weighted(train_cfg.medium_loss_weight) if medium else lm_step.loss_fn
  step_fn = lm_step.jit_train_step(
      lm_step.make_train_step(model, optimizer, trainable=trainable, accum_steps=train_cfg.grad_accum_steps,
                              dropout_seed=train_cfg.seed if dropout else None, loss=loss), shardings, mesh, rules)
  flops = metrics.step_flops(cfg, batch=train_cfg.batch_size, seq_len=train_cfg.seq_len,
                             images=train_cfg.images_per_batch,
                             llm_trains=trains_under(abstract_params, trainable, "llm/"),
                             qformer_trains=trains_under(abstract_params, trainable, "image_encoder/qformer/"))
  logger = metrics.MetricsLogger(workdir, train_cfg.steps, flops,
                                 metrics.peak_flops(jax.devices()[0], train_cfg.peak_flops_per_device))
  schedule = learning_rate_schedule(config.optimizer, train_cfg.steps)
  history = _History(workdir / "metrics.jsonl", start)
  preemption = _Preemption()
  meta = {"config": json.loads(config.to_json()), "model_config": model_dict}
  log.info("mesh %s; %s; steps %d → %d; %.3g FLOPs/step", dict(mesh.shape), type(cfg).__name__, start,
           train_cfg.steps, flops)

  pending, window = None, {"steps": 0, "tokens": 0.0, "images": 0.0}
  losses = {}
  try:
    for step in range(start, train_cfg.steps):
      arrays, dropped = readers.next_batch()
      if dropped:
        log.warning("step %d: %d example(s) had no room in the image budget and train on nothing; raise "
                    "train.images_per_batch", step + 1, dropped)
      batch = to_global({k: v for k, v in arrays.items() if k in STEP_KEYS}, data_sharding)
      if medium:
        batch["medium_targets"] = medium(batch.pop("medium_caption_ids"))
      state, step_metrics = step_fn(state, batch)
      if pending is not None:
        losses.update(_finish(pending, history, logger, schedule, window, train_cfg, state))
      pending = (step + 1, step_metrics)
      if preemption.agreed():
        losses.update(_finish(pending, history, logger, schedule, window, train_cfg, state))
        pending = None
        checkpoint.save(manager, step + 1, state, {**meta, "step": step + 1}, readers, force=True)
        history.flush()
        manager.wait_until_finished()
        log.info("SIGTERM: saved step %d to %s; exiting", step + 1, manager.directory)
        raise Preempted(step + 1)
      if (step + 1) % config.checkpoint.every_steps == 0 or step + 1 == train_cfg.steps:
        losses.update(_finish(pending, history, logger, schedule, window, train_cfg, state))
        pending = None
        checkpoint.save(manager, step + 1, state, {**meta, "step": step + 1}, readers, force=True)
        history.flush()
    manager.wait_until_finished()
  finally:
    preemption.close()
    logger.close()
    manager.close()
  log.info("data: %s", readers.counts)
  return {"step": train_cfg.steps, "losses": losses}


def _initial_state(config, cfg, manager, model_dict, init_fn, optimizer, rng, shardings, readers):
  latest = manager.latest_step()
  if latest is not None:
    where = f"checkpoint {manager.directory}/{latest}"
    checkpoint.check_compatible(checkpoint.read_meta(manager, latest), model_dict, where)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            jax.eval_shape(lambda r: lm_step.init_state(init_fn, optimizer, r, shardings), rng),
                            shardings)
    data = None if config.train.reset_data_on_resume else readers
    state, _ = checkpoint.restore(manager, latest, abstract, data)
    log.info("resumed from %s", where)
    return state, latest
  state = lm_step.init_state(init_fn, optimizer, rng, shardings)
  loaded = pretrained_params(config, cfg, jax.random.fold_in(rng, 1))
  state["params"] = place(state["params"], loaded, shardings["params"])
  return state, 0


class _History:
  """metrics.jsonl: one line per step. Held in memory and rewritten whole at
  each checkpoint (object stores cannot append), cut back to the restored step
  on resume, so the file always reads as one uninterrupted run."""

  def __init__(self, path: epath.Path, start: int):
    self.path, self.enabled = path, jax.process_index() == 0
    self.records = []
    if self.enabled and path.exists():
      self.records = [r for r in map(json.loads, path.read_text().splitlines()) if r["step"] <= start]

  def append(self, record: dict) -> None:
    self.records.append(record)

  def flush(self) -> None:
    if self.enabled:
      self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))


def _finish(pending, history, logger, schedule, window, train_cfg, state) -> dict[int, float]:
  """Reads a finished step's metrics: NaN/Inf guard, history, and the periodic log."""
  step, values = pending
  values = jax.device_get(values)
  loss = float(values["loss"])
  if not np.isfinite(loss) or not np.asarray(values["grads_finite"]).all():
    raise FloatingPointError(
        f"step {step}: loss {loss}, first non-finite gradient: {_first_bad_leaf(state['params'], values['grads_finite'])}."
        f" Stopping without saving; the last checkpoint is intact. Lower optimizer.learning_rate or check the data "
        f"of this step")
  scalars = {"loss": loss, **{k: float(v) for k, v in values.items() if k.endswith("_loss")},
             "grad_norm": float(values["grad_norm"]), "learning_rate": float(schedule(step - 1)),
             "tokens": float(values["tokens"]), "images": float(values.get("images", 0))}
  history.append({"step": step, **scalars})
  window["steps"] += 1
  window["tokens"] += scalars["tokens"]
  window["images"] += scalars["images"]
  if step % train_cfg.log_every == 0 or step == train_cfg.steps:
    logger.log(step, scalars, steps_done=window["steps"], tokens=window["tokens"], images=window["images"])
    window.update(steps=0, tokens=0.0, images=0.0)
  return {step: loss}

