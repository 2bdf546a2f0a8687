"""Multi-process start-up: `jax.distributed.initialize` from the environment.

- TPU VMs (`gcloud … ssh --worker=all`): JAX finds the coordinator, process
  count and index itself; set MIM_JAX_DISTRIBUTED=1 (launch/tpu_pod.sh does).
- SLURM (launch/slurm_gpu.sbatch): JAX reads SLURM_* variables itself when run
  under `srun`; set MIM_JAX_DISTRIBUTED=1.
- Anything else, localhost tests included: MIM_JAX_COORDINATOR=host:port,
  MIM_JAX_NUM_PROCESSES, MIM_JAX_PROCESS_ID (and optionally
  MIM_JAX_LOCAL_DEVICE_IDS=0,1,…).
No variable set: a single process, nothing to initialise.
"""
from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger("mim_jax.train")


def initialize(timeout_s: int = 300) -> None:
  env = os.environ
  explicit = "MIM_JAX_COORDINATOR" in env
  if not explicit and env.get("MIM_JAX_DISTRIBUTED", "0") != "1":
    return
  kwargs = {"initialization_timeout": timeout_s}
  if explicit:
    missing = [k for k in ("MIM_JAX_NUM_PROCESSES", "MIM_JAX_PROCESS_ID") if k not in env]
    if missing:
      raise ValueError(f"MIM_JAX_COORDINATOR is set but {missing} are not; set all three (see "
                       f"mim_jax/train/distributed.py)")
    kwargs.update(coordinator_address=env["MIM_JAX_COORDINATOR"], num_processes=int(env["MIM_JAX_NUM_PROCESSES"]),
                  process_id=int(env["MIM_JAX_PROCESS_ID"]))
    if env.get("MIM_JAX_LOCAL_DEVICE_IDS"):
      kwargs["local_device_ids"] = [int(i) for i in env["MIM_JAX_LOCAL_DEVICE_IDS"].split(",")]
  if env.get("JAX_PLATFORMS", "") == "cpu":
    # CPU processes (tests, CPU clusters) need an explicit cross-process collectives backend.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as error:
    where = kwargs.get("coordinator_address", "the coordinator JAX derives from the TPU / SLURM environment")
    raise RuntimeError(
        f"could not join the distributed job at {where} within {timeout_s}s ({error}). Check that every process "
        f"was started, that process 0 runs on the coordinator host, and that its port is reachable; outside TPU "
        f"VMs and SLURM set MIM_JAX_COORDINATOR=host:port, MIM_JAX_NUM_PROCESSES and MIM_JAX_PROCESS_ID") from error
  log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())
