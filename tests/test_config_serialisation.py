"""Every model config class round-trips through a JSON dict (what checkpoints
and exports store) and rejects keys it does not have."""
from __future__ import annotations

import json

import pytest

from configs import models
from mim_jax.models import clip_config, eva_vit, llama_config, mim, qformer
from mim_jax.models.clip_config import ClipConfig, ClipTextConfig, ClipVisionConfig
from mim_jax.models.eva_vit import VisionConfig
from mim_jax.models.image_medium import MediumConfig
from mim_jax.models.llama_config import LlamaConfig
from mim_jax.models.mim import MIMConfig
from mim_jax.models.qformer import QFormerConfig

CONFIGS = [
    *(LlamaConfig.preset(name) for name in llama_config.PRESETS),
    *(VisionConfig.preset(name) for name in eva_vit.PRESETS),
    *(QFormerConfig.preset(name) for name in qformer.PRESETS),
    *(ClipConfig.preset(name) for name in clip_config.PRESETS),
    *(tower for name in clip_config.PRESETS for tower in (ClipConfig.preset(name).vision,
                                                          ClipConfig.preset(name).text)),
    MediumConfig(),
    MediumConfig(kind="qformer", num_prompt_tokens=4, cond_length=6, cond_dim=16),
    *(MIMConfig.preset(name) for name in mim.PRESETS),
    MIMConfig.preset("tiny", medium=dict(kind="qformer", num_prompt_tokens=4)),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_json_round_trip(config):
  values = json.loads(json.dumps(config.to_dict()))
  assert type(config).from_dict(values) == config


def test_nested_configs_come_back_as_their_classes():
  cfg = MIMConfig.from_dict(MIMConfig.preset("tiny").to_dict())
  assert [type(t) for t in (cfg.llm, cfg.vision, cfg.qformer, cfg.medium)] == [
      LlamaConfig, VisionConfig, QFormerConfig, MediumConfig]
  assert type(ClipConfig.from_dict(ClipConfig.preset("tiny").to_dict()).text) is ClipTextConfig


@pytest.mark.parametrize("cls,values,message", [
    (LlamaConfig, {"num_layer": 3}, r"unknown model field\(s\) \['num_layer'\] for LlamaConfig; known fields: \["),
    (VisionConfig, {"width": 3}, r"unknown vision field\(s\) \['width'\] for VisionConfig"),
    (QFormerConfig, {"queries": 3}, r"unknown qformer field\(s\) \['queries'\] for QFormerConfig"),
    (MediumConfig, {"kind": "qformer", "tokens": 3}, r"unknown medium field\(s\) \['tokens'\] for MediumConfig"),
    (ClipVisionConfig, {"width": 3}, r"unknown clip.vision field\(s\) \['width'\] for ClipVisionConfig"),
    (ClipConfig, {"audio": {}},
     r"unknown clip field\(s\) \['audio'\] for ClipConfig; known fields: \['logit_scale_init', 'text', 'vision'\]"),
    (MIMConfig, {"llm": {}, "vision": {}, "qformer": {}, "decoder": {}},
     r"unknown model field\(s\) \['decoder'\] for MIMConfig; known fields: \['llm', 'medium', 'qformer', 'vision'\]"),
])
def test_unknown_fields_are_rejected(cls, values, message):
  with pytest.raises(ValueError, match=message):
    cls.from_dict(values)


def test_unknown_nested_field_names_the_tower():
  values = MIMConfig.preset("tiny").to_dict()
  values["llm"]["num_layer"] = 3
  with pytest.raises(ValueError, match=r"unknown model field\(s\) \['num_layer'\] for LlamaConfig"):
    MIMConfig.from_dict(values)


def test_mim_config_without_medium_loads_the_language_medium():
  """Run configs and exports from before the image medium have no `medium` key."""
  values = MIMConfig.preset("tiny", medium=dict(kind="qformer")).to_dict()
  del values["medium"]
  cfg = MIMConfig.from_dict(values)
  assert cfg.medium == MediumConfig() and cfg.medium.kind == "language"
  assert cfg == MIMConfig.preset("tiny")


def test_mim_config_checks_the_qformer_reads_the_vision_width():
  values = MIMConfig.preset("tiny").to_dict()
  values["qformer"]["encoder_dim"] = 48
  with pytest.raises(ValueError, match=r"model.qformer.encoder_dim \(48\) must equal model.vision.embed_dim \(32\)"):
    MIMConfig.from_dict(values)


@pytest.mark.parametrize("cls,section,presets", [
    (LlamaConfig, "model", "tiny, bench_130m, llama2_7b, llama2_13b, llama3_8b"),
    (MIMConfig, "model", "full, tiny"),
    (VisionConfig, "vision", "eva_vit_g, tiny"),
])
def test_unknown_preset_lists_the_presets(cls, section, presets):
  with pytest.raises(ValueError, match=f"unknown {section} preset 'huge'; presets: {presets}"):
    cls.preset("huge")


def test_config_dicts_are_the_class_presets():
  assert LlamaConfig.from_dict(models.llama("llama3_8b").to_dict()) == LlamaConfig.preset("llama3_8b")
  full = MIMConfig.from_dict(models.mim("full").to_dict())
  assert full == MIMConfig.preset("full")
  assert full.llm.vocab_size == 32000 + 3 and full.llm.dtype == full.vision.dtype == full.qformer.dtype == "bfloat16"
  assert models.mim("tiny").llm.vocab_size == llama_config.PRESETS["tiny"]["vocab_size"] + 3
