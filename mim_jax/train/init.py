"""Where a run's first params come from (config.init), and the tokenizer.

Exactly one of, or none (random init, tiny runs):
- init.mim       a HF Blip2ForConditionalGeneration-style MIM directory (our export)
- init.textbind  TextBind's released MIM state dict (.pt / .safetensors), with
                 init.vision for the separately saved ViT
- init.llm and/or init.blip2   a HF Llama directory (Llama-2-chat) and a HF
                 BLIP-2 directory (EVA ViT + Q-Former + query tokens): what
                 stage 1 starts from. BLIP-2's language projection targets its
                 own LM, so ours starts random.
The loaded LLM's vocabulary grows to the config's (32000 → 32003, new rows
~ N(0, 0.02), spec §2). Loaded tensors replace the random ones leaf by leaf,
each put straight onto its sharding.
"""
from __future__ import annotations

import logging
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from mim_jax.convert.blip2 import load_hf_image_encoder
from mim_jax.convert.llama import load_hf_llama
from mim_jax.convert.mim import load_hf_mim, load_textbind
from mim_jax.data.text_windows import read_text_lines
from mim_jax.data.tokenizer import Tokenizer, train_sentencepiece
from mim_jax.models.llama_config import LlamaConfig
from mim_jax.models.mim import MIMConfig
from mim_jax.models.vocab import resize_vocab

log = logging.getLogger("mim_jax.train")


def load_tokenizer(config, workdir: Path, vocab_size: int) -> Tokenizer:
  """config.tokenizer, or (tiny runs) a sentencepiece model trained once on
  data.text_file (the bundled text by default) and kept in the workdir, so a
  resumed run reuses it."""
  if config.tokenizer:
    tokenizer = Tokenizer.load(config.tokenizer)
  else:
    directory = workdir / "tokenizer"
    if jax.process_index() == 0 and not (directory / "tokenizer.model").is_file():
      train_sentencepiece(read_text_lines(config.data.text_file), directory, vocab_size - 3)
    multihost_utils.sync_global_devices("tokenizer")
    tokenizer = Tokenizer.load(directory)
  if tokenizer.vocab_size > vocab_size:
    raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary is {vocab_size}; set "
                     f"model.llm.vocab_size (or model.vocab_size) to at least {tokenizer.vocab_size}")
  return tokenizer


def pretrained_params(config, cfg: LlamaConfig | MIMConfig, rng: jax.Array) -> dict | None:
  """Host params from config.init (a partial tree: the parts it provides), or None."""
  init = config.init
  chosen = [name for name in ("mim", "textbind", "llm", "blip2") if init.get(name)]
  if not chosen:
    return None
  if ("mim" in chosen or "textbind" in chosen) and len(chosen) > 1:
    raise ValueError(f"config.init sets {chosen}: init.mim and init.textbind each give the whole model; set one")
  is_mim = isinstance(cfg, MIMConfig)
  llm_cfg = cfg.llm if is_mim else cfg
  if not is_mim and set(chosen) - {"llm"}:
    raise ValueError(f"config.init sets {chosen} but the model is a plain LLM; only init.llm applies")
  if "mim" in chosen:
    loaded_cfg, params = load_hf_mim(init.mim)
    params["llm"] = _grow_vocab(loaded_cfg.llm, params["llm"], llm_cfg, rng)
    return params
  if "textbind" in chosen:
    return load_textbind(init.textbind, cfg, init.get("vision") or None)
  params = {}
  if init.get("llm"):
    loaded_cfg, llm = load_hf_llama(init.llm)
    llm = _grow_vocab(loaded_cfg, llm, llm_cfg, rng)
    if not is_mim:
      return llm
    params["llm"] = llm
  if init.get("blip2"):
    _, _, _, image = load_hf_image_encoder(init.blip2)
    image.pop("projection")
    params["image_encoder"] = image
  return params


def _grow_vocab(loaded: LlamaConfig, params: dict, target: LlamaConfig, rng: jax.Array) -> dict:
  if loaded.vocab_size > target.vocab_size:
    raise ValueError(f"the checkpoint's vocabulary ({loaded.vocab_size}) is larger than the config's "
                     f"({target.vocab_size}); set the model's vocab_size to {loaded.vocab_size} or more")
  return resize_vocab(loaded, params, target.vocab_size, rng)[1]


def place(params, loaded: dict | None, shardings, where: str = "params"):
  """`params` with every leaf of `loaded` (same path, same shape) put in its place on its sharding."""
  if loaded is None:
    return params
  if isinstance(loaded, dict):
    unknown = sorted(set(loaded) - set(params))
    if unknown:
      raise ValueError(f"loaded weights have {where}/{unknown[0]}, which the model does not; the checkpoint and the "
                       f"config describe different models")
    return {**params, **{k: place(params[k], v, shardings[k], f"{where}/{k}") for k, v in loaded.items()}}
  if tuple(loaded.shape) != tuple(params.shape):
    raise ValueError(f"{where}: the checkpoint has shape {tuple(loaded.shape)}, the config {tuple(params.shape)}; "
                     f"make the config match the checkpoint")
  return jax.device_put(np.asarray(loaded).astype(params.dtype), shardings)
