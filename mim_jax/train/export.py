r"""Exports a training run's params for inference and conversion.

  python -m mim_jax.train.export --workdir /tmp/mim_stage2_tiny --out /tmp/mim_hf
  python -m mim_jax.train.export --workdir gs://B/runs/stage2 --out mim.safetensors --format textbind \
      --vision_out vision.safetensors --step 15025

Reads only the `params` and `meta` items of the checkpoint (never the optimizer
state), rebuilds the model config the run recorded, and writes a Hugging Face
Blip2ForConditionalGeneration directory (`hf`, with the run's tokenizer) or
TextBind's state-dict layout (`textbind`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import jax
from etils import epath

from mim_jax.convert.llama import save_hf_llama
from mim_jax.convert.mim import save_hf_mim, save_textbind
from mim_jax.data.tokenizer import Tokenizer
from mim_jax.models.llama_config import LlamaConfig
from mim_jax.models.mim import MIMConfig
from mim_jax.train.checkpoint import restore_params

FORMATS = ("hf", "textbind")


def run_config(meta: dict) -> MIMConfig | LlamaConfig:
  model = meta["model_config"]
  if "llm" not in model:
    return LlamaConfig.from_dict(model)
  return MIMConfig.from_dict(model)


def run_tokenizer(workdir: epath.Path, meta: dict) -> Tokenizer:
  """The tokenizer the run trained with: config.tokenizer, or the one it trained in its workdir."""
  path = meta["config"].get("tokenizer") or str(workdir / "tokenizer")
  return Tokenizer.load(path)


def export(workdir: str, out: str, *, fmt: str = "hf", step: int | None = None, dtype: str = "bfloat16",
           vision_out: str | None = None, max_shard_bytes: int = 5 * 2**30) -> Path:
  """A MIM run → `hf` (Blip2 layout) or `textbind`; a Llama run → a HF LlamaForCausalLM directory (`hf`)."""
  if fmt not in FORMATS:
    raise ValueError(f"format {fmt!r} is not one of {FORMATS}")
  workdir = epath.Path(workdir)
  params, meta = restore_params(workdir / "checkpoints", step)
  params = jax.device_get(params)
  cfg = run_config(meta)
  if isinstance(cfg, LlamaConfig):
    if fmt != "hf":
      raise ValueError(f"this run trained a plain Llama, which exports as 'hf' only, not {fmt!r}")
    return save_hf_llama(out, cfg, params, tokenizer=run_tokenizer(workdir, meta), dtype=dtype,
                         max_shard_bytes=max_shard_bytes)
  if fmt == "hf":
    return save_hf_mim(out, cfg, params, tokenizer=run_tokenizer(workdir, meta), dtype=dtype)
  save_textbind(out, cfg, params, vision_path=vision_out, dtype=dtype)
  return Path(out)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="the training run's --workdir")
  parser.add_argument("--out", required=True, help="output directory (hf) or state-dict file (textbind)")
  parser.add_argument("--format", choices=FORMATS, default="hf")
  parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
  parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
  parser.add_argument("--vision_out", help="textbind: also write the ViT to this file, as TextBind ships it")
  args = parser.parse_args(argv)
  path = export(args.workdir, args.out, fmt=args.format, step=args.step, dtype=args.dtype, vision_out=args.vision_out)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
