"""The denoising loop: one jitted `lax.fori_loop` over scheduler steps, with
classifier-free guidance, batched over descriptions and split over devices.

Each description's conditional and unconditional inputs are stacked next to
each other (b, 2, ...) so that splitting the batch axis over devices keeps both
halves of a guidance pair on one device: the UNet runs on the (2b, ...)
reshape with no cross-device traffic.
"""
from __future__ import annotations

from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mim_jax.models.diffusion import schedulers
from mim_jax.models.diffusion.schedulers import Schedule
from mim_jax.models.diffusion.unet import UNet2DConditionModel


@flax.struct.dataclass
class Conditioning:
  """UNet conditioning for b descriptions; axis 1 is (unconditional, conditional).
  `pooled_b2d` / `time_ids_b2k` only for SDXL UNets."""

  context_b2sd: jax.Array
  pooled_b2d: jax.Array | None = None
  time_ids_b2k: jax.Array | None = None


def _merge_pair(x):  # (b, 2, ...) → (2b, ...), pairs adjacent
  return None if x is None else x.reshape(-1, *x.shape[2:])


class Denoiser:
  """Runs steps [start, end) of a schedule with `unet` and guidance scale `guidance`
  (no unconditional pass at all when guidance <= 1, as diffusers), the batch split
  over the mesh's `data` axis."""

  def __init__(self, unet: UNet2DConditionModel, mesh: Mesh):
    self.unet, self.mesh = unet, mesh
    batch = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    self._run = jax.jit(
        self._loop, static_argnums=(7,),
        in_shardings=(replicated, batch, batch, replicated, replicated, replicated, replicated),
        out_shardings=batch)

  def __call__(self, params, latents_bhwc: jax.Array, cond: Conditioning, schedule: Schedule, start: int, end: int,
               guidance: float) -> jax.Array:
    return self._run(params, latents_bhwc, cond, schedule, jnp.int32(start), jnp.int32(end), jnp.float32(guidance),
                     guidance > 1.0)

  def _loop(self, params, latents_bhwc, cond: Conditioning, schedule: Schedule, start, end, guidance, guided: bool):
    predict = self._predictor(params, cond, guided)

    def body(i, latents):
      model_input = schedulers.scale_input(schedule, i, latents)
      return schedulers.step(schedule, i, predict(model_input, schedule.timesteps[i], guidance), latents)

    return jax.lax.fori_loop(start, end, body, latents_bhwc.astype(jnp.float32))

  def _predictor(self, params, cond: Conditioning, guided: bool) -> Callable:
    dtype = jnp.dtype(self.unet.config.dtype)
    if not guided:  # the conditional half only
      pick = lambda x: None if x is None else x[:, 1]
      context, pooled, time_ids = pick(cond.context_b2sd), pick(cond.pooled_b2d), pick(cond.time_ids_b2k)
    else:
      context, pooled, time_ids = (_merge_pair(x) for x in (cond.context_b2sd, cond.pooled_b2d, cond.time_ids_b2k))

    def predict(latents_bhwc, t, guidance):
      x = latents_bhwc.astype(dtype)
      if guided:
        x = jnp.repeat(x, 2, axis=0)
      out = self.unet.apply({"params": params}, x, jnp.full((x.shape[0],), t), context, pooled, time_ids)
      if not guided:
        return out
      out_b2hwc = out.reshape(-1, 2, *out.shape[1:])
      uncond, text = out_b2hwc[:, 0], out_b2hwc[:, 1]
      return uncond + guidance * (text - uncond)

    return predict
