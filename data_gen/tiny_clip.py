"""A tiny random CLIP checkpoint for offline smoke runs of the pipeline.

`python -m data_gen make-tiny-clip DIR` (and `run` without `--clip`) saves a
transformers `CLIPModel` with random weights and a character-level CLIP
tokenizer to DIR, in the same layout as a real checkpoint
(config.json + safetensors + tokenizer files), so embed loads it through the
same code path as openai/clip-vit-large-patch14. Its scores mean nothing:
runs that use it turn the score filter off. Needs torch (requirements-dev).
"""
from __future__ import annotations

import string
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def character_vocab() -> dict[str, int]:
  """Each lowercase letter and digit, alone and as a word end (`x</w>`),
  after the two special tokens; any other character reads as EOS (unknown)."""
  characters = string.ascii_lowercase + string.digits
  tokens = [BOS, EOS] + list(characters) + [c + "</w>" for c in characters]
  return {token: index for index, token in enumerate(tokens)}


def save_tiny_clip(directory: str | Path, *, seed: int = 0) -> Path:
  import torch
  from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

  directory = Path(directory)
  vocab = character_vocab()
  torch.manual_seed(seed)
  config = CLIPConfig(
      text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=128, bos_token_id=vocab[BOS],
                       eos_token_id=vocab[EOS], pad_token_id=vocab[EOS]),
      vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4),
      projection_dim=16)
  CLIPModel(config).eval().save_pretrained(directory)
  CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(directory)
  return directory
