"""Whole-MIM checkpoints, both directions.

1. A Hugging Face `Blip2ForConditionalGeneration` directory with a Llama text
   config and `image_token_index` = `<image>`: transformers' Blip2 scatters the
   image embeddings into the `<image>` positions in order (masked_scatter), so
   several images per sequence, in user and assistant turns, load and run there.
   Beside it: the tokenizer, MIM's chat template and the processor configs
   (convert/hf_processor.py), so `AutoProcessor` gives MIM's prompt.
   Caption branches (tree masks) are a training-time construct and need no
   export.
   With the `qformer` image medium (spec §2 ablation) the directory also holds
   `image_medium.json` (its MediumConfig) and `image_medium.safetensors`
   (prompt embeddings and mapper, by our param paths): transformers ignores
   them; `load_hf_mim` reads them back.
2. TextBind's original release: one state dict with `query_tokens`, `qformer.*`,
   `qformer_projection.*`, `language_model.*` and the vision model saved
   separately. `.safetensors` is read and written without torch; `.pt`/`.bin`
   pickles need torch (imported only then).
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
from flax import traverse_util

from mim_jax.convert import blip2, llama
from mim_jax.convert.hf_processor import chat_template, write_processor_files
from mim_jax.convert.json_files import read_json
from mim_jax.convert.safetensors_io import CheckpointReader, SafetensorsFile, write_safetensors, write_sharded
from mim_jax.convert.table import ArrayReader, read_config_json
from mim_jax.data.tokenizer import Tokenizer
from mim_jax.models.image_medium import MediumConfig
from mim_jax.models.mim import MIMConfig

TEXTBIND_PROJECTION = "qformer_projection."
MEDIUM_CONFIG, MEDIUM_WEIGHTS = "image_medium.json", "image_medium.safetensors"


def load_hf_mim(directory: str | os.PathLike, *, with_vision: bool = True, llm_overrides=None,
                vision_overrides=None, qformer_overrides=None) -> tuple[MIMConfig, dict]:
  """(MIMConfig, host params) from a Blip2ForConditionalGeneration directory with a Llama LLM."""
  hf, path = read_config_json(directory, "BLIP-2/MIM")
  vision, qformer_cfg, llm_width = blip2.configs_from_hf(
      hf, str(path), vision_overrides=vision_overrides, qformer_overrides=qformer_overrides)
  llm_cfg = llama.config_from_hf(hf.get("text_config") or {}, f"{path} text_config", **(llm_overrides or {}))
  reader = CheckpointReader(directory)
  params = {
      "image_encoder": blip2.load_image_encoder_params(reader, vision, qformer_cfg, llm_width, with_vision=with_vision),
      "llm": llama.load_llama_params(reader, llm_cfg, "language_model."),
  }
  medium = MediumConfig()
  if (Path(directory) / MEDIUM_CONFIG).is_file():
    medium = MediumConfig.from_dict(read_json(Path(directory) / MEDIUM_CONFIG, "the export's image medium config"))
    params["image_medium"] = _load_medium(Path(directory) / MEDIUM_WEIGHTS)
  return MIMConfig(llm_cfg, vision, qformer_cfg, medium), params


def _save_medium(directory: Path, cfg: MIMConfig, params: Mapping, np_dtype) -> None:
  if cfg.medium.kind != "qformer":
    return
  flat = traverse_util.flatten_dict(params["image_medium"], sep="/")
  write_safetensors(directory / MEDIUM_WEIGHTS, {k: np.asarray(v).astype(np_dtype) for k, v in flat.items()})
  (directory / MEDIUM_CONFIG).write_text(json.dumps(cfg.medium.to_dict(), indent=2))


def _load_medium(path: Path) -> dict:
  if not path.is_file():
    raise FileNotFoundError(f"{path.parent}/{MEDIUM_CONFIG} names a qformer image medium but {path.name} is missing; "
                            f"export the run again with python -m mim_jax.train.export")
  reader = SafetensorsFile(path)
  return traverse_util.unflatten_dict({name: reader.get(name) for name in reader.keys()}, sep="/")


def _tensors(cfg: MIMConfig, params: Mapping, dtype: np.dtype, projection_prefix: str,
             with_vision: bool = True) -> Iterator[tuple[str, np.ndarray]]:
  image_params = params["image_encoder"]
  if not with_vision:
    image_params = {k: v for k, v in image_params.items() if k != "vision"}
  return itertools.chain(
      blip2.image_encoder_tensors(cfg.vision, cfg.qformer, image_params, dtype, projection_prefix=projection_prefix),
      llama.hf_tensors(cfg.llm, params["llm"], dtype, "language_model."),
  )


def save_hf_mim(directory: str | os.PathLike, cfg: MIMConfig, params: Mapping, *, tokenizer, dtype: str = "bfloat16",
                max_shard_bytes: int = 5 * 2**30) -> Path:
  """Writes a directory that `transformers.Blip2ForConditionalGeneration.from_pretrained` loads, with the
  tokenizer (MIM's special tokens), MIM's chat template and the processor files `AutoProcessor` reads
  (convert/hf_processor.py says how transformers places the image tokens)."""
  if "vision" not in params["image_encoder"]:
    raise ValueError("params have no vision tower (trained on cached ViT features?); add the frozen ViT params "
                     "back, e.g. from the BLIP-2 checkpoint, before exporting a loadable model")
  np_dtype = llama.EXPORT_DTYPES[dtype]
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tokenizer.save_pretrained(directory)
  # For the tokenizer as users load it (transformers 5 rebuilds a legacy Llama tokenizer as a new one), and
  # before the weights are written, since it can refuse.
  template = chat_template(Tokenizer.load(directory), cfg.num_image_tokens)
  write_sharded(directory, _tensors(cfg, params, np_dtype, "language_projection."), max_shard_bytes)
  token_ids = llama.special_token_ids(tokenizer)
  config = {
      "architectures": ["Blip2ForConditionalGeneration"],
      "model_type": "blip-2",
      "vision_config": blip2.vision_config_to_hf(cfg.vision),
      "qformer_config": blip2.qformer_config_to_hf(cfg.qformer),
      "text_config": llama.config_to_hf(cfg.llm, dtype, token_ids),
      "num_query_tokens": cfg.num_image_tokens,
      "image_token_index": tokenizer.image_id,
      "use_decoder_only_language_model": True,
      "dtype": dtype,
      "torch_dtype": dtype,
  }
  (directory / "config.json").write_text(json.dumps(config, indent=2))
  _save_medium(directory, cfg, params, np_dtype)
  llama.write_generation_config(directory, token_ids)
  # Over the tokenizer's own chat_template.jinja, if it had one (Llama-2-chat's has a system prompt).
  write_processor_files(directory, template, image_size=cfg.vision.image_size)
  return directory


# --------------------------------------------------------------------------- TextBind's release format


def _read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint {path} not found")
  if path.suffix == ".safetensors":
    shard = SafetensorsFile(path)
    return {name: shard.get(name) for name in shard.keys()}
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"{path} is a PyTorch pickle; reading it needs torch (pip install torch), "
                      "or convert it to .safetensors first") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  state = state.get("state_dict", state) if isinstance(state, dict) else state
  return {name: (t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()) for name, t in state.items()}


def load_textbind(mim_path: str | os.PathLike, cfg: MIMConfig, vision_path: str | os.PathLike | None = None) -> dict:
  """Params from TextBind's MIM state dict (+ the separately saved vision model, if given).

  The state dict carries no config: `cfg` says the shapes (eva_vit_g + blip2
  Q-Former + llama2_7b with a 32003 vocabulary for the released model)."""
  reader = ArrayReader(_read_state_dict(mim_path), str(mim_path))
  image_params = blip2.load_image_encoder_params(reader, cfg.vision, cfg.qformer, cfg.llm.embed_dim,
                                                 with_vision=False, projection_prefix=TEXTBIND_PROJECTION)
  if vision_path is not None:
    arrays = _read_state_dict(vision_path)
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in arrays) else ""
    image_params["vision"] = blip2.load_vision_params(ArrayReader(arrays, str(vision_path)), cfg.vision, prefix)
  return {"image_encoder": image_params, "llm": llama.load_llama_params(reader, cfg.llm, "language_model.")}


def save_textbind(mim_path: str | os.PathLike, cfg: MIMConfig, params: Mapping, *,
                  vision_path: str | os.PathLike | None = None, dtype: str = "bfloat16") -> None:
  """Writes TextBind's layout; `.safetensors` without torch, `.pt`/`.bin` with torch.save."""
  if cfg.medium.kind != "language":
    raise ValueError("TextBind's release format has no image medium; export a qformer-medium run in the HF format")
  np_dtype = llama.EXPORT_DTYPES[dtype]
  _write_state_dict(mim_path, _tensors(cfg, params, np_dtype, TEXTBIND_PROJECTION, with_vision=False), dtype)
  if vision_path is not None:
    vision = blip2.vision_tensors(cfg.vision, params["image_encoder"]["vision"], np_dtype, prefix="")
    _write_state_dict(vision_path, vision, dtype)


def _write_state_dict(path: str | os.PathLike, tensors: Iterator[tuple[str, np.ndarray]], dtype: str) -> None:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix == ".safetensors":
    write_safetensors(path, dict(tensors))
    return
  import torch

  torch_dtype = getattr(torch, dtype)
  state = {name: torch.from_numpy(np.asarray(a, np.float32)).to(torch_dtype) for name, a in tensors}
  torch.save(state, path)
