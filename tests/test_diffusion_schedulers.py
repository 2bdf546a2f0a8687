"""Euler and DDIM against diffusers' schedulers: timestep tables for every
spacing, one step for each prediction type, and the SDXL base/refiner split."""
import diffusers
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mim_jax.convert.diffusers_config import scheduler_config_from_diffusers
from mim_jax.models.diffusion import schedulers

REFERENCE = {"euler": diffusers.EulerDiscreteScheduler, "ddim": diffusers.DDIMScheduler}
SDXL = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)


def pair(kind, **values):
  reference = REFERENCE[kind](**values)
  ours = scheduler_config_from_diffusers({"_class_name": type(reference).__name__, **reference.config})
  assert ours.kind == kind
  return reference, ours


@pytest.mark.parametrize("kind", ["euler", "ddim"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [7, 40])
def test_timestep_tables_match(kind, spacing, steps):
  reference, ours = pair(kind, **SDXL, timestep_spacing=spacing)
  reference.set_timesteps(steps)
  schedule = schedulers.make_schedule(ours, steps)
  np.testing.assert_array_equal(np.asarray(schedule.timesteps), reference.timesteps.numpy().astype(np.float32))
  assert schedule.init_noise_sigma == pytest.approx(float(reference.init_noise_sigma), rel=1e-5)
  if kind == "euler":
    np.testing.assert_allclose(np.asarray(schedule.sigmas), reference.sigmas.numpy(), rtol=1e-5)


@pytest.mark.parametrize("kind", ["euler", "ddim"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear"])
def test_one_step_matches(kind, prediction, beta_schedule):
  values = dict(beta_schedule=beta_schedule, prediction_type=prediction, timestep_spacing="leading", steps_offset=1)
  if kind == "ddim":
    values["clip_sample"] = False
  reference, ours = pair(kind, **values)
  reference.set_timesteps(10)
  schedule = schedulers.make_schedule(ours, 10)
  torch.manual_seed(0)
  sample, model_output = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
  for i in (0, 9):  # the first step and the last (where DDIM's previous alpha is the final one)
    t = reference.timesteps[i]
    reference._step_index = i if kind == "euler" else None
    want_input = reference.scale_model_input(sample, t).numpy()
    reference._step_index = i if kind == "euler" else None
    want = reference.step(model_output, t, sample).prev_sample.numpy()
    x, eps = jnp.asarray(sample.numpy()), jnp.asarray(model_output.numpy())
    np.testing.assert_allclose(np.asarray(schedulers.scale_input(schedule, i, x)), want_input, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(schedulers.step(schedule, i, eps, x)), want, rtol=1e-4, atol=1e-5)


def test_ddim_clip_sample():
  reference, ours = pair("ddim", clip_sample=True, clip_sample_range=0.5)
  reference.set_timesteps(4)
  schedule = schedulers.make_schedule(ours, 4)
  sample, model_output = torch.full((1, 4), 3.0), torch.full((1, 4), -2.0)
  want = reference.step(model_output, reference.timesteps[1], sample).prev_sample.numpy()
  got = schedulers.step(schedule, 1, jnp.asarray(model_output.numpy()), jnp.asarray(sample.numpy()))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_base_and_refiner_split_steps_as_diffusers():
  """SDXL's ensemble: the base keeps timesteps >= the cutoff, the refiner the rest (spec: 40 steps, 0.8)."""
  _, ours = pair("euler", **SDXL)
  schedule = schedulers.make_schedule(ours, 40)
  timesteps = np.asarray(schedule.timesteps)
  assert schedulers.steps_before(schedule, 0.8) == int(np.sum(timesteps >= 200)) == 32
  assert schedulers.first_step_after(schedule, 0.8) == 40 - int(np.sum(timesteps < 200)) == 32
  with pytest.raises(ValueError, match="denoising_end must be a fraction in \\(0, 1\\)"):
    schedulers.steps_before(schedule, 1.5)


@pytest.mark.parametrize("values, message", [
    ({"_class_name": "LMSDiscreteScheduler"}, "scheduler 'LMSDiscreteScheduler' is not supported"),
    ({"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "karras"}, "timestep_spacing 'karras'"),
    ({"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True}, "use_karras_sigmas=True"),
    ({"_class_name": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2"}, "beta_schedule 'squaredcos_cap_v2'"),
    ({"_class_name": "DDIMScheduler", "prediction_type": "sample"}, "prediction_type 'sample'"),
])
def test_unsupported_scheduler_configs_are_named(values, message):
  with pytest.raises(ValueError, match=message):
    scheduler_config_from_diffusers(values)


def test_kind_override_and_step_count_checks():
  config = scheduler_config_from_diffusers({"_class_name": "LMSDiscreteScheduler", **SDXL}, kind="ddim")
  assert config.kind == "ddim" and config.clip_sample  # DDIM's own default when the config has none
  with pytest.raises(ValueError, match="steps must be in 1..1000"):
    config.timesteps(0)
