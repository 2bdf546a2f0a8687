"""Presets equal the public HF configs; bad configs fail with messages naming the field."""
import subprocess
import sys

import pytest
import jax

from configs import llama_lm, models
from mim_jax.config import model_config, validate
from mim_jax.convert.llama import config_to_hf
from mim_jax.models.llama import abstract_params

# Parameter counts and config.json values of the public releases.
PUBLIC = {
    "llama2_7b": (6_738_415_616, dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                      rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096,
                                      rope_scaling=None)),
    "llama2_13b": (13_015_864_320, dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                        num_attention_heads=40, num_key_value_heads=40, vocab_size=32000,
                                        rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096)),
    "llama3_8b": (8_030_261_248, dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                      rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=131072,
                                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0,
                                                    "original_max_position_embeddings": 8192})),
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_presets_equal_public_configs(name):
  count, fields = PUBLIC[name]
  config = llama_lm.get_config(name)
  validate(config)
  cfg = model_config(config)
  assert sum(x.size for x in jax.tree.leaves(abstract_params(cfg))) == count
  hf = config_to_hf(cfg, "bfloat16", {})
  assert {k: hf[k] for k in fields} == fields


def _config(**model):
  config = llama_lm.get_config("tiny")
  config.model.update(model)
  return config


@pytest.mark.parametrize("change,message", [
    (dict(rope_scaling_type="yarn"), r"model.rope_scaling_type is 'yarn'; allowed values: default, linear, llama3"),
    (dict(num_kv_heads=3), r"model.num_heads \(4\) must be a multiple of model.num_kv_heads \(3\)"),
    (dict(remat_policy="some"), r"model.remat_policy is 'some'; allowed values: none, full, dots"),
    (dict(dtype="fp8"), r"model.dtype is 'fp8'; allowed values: float32, bfloat16, float16"),
])
def test_validate_names_field_and_allowed_values(change, message):
  with pytest.raises(ValueError, match=message):
    validate(_config(**change))


def test_validate_mesh_and_train_fields():
  config = _config()
  config.mesh.ici_data = 0
  with pytest.raises(ValueError, match=r"mesh.ici_data must be a positive int or -1"):
    validate(config)
  config = _config()
  config.train.seq_len = 100_000
  with pytest.raises(ValueError, match=r"train.seq_len \(100000\) exceeds model.max_positions \(512\)"):
    validate(config)
  config = _config()
  config.sharding_rules = config.sharding_rules + (("embed", "pipeline"),)
  with pytest.raises(ValueError, match=r"uses mesh axes \['pipeline'\]"):
    validate(config)


def test_unknown_model_field_is_rejected():
  config = _config()
  with config.unlocked():
    config.model.num_layer = 3
  with pytest.raises(ValueError, match=r"unknown model field\(s\) \['num_layer'\]"):
    validate(config)


def _quickstart(*overrides, tmp_path):
  return subprocess.run(
      [sys.executable, "-m", "mim_jax.quickstart", "--config", "configs/quickstart.py", f"--workdir={tmp_path}",
       *overrides], capture_output=True, text=True, timeout=300,
  )


@pytest.mark.parametrize("override,message", [
    ("--config.model.num_layer=3", "num_layer"),  # mistyped field name
    ("--config.model.num_layers=two", "num_layers"),  # wrong type
    ("--config.model.rope_scaling_type=yarn", "allowed values: default, linear, llama3"),
])
def test_command_line_overrides_are_checked(tmp_path, override, message):
  result = _quickstart(override, tmp_path=tmp_path)
  assert result.returncode != 0
  assert message in result.stderr


def test_presets_are_listed_on_a_bad_name():
  with pytest.raises(ValueError, match="presets: tiny, bench_130m, llama2_7b"):
    models.llama("llama2_70b")


def test_ablations_change_one_thing():
  from configs import ablations, mim_stage2

  base = mim_stage2.get_config("full")
  for name in ablations.ABLATIONS:
    config = ablations.get_config(name)
    validate(config)
    changed = [key for key in ("trainable", "optimizer", "data") if config[key] != base[key]]
    assert len(changed) == 1, (name, changed)
  assert list(ablations.get_config("textbind_only").data.sources) == ["textbind"]
  assert ablations.get_config("original_mask,tiny").data.branches_see_earlier_branches
  with pytest.raises(ValueError, match="unknown ablation 'nope'"):
    ablations.get_config("nope")
  with pytest.raises(ValueError, match="mixture"):
    ablations.get_config("no_textbind,tiny")
