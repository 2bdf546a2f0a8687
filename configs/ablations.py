r"""Stage-2 ablations, each one change to configs/mim_stage2.py.

  python -m mim_jax.train --config configs/ablations.py:frozen_llm --workdir gs://B/runs/abl_frozen_llm
  python -m mim_jax.train --config configs/ablations.py:original_mask,tiny --workdir /tmp/abl_mask

`arg` = NAME or NAME,tiny (the CPU-sized model and synthetic data). NAMEs:
  frozen_llm       freezing: only Q-Former, queries and projection train (stage 1's choice, on stage-2 data)
  llm_only         freezing: the LLM trains, the whole image encoder is frozen
  llm_low_lr       per-module LR: the LLM at 0.1× the Q-Former's learning rate
  original_mask    the original's caption-branch mask (later branches see earlier ones; spec §3)
  no_branches      no caption branches: the model never learns to write `<start> caption <end>`
  textbind_only    mixture: TextBind conversations alone
  no_textbind      mixture: everything but TextBind (what TextBind adds)
  textbind_upweighted  mixture: TextBind sampled 5× its share
  qformer_medium   the image medium (spec §2): GILL-like learned prompts + mapper onto SD's text conditioning,
                   trained with MSE to the SD text encoder's caption embeddings, instead of writing descriptions.
                   Set --config.medium_targets=<SD 1.x/2.x diffusers dir> (default SD-2.1 shapes, 77 × 1024; for
                   `tiny`, an SD whose text encoder is 32 wide, or set model.medium.cond_dim to its width)
"""
from __future__ import annotations

import ml_collections

from configs import mim_stage2
from mim_jax.train.freeze import MEDIUM_TRAINABLE

_LLM = (r"^llm/",)
_IMAGE_SIDE = (r"^image_encoder/(qformer|query_tokens|projection)(/|$)",)


def _frozen_llm(config):
  config.trainable = _IMAGE_SIDE


def _llm_only(config):
  config.trainable = _LLM


def _llm_low_lr(config):
  config.optimizer.lr_multipliers = ((r"^llm/", 0.1),)


def _original_mask(config):
  config.data.branches_see_earlier_branches = True


def _no_branches(config):
  config.data.caption_branches = False


def _qformer_medium(config):
  config.model.medium.kind = "qformer"
  config.trainable = tuple(config.trainable) + MEDIUM_TRAINABLE


def _keep_sources(*names):
  def apply(config):
    for name in list(config.data.sources.keys()):
      if name not in names:
        del config.data.sources[name]
  return apply


def _drop_source(name):
  def apply(config):
    del config.data.sources[name]
  return apply


def _upweight(name, factor):
  def apply(config):
    config.data.sources[name].weight *= factor
  return apply


ABLATIONS = {
    "frozen_llm": _frozen_llm, "llm_only": _llm_only, "llm_low_lr": _llm_low_lr, "original_mask": _original_mask,
    "no_branches": _no_branches, "textbind_only": _keep_sources("textbind"), "no_textbind": _drop_source("textbind"),
    "textbind_upweighted": _upweight("textbind", 5.0), "qformer_medium": _qformer_medium,
}
_MIXTURE_ABLATIONS = ("textbind_only", "no_textbind", "textbind_upweighted")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  name, _, size = arg.partition(",")
  if name not in ABLATIONS:
    raise ValueError(f"unknown ablation {name!r}; ablations: {', '.join(ABLATIONS)} (add ',tiny' for CPU size)")
  if size not in ("", "tiny"):
    raise ValueError(f"ablation size must be empty or 'tiny', got {size!r}")
  config = mim_stage2.get_config(size or "full")
  if size == "tiny" and name in _MIXTURE_ABLATIONS:
    raise ValueError(f"{name} changes the stage-2 mixture, which the tiny synthetic data does not have; run it at "
                     "full size")
  ABLATIONS[name](config)
  if size == "tiny" and name == "qformer_medium":
    config.model.medium.update(cond_dim=32, num_prompt_tokens=4, mapper_width=32, mapper_layers=1, mapper_heads=4,
                               mapper_mlp_dim=64)
    config.train.seq_len = 160  # room for the synthetic conversations' second (assistant) image
  return config
