"""The `qformer` image medium's regression targets: the SD text encoder's
embeddings of each assistant image's caption (spec §2 ablation, GILL's
objective), computed on device every step from the caption ids the input
pipeline ships (b, K, 77 int32 instead of b, K, 77, 1024 floats).

The encoder is frozen and read from the SD pipeline directory the medium will
render with (`medium_targets`: its `tokenizer/` and `text_encoder/`), so the
targets are exactly the context that pipeline's UNet reads (SD 1.x/2.x: the
encoder's final hidden states, infer/sd_text_conditioning.py). Its
weights are not part of the train state: they never change, and a resume
reads them again from the same directory.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mim_jax.convert.diffusers import component_dir, read_model_index
from mim_jax.convert.sd_text_encoder import TextEncoder
from mim_jax.data.pipeline import CaptionTokenizer
from mim_jax.models.clip import ClipTextTower
from mim_jax.models.image_medium import MediumConfig


class MediumTargets:
  """`tokenizer` for the input pipeline; `__call__(caption_ids_bkl)` → (b, K, L, D) on the batch's sharding."""

  def __init__(self, sd_dir: str, medium: MediumConfig, mesh: Mesh, batch_sharding: NamedSharding):
    if not sd_dir:
      raise ValueError("the qformer image medium regresses onto an SD text encoder's caption embeddings; set "
                       "--config.medium_targets=<diffusers SD 1.x/2.x directory> (the pipeline it will render with)")
    index = read_model_index(sd_dir)
    if "text_encoder_2" in index:
      raise ValueError(f"{sd_dir} is an SDXL pipeline (it has text_encoder_2); the qformer medium writes one "
                       f"encoder's context, as SD 1.x/2.x read it: give an SD 1.x/2.x directory")
    encoder = TextEncoder.load(component_dir(sd_dir, "tokenizer", index), component_dir(sd_dir, "text_encoder", index),
                               medium.dtype)
    config, length = encoder.config, encoder.max_length
    if (length, config.embed_dim) != (medium.cond_length, medium.cond_dim):
      raise ValueError(f"{sd_dir}'s text encoder writes ({length}, {config.embed_dim}) per caption but "
                       f"model.medium has cond_length {medium.cond_length}, cond_dim {medium.cond_dim}; set "
                       f"--config.model.medium.cond_length={length} --config.model.medium.cond_dim={config.embed_dim}")
    self.tokenizer = CaptionTokenizer(encoder.tokenizer, length)
    replicated = NamedSharding(mesh, PartitionSpec())
    # Through host numpy, as train/init.place does: a global sharding may span other processes' devices.
    self.params = jax.tree.map(lambda x: jax.device_put(np.asarray(x), replicated), encoder.params)
    tower = ClipTextTower(config)

    def encode(params, ids_bkl):
      b, k, length = ids_bkl.shape
      out = tower.apply({"params": params}, ids_bkl.reshape(b * k, length))
      return out.last_hidden_state.astype(jnp.float32).reshape(b, k, length, -1)

    self._encode = jax.jit(encode, in_shardings=(replicated, batch_sharding), out_shardings=batch_sharding)

  def __call__(self, caption_ids_bkl: jax.Array) -> jax.Array:
    return self._encode(self.params, caption_ids_bkl)
