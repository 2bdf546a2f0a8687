"""Tiny random HF models saved to disk, for loading through our real code; tiny MIMs for generation."""
from __future__ import annotations

import jax
import numpy as np
import torch
import transformers

from mim_jax.data.conversation import Conversation, Turn
from mim_jax.data.features import FeatureConfig, build_features
from mim_jax.data.tokenizer import Tokenizer, train_sentencepiece
from mim_jax.models.eva_vit import VisionConfig
from mim_jax.models.image_medium import MediumConfig
from mim_jax.models.llama_config import LlamaConfig
from mim_jax.models.mim import MIMConfig, init_params
from mim_jax.models.qformer import QFormerConfig

ROPE_CASES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
}


def tiny_hf_llama(directory, *, vocab=96, heads=4, kv_heads=4, tied=False, rope="default", seed=0,
                  layers=2, hidden=32, mlp=64, dtype=torch.float32):
  """Saves a random LlamaForCausalLM to `directory` and returns it (eval mode)."""
  torch.manual_seed(seed)
  config = transformers.LlamaConfig(
      vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
      rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=ROPE_CASES[rope], tie_word_embeddings=tied,
      bos_token_id=1, eos_token_id=2,
  )
  model = transformers.LlamaForCausalLM(config).eval()
  # Bigger-than-default weights make the parity test sensitive to small mistakes.
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0, 0.1 if p.ndim > 1 else 1.0)
  model = model.to(dtype)
  model.save_pretrained(directory)
  return model


# Distinct widths (ViT 40, Q-Former 32, LLM 24) so a swapped axis cannot pass by accident.
TINY_BLIP2 = dict(
    vision_config=dict(hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
                       image_size=42, patch_size=14),
    qformer_config=dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48),
    text_config=dict(model_type="llama", vocab_size=64, hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                     num_attention_heads=4, num_key_value_heads=4),
    num_query_tokens=4,
)


def randomize_blip2_(model, seed=0):
  """Bigger-than-default random weights; the ViT's key bias stays zero, as in every BLIP-2 release."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.normal_(0, 0.1 if p.ndim > 1 else 1.0)
      if name.endswith("self_attn.qkv.bias"):
        p[p.shape[0] // 3: 2 * p.shape[0] // 3] = 0
  return model.eval()


def tiny_hf_blip2(directory, seed=0):
  """Saves a random Blip2ForConditionalGeneration (Llama LLM) to `directory` and returns it."""
  model = randomize_blip2_(transformers.Blip2ForConditionalGeneration(transformers.Blip2Config(**TINY_BLIP2)), seed)
  model.save_pretrained(directory)
  return model


# A tiny MIM and its tokenizer, for generation and chat tests.
MIM_TEXT = [f"a photo of {n} {a} on a {b} and here is one more" for n in range(30)
            for a, b in [("cats", "sofa"), ("dogs", "chair"), ("birds", "fence")]]


def tiny_mim_tokenizer(directory):
  return Tokenizer.load(train_sentencepiece(MIM_TEXT, directory, vocab_size=300))


def tiny_mim_config(tokenizer, medium=None):
  """LLM width 32, 4 image tokens per image, 28-pixel images."""
  llm = LlamaConfig(vocab_size=tokenizer.vocab_size, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=8, mlp_dim=48, init_std=0.3)
  return MIMConfig(llm, VisionConfig.preset("tiny"), QFormerConfig.preset("tiny", init_std=0.3),
                   medium or MediumConfig())


def text_ids(tokenizer):
  """Four distinct text ids (d1, d2, t1, t2), none the prompt's last."""
  last = tokenizer.encode("[/INST]")[-1]
  ids = [i for i in dict.fromkeys(tokenizer.encode("cats sofa dogs chair")) if i != last]
  return ids[:4]


def last_prompt_token(tokenizer, cfg):
  """The id every generation prompt ends with (the end of `[/INST]`)."""
  prompt = Conversation((Turn("user", "a photo of cats"),))
  features = build_features(prompt, tokenizer, FeatureConfig(max_len=64, num_image_tokens=cfg.num_image_tokens,
                                                             caption_branches=False))
  return int(features.tokens[features.main_length - 1])


def bigram_mim_params(cfg, tokenizer, seed=0):
  """A random MIM whose next token is (almost only) a function of its input:
  [/INST] → <start> d1 d2 <end>; an image's embeddings → t1 t2 → <start>, or
  </s> when no image is left. Layers still add a little, so attention (and a
  wrong mask) would show in the cache."""
  d1, d2, t1, t2 = text_ids(tokenizer)
  ids = tokenizer
  chain = {last_prompt_token(tokenizer, cfg): ids.start_id, ids.start_id: d1, d1: d2, d2: ids.end_id,
           ids.image_id: t1, t1: t2, t2: ids.start_id}
  params = jax.device_get(init_params(cfg, jax.random.key(seed)))
  llm = params["llm"]
  members = sorted(chain)
  basis, _ = np.linalg.qr(np.random.RandomState(seed).randn(cfg.llm.embed_dim, len(members)))
  embedding = np.array(llm["embedding"])
  embedding[members] = basis.T
  head = np.zeros_like(llm["lm_head"])
  for current, following in chain.items():
    head[:, following] += 10 * embedding[current]
  head[:, ids.eos_id] += 5 * embedding[t2]  # second choice after t2
  llm["embedding"], llm["lm_head"] = embedding, head
  for layer, name in (("attn", "o_kernel"), ("mlp", "down_kernel")):
    llm["layers"][layer][name] = 0.03 * llm["layers"][layer][name]
  projection = params["image_encoder"]["projection"]
  projection["kernel"] = 0.03 * projection["kernel"]
  projection["bias"] = embedding[ids.image_id].copy()  # images read as `<image>`, plus a pixel-dependent bit
  return params
