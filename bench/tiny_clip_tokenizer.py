"""A tiny CLIP tokenizer saved to disk, for the random diffusers pipelines the
diffusion tests and benchmarks build (real SD tokenizers are a download)."""
from __future__ import annotations

import json

import transformers


def _bytes_to_unicode() -> list[str]:
  """CLIP's printable stand-ins for the 256 byte values."""
  printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
  extra = iter(range(256, 512))
  return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def save_tiny_clip_tokenizer(directory, pad_token="<|endoftext|>"):
  """A byte-level CLIP BPE tokenizer with no merges: one token per byte (ids 0-511), then the two specials."""
  directory.mkdir(parents=True, exist_ok=True)
  chars = _bytes_to_unicode()
  vocab = {c: i for i, c in enumerate(chars)}
  vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
  vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
  (directory / "vocab.json").write_text(json.dumps(vocab))
  (directory / "merges.txt").write_text("#version: 0.2\n")
  tokenizer = transformers.CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"),
                                         pad_token=pad_token, model_max_length=77)
  tokenizer.save_pretrained(str(directory))
  return transformers.CLIPTokenizer.from_pretrained(str(directory))
