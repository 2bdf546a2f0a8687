"""The Llama tokenizer with MIM's three special tokens.

`<image>`, `<start>`, `<end>` are appended as the next three ids (32000–32002
for Llama-2). Loading goes through `AutoTokenizer.from_pretrained(dir)` (in
transformers 5 constructing `LlamaTokenizer(vocab_file=…)` is silently empty).
BOS/EOS are never produced by `encode`: the chat template inserts them as ids.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

SPECIAL_TOKENS = ("<image>", "<start>", "<end>")


class Tokenizer:
  def __init__(self, hf_tokenizer, source: str = "<memory>"):
    self.hf = hf_tokenizer
    self.source = source
    missing = [t for t in SPECIAL_TOKENS if t not in hf_tokenizer.get_vocab()]
    if missing:
      if len(missing) != len(SPECIAL_TOKENS):
        raise ValueError(f"{source}: has some of {SPECIAL_TOKENS} but not {missing}; start from the base tokenizer")
      base = len(hf_tokenizer)
      hf_tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    else:
      base = hf_tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[0])
    ids = hf_tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    if ids != [base, base + 1, base + 2]:
      raise ValueError(f"{source}: special tokens {SPECIAL_TOKENS} have ids {ids}; expected {base}..{base + 2}")
    self.image_id, self.start_id, self.end_id = ids

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Tokenizer":
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
      raise FileNotFoundError(f"tokenizer directory {path} not found (expected tokenizer.model or tokenizer.json)")
    if not any((path / name).exists() for name in ("tokenizer.model", "tokenizer.json")):
      raise FileNotFoundError(f"{path} has neither tokenizer.model nor tokenizer.json")
    return cls(AutoTokenizer.from_pretrained(str(path)), str(path))

  @property
  def vocab_size(self) -> int:
    return len(self.hf)

  @property
  def bos_id(self) -> int:
    return self.hf.bos_token_id

  @property
  def eos_id(self) -> int:
    return self.hf.eos_token_id

  @property
  def pad_id(self) -> int | None:
    return self.hf.pad_token_id

  def encode(self, text: str) -> list[int]:
    return list(self.hf(text, add_special_tokens=False)["input_ids"])

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

  def save_pretrained(self, directory: str | os.PathLike) -> None:
    self.hf.save_pretrained(str(directory))


def train_sentencepiece(texts: Iterable[str], directory: str | os.PathLike, vocab_size: int = 512) -> Path:
  """Trains a small Llama-style (BPE, byte-fallback, <unk>=0 <s>=1 </s>=2)
  sentencepiece model and writes a directory `Tokenizer.load` reads."""
  import sentencepiece as spm

  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="bpe",
      unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, minloglevel=2, hard_vocab_limit=False,
  )
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "tokenizer.model").write_bytes(model.getvalue())
  config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
  (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
  return directory
