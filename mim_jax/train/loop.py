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
import time
from pathlib import Path

from etils import epath

import jax
import numpy as np
from jax.experimental import multihost_utils

from mim_jax.data.batches import ReaderGroup, to_global
from mim_jax.data.features import FeatureConfig
from mim_jax.data.pipeline import DataSource, InputPipeline
from mim_jax.data.text_windows import TextWindows, read_text_lines, token_windows
from mim_jax.train import checkpoint, distributed, metrics
from mim_jax.train.init import load_tokenizer, place, pretrained_params
from mim_jax.train.medium_targets import MediumTargets
from mim_jax.train.optimizer import learning_rate_schedule
from mim_jax.train.setup import Run, build_run

log = logging.getLogger("mim_jax.train")


class Preempted(Exception):
  """Raised after the checkpoint of a run stopped by SIGTERM or SIGINT is safely written."""

  def __init__(self, step: int, signum: int):
    super().__init__(f"{signal.Signals(signum).name} at step {step}")
    self.step, self.signum = step, signum


def _readers(run: Run, tokenizer, medium: MediumTargets | None):
  """The run's data: conversation/caption datasets for models that read images, text windows for a Llama."""
  data, train = run.config.data, run.config.train
  if not run.family.images:
    windows = token_windows(tokenizer, read_text_lines(data.text_file), train.seq_len)
    log.info("text: %d windows of %d tokens", len(windows), train.seq_len)
    return TextWindows(windows, batch_size=train.batch_size, seed=train.seed)
  data_dir = epath.Path(data.data_dir).expanduser()
  sources = [DataSource(path=str(data_dir / s.path), weight=s.weight, split=s.split) for s in data.sources.values()]
  features = FeatureConfig(
      max_len=train.seq_len, max_images=data.max_images, num_image_tokens=run.model_cfg.num_image_tokens,
      caption_branches=data.caption_branches, branches_see_earlier_branches=data.branches_see_earlier_branches,
      pad_id=tokenizer.pad_id or 0, medium_prompt_tokens=run.model_cfg.medium.num_prompt_tokens if medium else 0)
  readers = data.readers or jax.process_count()

  def make_pipeline(index: int, count: int) -> InputPipeline:
    return InputPipeline(sources, tokenizer, features, batch_size=train.batch_size // count, seed=train.seed,
                         shard_index=index, shard_count=count, shuffle_buffer=data.shuffle_buffer,
                         num_parallel_calls=data.num_parallel_calls, image_size=run.batch.image_size,
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
  """SIGTERM (a preemption) or SIGINT (Ctrl-C) sets a flag; all processes agree on it at each step, so they
  save the same step. After the first SIGINT, a second one interrupts at once, without saving."""

  def __init__(self):
    self.requested, self.signum = False, None
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):
    del frame
    self.requested, self.signum = True, self.signum or signum
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, self._previous[signal.SIGINT])
      log.info("Ctrl-C: saving a checkpoint when this step ends (Ctrl-C again stops without saving)")

  def agreed(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    return bool(multihost_utils.process_allgather(np.int32(self.requested)).any())

  def close(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def _log_compile(start: int, seconds: float) -> None:
  cache = jax.config.jax_compilation_cache_dir
  source = f"compiled, or loaded from the persistent cache {cache}" if cache else "compiled; no persistent cache"
  why = f"resumed at step {start} in a new process, which builds its step again: " if start else ""
  log.info("train step ready in %.1fs (%s%s)", seconds, why, source)


def _first_bad_leaf(params, finite) -> str:
  paths = [jax.tree_util.keystr(path, simple=True, separator="/")
           for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  bad = np.flatnonzero(~np.asarray(finite))
  return paths[bad[0]] if len(bad) else "none (the loss itself)"


def train(config, workdir: str | Path) -> dict:
  """Runs (or resumes) the configured training; returns {"step", "losses"} of this invocation."""
  distributed.initialize()
  run = build_run(config)
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  train_cfg = config.train
  _check_batch_shape(config)
  tokenizer = load_tokenizer(config, workdir, run.llm.vocab_size)
  medium = MediumTargets(config.medium_targets, run.model_cfg.medium, run.mesh, run.data_sharding) if run.medium \
      else None
  readers = _readers(run, tokenizer, medium)
  manager = checkpoint.make_manager(workdir / "checkpoints", keep_last=config.checkpoint.keep_last,
                                    keep_every=config.checkpoint.keep_every or None,
                                    async_save=config.checkpoint.async_save)
  model_dict = run.model_cfg.to_dict()
  state, start = _initial_state(run, manager, model_dict, readers)
  step_fn = run.jit_step()
  host_keys, data_sharding = run.batch.host_keys(), run.data_sharding
  flops = run.flops()
  logger = metrics.MetricsLogger(workdir, train_cfg.steps, flops,
                                 metrics.peak_flops(jax.devices()[0], train_cfg.peak_flops_per_device))
  schedule = learning_rate_schedule(config.optimizer, train_cfg.steps)
  history = _History(workdir / "metrics.jsonl", start)
  preemption = _Preemption()
  meta = {"config": json.loads(config.to_json()), "model_config": model_dict}
  log.info("mesh %s; %s; steps %d → %d; %.3g FLOPs/step", dict(run.mesh.shape), type(run.model_cfg).__name__, start,
           train_cfg.steps, flops)

  pending, window = None, {"steps": 0, "tokens": 0.0, "images": 0.0, "timing": False}
  losses = {}
  try:
    for step in range(start, train_cfg.steps):
      arrays, dropped = readers.next_batch()
      if dropped:
        log.warning("step %d: %d example(s) had no room in the image budget and train on nothing; raise "
                    "train.images_per_batch", step + 1, dropped)
      batch = to_global({k: arrays[k] for k in host_keys}, data_sharding)
      if medium:
        batch["medium_targets"] = medium(batch.pop("medium_caption_ids"))
      dispatched = time.perf_counter()
      state, step_metrics = step_fn(state, batch)
      if step == start:  # the first call traces and compiles before it returns
        _log_compile(start, time.perf_counter() - dispatched)
      if pending is not None:
        losses.update(_finish(pending, history, logger, schedule, window, train_cfg, state))
      pending = (step + 1, step_metrics)
      if preemption.agreed():
        losses.update(_finish(pending, history, logger, schedule, window, train_cfg, state))
        pending = None
        checkpoint.save(manager, step + 1, state, {**meta, "step": step + 1}, readers, force=True)
        history.flush()
        manager.wait_until_finished()
        signum = preemption.signum or signal.SIGTERM  # another process's signal
        log.info("%s: saved step %d to %s; the same command resumes from it", signal.Signals(signum).name, step + 1,
                 manager.directory)
        raise Preempted(step + 1, signum)
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


def _initial_state(run: Run, manager, model_dict, readers):
  latest = manager.latest_step()
  if latest is not None:
    where = f"checkpoint {manager.directory}/{latest}"
    checkpoint.check_compatible(checkpoint.read_meta(manager, latest), model_dict, where)
    data = None if run.config.train.reset_data_on_resume else readers
    state, _ = checkpoint.restore(manager, latest, run.abstract_state(), data)
    log.info("resumed from %s", where)
    return state, latest
  state = run.init_state()
  loaded = pretrained_params(run.config, run.model_cfg, jax.random.fold_in(run.rng, 1))
  state["params"] = place(state["params"], loaded, run.shardings["params"])
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
  if window["timing"]:
    window["steps"] += 1
    window["tokens"] += scalars["tokens"]
    window["images"] += scalars["images"]
  else:  # this process's first step includes compiling it: the rate (and the ETA) count from its end
    window["timing"] = True
    logger.start_clock()
  if step % train_cfg.log_every == 0 or step == train_cfg.steps:
    logger.log(step, scalars, steps_done=window["steps"], tokens=window["tokens"], images=window["images"])
    window.update(steps=0, tokens=0.0, images=0.0)
  return {step: loss}

