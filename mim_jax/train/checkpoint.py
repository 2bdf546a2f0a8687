"""Training checkpoints: one orbax step directory holding everything a resume needs.

Items of step N (`workdir/checkpoints/N/`):
  params     the model params (restorable alone: inference, export)
  opt_state  optimizer state (trainable params only; frozen ones keep none)
  meta       JSON: step, the run config, the model config, the data position
  input      each data reader's tf.data iterator state (`reader_R-of-N/`), so
             the input stream continues at the next batch without re-reading

Saves are async (the arrays are copied off the devices, then written while
training continues); the input state is small and written synchronously at
the step it belongs to. Restoring takes target shardings, so a checkpoint
restores onto any mesh whose shape divides the arrays.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


@dataclasses.dataclass
class InputStateSave(ocp.args.CheckpointArgs):
  readers: Any  # data.batches.ReaderGroup


@dataclasses.dataclass
class InputStateRestore(ocp.args.CheckpointArgs):
  readers: Any


class InputStateHandler(ocp.CheckpointHandler):
  """Every process writes the iterator states of its own readers into the item directory."""

  def save(self, directory: epath.Path, args: InputStateSave) -> None:
    args.readers.save(directory)

  def restore(self, directory: epath.Path, args: InputStateRestore) -> None:
    args.readers.restore(directory)

  def metadata(self, directory: epath.Path) -> None:
    return None


ocp.args.register_with_handler(InputStateHandler, for_save=True)(InputStateSave)
ocp.args.register_with_handler(InputStateHandler, for_restore=True)(InputStateRestore)


def make_manager(directory: str | Path, *, keep_last: int, keep_every: int | None,
                 async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep_last, keep_period=keep_every,
                                         enable_async_checkpointing=async_save, create=True)
  directory = epath.Path(directory)
  if not str(directory).startswith(("gs://", "s3://")):
    directory = directory.absolute()  # orbax wants absolute paths
  handlers = {"params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
              "meta": ocp.JsonCheckpointHandler(), "input": InputStateHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state: dict, meta: dict, readers=None, *,
         force: bool = False) -> bool:
  items = {"params": ocp.args.StandardSave(state["params"]), "opt_state": ocp.args.StandardSave(state["opt_state"]),
           "meta": ocp.args.JsonSave(meta)}
  if readers is not None:
    items["input"] = InputStateSave(readers)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def check_compatible(meta: dict, model_config: dict, where: str) -> None:
  """A checkpoint of another model fails here, naming the fields that differ,
  before orbax meets a shape mismatch deep inside a restore."""
  saved = meta.get("model_config")
  if saved is None:
    raise ValueError(f"{where} has no model_config in its meta item; it was not written by mim_jax.train")
  diffs = _diff(saved, json.loads(json.dumps(model_config)))
  if diffs:
    shown = "; ".join(f"{path}: checkpoint {a!r} vs config {b!r}" for path, a, b in diffs[:6])
    raise ValueError(f"{where} holds a different model ({shown}); point --workdir at this model's run or change "
                     f"the config to match")


def _diff(a, b, path: str = "model") -> list[tuple[str, Any, Any]]:
  # Dtypes, remat and attention kernels may change across a resume; shapes may not.
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for key in sorted(set(a) | set(b)):
      if key in ("dtype", "param_dtype", "remat_policy", "attention_impl", "scan_layers"):
        continue
      out += _diff(a.get(key), b.get(key), f"{path}.{key}")
    return out
  return [] if a == b else [(path, a, b)]


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: dict, readers=None) -> tuple[dict, dict]:
  """(state with the shardings of `abstract_state`, meta). `abstract_state`
  holds jax.ShapeDtypeStruct leaves carrying the target shardings."""
  items = {"params": ocp.args.StandardRestore(abstract_state["params"]),
           "opt_state": ocp.args.StandardRestore(abstract_state["opt_state"]), "meta": ocp.args.JsonRestore()}
  if readers is not None:
    items["input"] = InputStateRestore(readers)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  meta = restored["meta"]
  state = {"params": restored["params"], "opt_state": restored["opt_state"],
           "step": jax.device_put(jax.numpy.asarray(meta["step"], jax.numpy.int32),
                                  abstract_state["step"].sharding)}
  return state, meta


def restore_params(directory: str | Path, step: int | None = None) -> tuple[Any, dict]:
  """Params only (whole, on one local device) and meta, for inference and
  export: any machine can read them, whatever mesh wrote them."""
  manager = make_manager(directory, keep_last=1, keep_every=None, async_save=False)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {directory}; train first, or point at a run's workdir")
  structure = manager.item_metadata(step)["params"]
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), structure)
  restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target),
                                                           meta=ocp.args.JsonRestore()))
  return restored["params"], restored["meta"]
