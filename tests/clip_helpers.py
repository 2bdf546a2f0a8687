"""Tiny random HF CLIP models and a tiny CLIP tokenizer, saved to disk for loading through our code."""
from __future__ import annotations

import string

import torch
import transformers

# Distinct widths (vision 40, text 24, joint 16) so a swapped axis cannot pass by accident; the two towers
# use the two activations.
TINY_VISION = dict(hidden_size=40, intermediate_size=56, num_hidden_layers=3, num_attention_heads=4, image_size=42,
                   patch_size=14, hidden_act="quick_gelu")
TINY_TEXT = dict(vocab_size=99, hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                 max_position_embeddings=16, hidden_act="gelu")
# eos_token_id 2 selects HF's legacy pooling (at the largest token id), as in openai/clip-vit-large-patch14.
LEGACY_EOS = 2


def randomize_(model, seed=0):
  """Bigger-than-default random weights, so that parity tests notice small mistakes."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0, 0.1 if p.ndim > 1 else 1.0)
  return model.eval()


def tiny_clip_tokenizer():
  """A CLIPTokenizer over lowercase letters, with a few merges; the end token has the largest id (57)."""
  vocab = {c: i for i, c in enumerate(string.ascii_lowercase)}
  vocab.update({f"{c}</w>": 26 + i for i, c in enumerate(string.ascii_lowercase)})
  merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>")]
  for merged in ("th", "the</w>", "an", "and</w>", "<|startoftext|>", "<|endoftext|>"):
    vocab[merged] = len(vocab)
  return transformers.CLIPTokenizer(vocab=vocab, merges=merges)


def tiny_hf_clip(directory, seed=0, projection_dim=16):
  """Saves a random CLIPModel (legacy end-token rule) and the tiny tokenizer to `directory`; returns the model."""
  text_config = dict(TINY_TEXT, eos_token_id=LEGACY_EOS, bos_token_id=56, pad_token_id=57)  # the tokenizer's
  config = transformers.CLIPConfig(text_config=text_config, vision_config=TINY_VISION, projection_dim=projection_dim)
  model = randomize_(transformers.CLIPModel(config), seed)
  model.save_pretrained(directory)
  tiny_clip_tokenizer().save_pretrained(directory)
  return model
