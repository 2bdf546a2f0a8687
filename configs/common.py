"""Pieces every run config shares. `run_sections` gives every section a run
config has (mim_jax/config.py:SECTIONS), at its defaults; each config file
starts from it and changes what it needs."""
from __future__ import annotations

import ml_collections

from mim_jax.nn.sharding import DEFAULT_RULES


def mesh(**sizes) -> ml_collections.ConfigDict:
  """ICI sizes within a slice, DCN sizes across slices; -1 fills with what is left."""
  values = dict(ici_data=1, ici_fsdp=-1, ici_tensor=1, dcn_data=-1, dcn_fsdp=1, dcn_tensor=1)
  values.update(sizes)
  return ml_collections.ConfigDict(values)


def sharding_rules() -> tuple:
  return tuple((name, axes) for name, axes in DEFAULT_RULES)


def optimizer(**overrides) -> ml_collections.ConfigDict:
  """AdamW as in TextBind (spec §3): betas (0.9, 0.95), eps 1e-8, wd 1e-3, clip 1.0."""
  values = dict(learning_rate=1e-4, warmup_steps=100, b1=0.9, b2=0.95, eps=1e-8, weight_decay=1e-3,
                grad_clip=1.0, lr_multipliers=())  # ((param-path regex, LR factor), …): first match wins
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def data(data_dir: str = "", **sources: tuple[str, float]) -> ml_collections.ConfigDict:
  """`sources`: name=(path, weight); a relative path is under `data_dir`. Weights
  are sampling probabilities after normalisation (a dataset's size makes the
  mixture uniform over examples). MIM reads the sources; a text-only Llama
  reads `text_file` (one document per line; empty: the bundled sample), which
  is also the text a tokenizer is trained on when `tokenizer` is empty."""
  config = ml_collections.ConfigDict(dict(
      data_dir=data_dir, text_file="", max_images=8, shuffle_buffer=1024, num_parallel_calls=16,
      readers=0,  # input shards of the global batch (0: one per process); fix it to resume on other process counts
      caption_branches=True, branches_see_earlier_branches=False))
  config.sources = ml_collections.ConfigDict(
      {name: dict(path=path, weight=float(weight), split="train") for name, (path, weight) in sources.items()})
  return config


def checkpoint(**overrides) -> ml_collections.ConfigDict:
  """Every `every_steps`; keep the last `keep_last` and every `keep_every`-th step (0: none)."""
  values = dict(every_steps=1000, keep_last=3, keep_every=0, async_save=True)
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def init(**paths) -> ml_collections.ConfigDict:
  """Initial weights (mim_jax/train/init.py): at most one of mim / textbind, or llm and/or blip2."""
  values = dict(mim="", textbind="", vision="", llm="", blip2="")
  values.update(paths)
  return ml_collections.ConfigDict(values)


def train(**overrides) -> ml_collections.ConfigDict:
  values = dict(steps=1000, batch_size=64, seq_len=768, images_per_batch=192, grad_accum_steps=1, seed=0,
                log_every=10, dropout=True, reset_data_on_resume=False, peak_flops_per_device=0.0,
                medium_loss_weight=1.0)  # the qformer image medium's MSE term, next to the cross-entropy
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def export(**overrides) -> ml_collections.ConfigDict:
  """Hugging Face export (the quickstart's; `python -m mim_jax.train.export` takes flags)."""
  values = dict(dtype="bfloat16", max_shard_gb=5.0)
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def sample(**overrides) -> ml_collections.ConfigDict:
  """Sampling for the quickstart's continuation."""
  values = dict(max_new_tokens=64, temperature=0.0, top_p=1.0)
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def run_sections(model: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A run config with every section at its defaults."""
  config = ml_collections.ConfigDict()
  config.model = model
  config.tokenizer = ""  # a HF tokenizer directory; empty: a sentencepiece model trained on data.text_file (tiny runs)
  config.init = init()
  config.trainable = ()  # param-path regexes that train (MIM stages); empty: every param trains
  # The qformer image medium's targets: a diffusers SD 1.x/2.x directory (train/medium_targets.py).
  config.medium_targets = ""
  config.mesh = mesh()
  config.sharding_rules = sharding_rules()
  config.optimizer = optimizer()
  config.train = train()
  config.checkpoint = checkpoint()
  config.data = data_config
  config.export = export()
  config.sample = sample()
  return config
