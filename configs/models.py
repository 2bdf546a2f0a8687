"""Model presets as ml_collections ConfigDicts (`config.model`): thin views of
the presets the config classes own (`llama_config.PRESETS`, `mim.PRESETS`)."""
from __future__ import annotations

import ml_collections

from mim_jax.models.llama_config import LlamaConfig
from mim_jax.models.mim import MIMConfig


def llama(name: str) -> ml_collections.ConfigDict:
  """The full LlamaConfig field set for a preset, as a ConfigDict."""
  return ml_collections.ConfigDict(LlamaConfig.preset(name).to_dict())


def mim(size: str) -> ml_collections.ConfigDict:
  """MIM towers: `full` = EVA ViT-g + BLIP-2 Q-Former + Llama-2-7b with the
  3 new tokens (spec §2, bf16 compute and remat), `tiny` = CPU-sized, same structure.
  Spec §2 ablation: `--config.model.medium.kind=qformer` (models/image_medium.py)."""
  return ml_collections.ConfigDict(MIMConfig.preset(size).to_dict())
