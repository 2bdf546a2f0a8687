"""CLIP configs: one dataclass per tower and `ClipConfig` holding both.

`ClipVisionConfig` and `ClipTextConfig` stand alone because Stable Diffusion
and SDXL ship a text tower by itself (`CLIPTextModel`,
`CLIPTextModelWithProjection`); `ClipConfig` is the dual encoder
(`CLIPModel`): `.vision`, `.text` and the shared `projection_dim`.

`projection_dim = 0` means the tower has no projection (SD 1.x's
`CLIPTextModel`); its `embeds` output is then None.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from mim_jax.models import config_checks
from mim_jax.models.config_base import ConfigBase, from_preset
from mim_jax.nn.remat import POLICY_NAMES

# HF `hidden_act` names; quick_gelu is OpenAI's x * sigmoid(1.702 x), gelu the exact (erf) one.
ACTIVATIONS = ("quick_gelu", "gelu")


class _TowerChecks(config_checks.TowerConfig):

  def check_tower(self) -> None:
    section = self.SECTION
    self.check_dtypes_and_attention()
    config_checks.check_choice(section, "remat_policy", self.remat_policy, POLICY_NAMES)
    config_checks.check_choice(section, "activation", self.activation, ACTIVATIONS)
    config_checks.check_positive_ints(section, self, ("embed_dim", "num_layers", "num_heads", "mlp_dim"))
    config_checks.check_divides(section, self, "embed_dim", "num_heads")
    if not isinstance(self.projection_dim, int) or self.projection_dim < 0:
      raise ValueError(f"{section}.projection_dim must be an int >= 0 (0: no projection), got {self.projection_dim!r}")

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads


@dataclasses.dataclass(frozen=True)
class ClipVisionConfig(_TowerChecks):
  SECTION: ClassVar[str] = "clip.vision"

  image_size: int = 224
  patch_size: int = 14
  embed_dim: int = 1024
  num_layers: int = 24
  num_heads: int = 16
  mlp_dim: int = 4096
  activation: str = "quick_gelu"
  norm_eps: float = 1e-5
  projection_dim: int = 768
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = True
  remat_policy: str = "none"
  attention_impl: str = "xla"

  def __post_init__(self):
    self.check_tower()
    config_checks.check_positive_ints(self.SECTION, self, ("image_size", "patch_size"))
    config_checks.check_divides(self.SECTION, self, "image_size", "patch_size")

  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_positions(self) -> int:
    return self.grid_size**2 + 1


@dataclasses.dataclass(frozen=True)
class ClipTextConfig(_TowerChecks):
  SECTION: ClassVar[str] = "clip.text"

  vocab_size: int = 49408
  max_positions: int = 77
  embed_dim: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  activation: str = "quick_gelu"
  norm_eps: float = 1e-5
  # The pooled output sits at the first `eos_token_id`, except that 2 (checkpoints saved before
  # transformers PR #24773) means "at the largest token id", the end-of-text token of CLIP's vocabulary.
  eos_token_id: int = 2
  projection_dim: int = 768
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = True
  remat_policy: str = "none"
  attention_impl: str = "xla"

  def __post_init__(self):
    self.check_tower()
    config_checks.check_positive_ints(self.SECTION, self, ("vocab_size", "max_positions"))
    if not isinstance(self.eos_token_id, int) or not 0 <= self.eos_token_id < self.vocab_size:
      raise ValueError(f"clip.text.eos_token_id must be a token id below vocab_size ({self.vocab_size}), "
                       f"got {self.eos_token_id!r}")

  @property
  def legacy_eos(self) -> bool:
    return self.eos_token_id == 2


@dataclasses.dataclass(frozen=True)
class ClipConfig(ConfigBase):
  """Both towers; their `projection_dim`s must agree (the joint embedding width)."""

  SECTION: ClassVar[str] = "clip"

  vision: ClipVisionConfig = ClipVisionConfig()
  text: ClipTextConfig = ClipTextConfig()
  # log(1 / 0.07), CLIP's initial temperature; only used by init, checkpoints carry `logit_scale`.
  logit_scale_init: float = 2.6592

  def __post_init__(self):
    if self.vision.projection_dim != self.text.projection_dim or self.vision.projection_dim == 0:
      raise ValueError(
          f"clip.vision.projection_dim ({self.vision.projection_dim}) and clip.text.projection_dim "
          f"({self.text.projection_dim}) must be the same positive width: both towers project into one space")

  @property
  def projection_dim(self) -> int:
    return self.vision.projection_dim

  def replace_towers(self, **overrides) -> "ClipConfig":
    """The same config with `overrides` (dtype, scan_layers, ...) applied to both towers."""
    return dataclasses.replace(self, vision=dataclasses.replace(self.vision, **overrides),
                               text=dataclasses.replace(self.text, **overrides))

  @classmethod
  def preset(cls, name: str, **tower_overrides) -> "ClipConfig":
    return from_preset(cls, PRESETS, name, {}).replace_towers(**tower_overrides)


PRESETS = {
    # openai/clip-vit-large-patch14 (also Stable Diffusion 1.x's text encoder, without its projection).
    "vit_l_14": dict(
        vision=dict(image_size=224, patch_size=14, embed_dim=1024, num_layers=24, num_heads=16, mlp_dim=4096,
                    activation="quick_gelu", norm_eps=1e-5, projection_dim=768),
        text=dict(vocab_size=49408, max_positions=77, embed_dim=768, num_layers=12, num_heads=12, mlp_dim=3072,
                  activation="quick_gelu", norm_eps=1e-5, eos_token_id=2, projection_dim=768),
    ),
    "tiny": dict(
        vision=dict(image_size=28, patch_size=14, embed_dim=32, num_layers=2, num_heads=4, mlp_dim=64,
                    projection_dim=16),
        text=dict(vocab_size=99, max_positions=16, embed_dim=24, num_layers=2, num_heads=4, mlp_dim=48,
                  eos_token_id=2, projection_dim=16),
    ),
}
