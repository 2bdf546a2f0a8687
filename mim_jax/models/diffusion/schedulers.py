"""Euler (SDXL's default) and DDIM, as diffusers computes them, from a
`SchedulerConfig` (convert/diffusers_config.py reads one from a
`scheduler/scheduler_config.json`).

The timestep table and every per-step coefficient are computed once on the
host (numpy, float32 as diffusers does) into a `Schedule`, a pytree of arrays
the jitted denoising loop indexes with its step counter; `scale_input` and
`step` are pure functions of (schedule, step index, arrays).
"""
from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

SPACINGS = ("leading", "trailing", "linspace")
BETA_SCHEDULES = ("scaled_linear", "linear")
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
  kind: str  # "euler" | "ddim"
  num_train_timesteps: int = 1000
  beta_start: float = 0.0001
  beta_end: float = 0.02
  beta_schedule: str = "linear"
  prediction_type: str = "epsilon"
  timestep_spacing: str = "linspace"
  steps_offset: int = 0
  clip_sample: bool = False  # DDIM only
  clip_sample_range: float = 1.0
  set_alpha_to_one: bool = True  # DDIM only

  def alphas_cumprod(self) -> np.ndarray:
    n = self.num_train_timesteps
    if self.beta_schedule == "linear":
      betas = np.linspace(self.beta_start, self.beta_end, n, dtype=np.float32)
    else:
      betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=np.float32) ** 2
    return np.cumprod(1.0 - betas, dtype=np.float32)

  def timesteps(self, num_steps: int) -> np.ndarray:
    """The descending timestep table diffusers' set_timesteps builds (float for Euler, int for DDIM)."""
    total = self.num_train_timesteps
    if not 0 < num_steps <= total:
      raise ValueError(f"steps must be in 1..{total} (the scheduler's num_train_timesteps), got {num_steps}")
    if self.timestep_spacing == "linspace":
      if self.kind == "euler":
        return np.linspace(0, total - 1, num_steps, dtype=np.float32)[::-1].copy()
      return np.linspace(0, total - 1, num_steps).round()[::-1].astype(np.int64)
    if self.timestep_spacing == "leading":
      steps = (np.arange(0, num_steps) * (total // num_steps)).round()[::-1] + self.steps_offset
    else:
      steps = np.round(np.arange(total, 0, -total / num_steps)) - 1
    return steps.astype(np.float32 if self.kind == "euler" else np.int64)


@flax.struct.dataclass
class Schedule:
  """Per-step tables for `num_steps` steps. Euler: `sigmas` (n+1,). DDIM:
  `alphas` / `alphas_prev` (n,), the cumulative alphas at t and at t - T/n."""

  timesteps: jax.Array  # (n,) float32, what the UNet is given
  sigmas: jax.Array
  alphas: jax.Array
  alphas_prev: jax.Array
  init_noise_sigma: float = flax.struct.field(pytree_node=False)
  config: SchedulerConfig = flax.struct.field(pytree_node=False)

  @property
  def num_steps(self) -> int:
    return self.timesteps.shape[0]


def make_schedule(config: SchedulerConfig, num_steps: int) -> Schedule:
  timesteps = config.timesteps(num_steps)
  alphas_cumprod = config.alphas_cumprod()
  empty = np.zeros((0,), np.float32)
  if config.kind == "euler":
    all_sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    sigmas = np.interp(timesteps, np.arange(len(all_sigmas)), all_sigmas)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    max_sigma = float(sigmas.max())
    init = max_sigma if config.timestep_spacing in ("linspace", "trailing") else (max_sigma**2 + 1) ** 0.5
    return Schedule(jnp.asarray(timesteps, jnp.float32), jnp.asarray(sigmas), empty, empty, init, config)
  final = np.float32(1.0) if config.set_alpha_to_one else alphas_cumprod[0]
  prev = timesteps - config.num_train_timesteps // num_steps
  alphas_prev = np.where(prev >= 0, alphas_cumprod[np.maximum(prev, 0)], final).astype(np.float32)
  return Schedule(jnp.asarray(timesteps, jnp.float32), empty, jnp.asarray(alphas_cumprod[timesteps]),
                  jnp.asarray(alphas_prev), 1.0, config)


def scale_input(schedule: Schedule, i, sample: jax.Array) -> jax.Array:
  """What the UNet is fed at step i (Euler divides by sqrt(sigma^2 + 1); DDIM feeds the sample)."""
  if schedule.config.kind == "ddim":
    return sample
  sigma = schedule.sigmas[i]
  return sample / jnp.sqrt(sigma**2 + 1)


def step(schedule: Schedule, i, model_output: jax.Array, sample: jax.Array) -> jax.Array:
  """The sample at step i + 1 from the model output at step i (DDIM with eta = 0), in float32."""
  model_output, sample = model_output.astype(jnp.float32), sample.astype(jnp.float32)
  v_prediction = schedule.config.prediction_type == "v_prediction"
  if schedule.config.kind == "euler":
    sigma, sigma_next = schedule.sigmas[i], schedule.sigmas[i + 1]
    if v_prediction:
      original = model_output * (-sigma / jnp.sqrt(sigma**2 + 1)) + sample / (sigma**2 + 1)
    else:
      original = sample - sigma * model_output
    return sample + (sample - original) / sigma * (sigma_next - sigma)
  alpha, alpha_prev = schedule.alphas[i], schedule.alphas_prev[i]
  if v_prediction:
    original = jnp.sqrt(alpha) * sample - jnp.sqrt(1 - alpha) * model_output
    noise = jnp.sqrt(alpha) * model_output + jnp.sqrt(1 - alpha) * sample
  else:
    original = (sample - jnp.sqrt(1 - alpha) * model_output) / jnp.sqrt(alpha)
    noise = model_output
  if schedule.config.clip_sample:
    original = jnp.clip(original, -schedule.config.clip_sample_range, schedule.config.clip_sample_range)
  return jnp.sqrt(alpha_prev) * original + jnp.sqrt(1 - alpha_prev) * noise


def steps_before(schedule: Schedule, denoising_end: float) -> int:
  """How many leading steps the SDXL base runs when it hands over at `denoising_end` (a fraction)."""
  cutoff = _cutoff(schedule.config, denoising_end, "denoising_end")
  return int(np.sum(np.asarray(schedule.timesteps) >= cutoff))


def first_step_after(schedule: Schedule, denoising_start: float) -> int:
  """The step the SDXL refiner starts at when it takes over at `denoising_start`."""
  cutoff = _cutoff(schedule.config, denoising_start, "denoising_start")
  return schedule.num_steps - int(np.sum(np.asarray(schedule.timesteps) < cutoff))


def _cutoff(config: SchedulerConfig, fraction: float, name: str) -> int:
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"{name} must be a fraction in (0, 1), got {fraction!r}")
  return int(round(config.num_train_timesteps - fraction * config.num_train_timesteps))
