"""Ahead-of-time TPU compiles of the train step on this CPU machine
(launch/aot_compile.py; needs libtpu, as installed by jax[tpu])."""
import importlib.util
import pathlib
import sys

import pytest

from configs import llama_lm, mim_stage2

GIB = 1024**3
_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "launch" / "aot_compile.py"


def _load_aot_compile():
  # launch/ is a folder of scripts, not a package.
  spec = importlib.util.spec_from_file_location("aot_compile", _SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


# Compile-only TPU executables are written to the conftest's persistent cache
# but cannot be read back without a TPU client; JAX warns and recompiles.
pytestmark = pytest.mark.filterwarnings("ignore:Error reading persistent compilation cache entry")
pytest.importorskip("libtpu", reason="TPU AOT compiles need libtpu (pip install jax[tpu])")
aot = _load_aot_compile()


def _print(name, r):
  sizes = {k: f"{r[k] / GIB:.3f} GiB" for k in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes",
                                                 "generated_code_bytes", "total_bytes")}
  print(f"\n{name} on {r['topology']} mesh {r['mesh_shape']}: {sizes}, flops/step {r['flops']:.4g} "
        f"(per device {r['flops_per_device']:.4g}, XLA {r['compiler_flops_per_device']:.4g}), "
        f"step >= {r['step_time_s'] * 1e3:.3g} ms")


def _tiny(num_layers=3, scan_layers=True):
  config = llama_lm.get_config("tiny")
  config.model.num_layers = num_layers
  config.model.scan_layers = scan_layers
  config.train.seq_len = 64
  return config


def test_tiny_compiles_for_v5e():
  r = aot.compile_for_topology(_tiny(), "v5e:2x2")
  _print("tiny", r)
  assert (r["num_chips"], r["num_devices"]) == (4, 4)
  assert r["mesh_shape"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert r["fits"] and 0 < r["total_bytes"] < r["hbm_bytes_per_device"] == 16 * GIB
  tokens = 8 * 64
  assert r["flops"] > 6 * r["num_params"] * tokens
  # The scan body is counted once by XLA; the other two layers come on top.
  assert r["flops_per_device"] > 1.5 * r["compiler_flops_per_device"]


@pytest.mark.parametrize("topology", ["v9z:2x2", "v5p", "v5p:3x5x7"])
def test_bad_topology_names_it(topology):
  with pytest.raises(ValueError, match=f"TPU topology '{topology}'"):
    aot.compile_for_topology(_tiny(), topology)


@pytest.mark.slow
def test_layer_extrapolation_matches_unrolled_flops():
  scanned = aot.compile_for_topology(_tiny(), "v5e:2x2")
  unrolled = aot.compile_for_topology(_tiny(scan_layers=False), "v5e:2x2")
  assert unrolled["compiler_flops_per_device"] == unrolled["flops_per_device"]
  assert scanned["flops_per_device"] == pytest.approx(unrolled["flops_per_device"], rel=0.02)


@pytest.mark.slow
def test_llama2_7b_fits_v5p_2x2x2():
  config = llama_lm.get_config("llama2_7b")
  config.train.batch_size = 8
  config.train.seq_len = 512
  r = aot.compile_for_topology(config, "v5p:2x2x2")
  _print("llama2_7b", r)
  assert r["mesh_shape"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert 6.7e9 < r["num_params"] < 6.8e9
  assert 0 < r["total_bytes"] < 95 * GIB and r["fits"]
  # Pure FSDP: each chip holds an eighth of the f32 params and of both Adam moments.
  assert r["params_bytes_per_device"] == pytest.approx(4 * r["num_params"] / 8, rel=0.01)
  assert r["argument_bytes"] == pytest.approx(r["state_bytes"] / 8, rel=0.02)
  assert r["flops"] > 0.9 * 6 * 6.7e9 * 8 * 512


def test_tiny_mim_stage2_compiles_with_frozen_vit():
  r = aot.compile_for_topology(mim_stage2.get_config("tiny"), "v5e:2x2", exact_flops=False)
  _print("tiny MIM stage 2", r)
  assert r["fits"] and r["mesh_shape"] == {"data": 1, "fsdp": 4, "tensor": 1}


@pytest.mark.slow
def test_mim_stage2_7b_fits_v5p_2x2x2():
  """eva_vit_g + blip2 Q-Former + llama2_7b, global batch 64 (8 per chip), length 768, ViT frozen."""
  config = mim_stage2.get_config("full")
  r = aot.compile_for_topology(config, "v5p:2x2x2", exact_flops=False)
  _print("MIM stage 2 (7B)", r)
  assert r["mesh_shape"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert 7.7e9 < r["num_params"] < 7.9e9  # 6.74B LLM + 0.99B ViT-g + Q-Former, projection, new rows
  assert 0 < r["total_bytes"] < 95 * GIB and r["fits"]
