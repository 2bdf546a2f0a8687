"""Llama (1/2/3) decoder in Flax Linen, numerically equal to transformers' LlamaForCausalLM.

Positions and the attention mask are explicit inputs so that MIM can feed
image embeddings and tree-masked caption branches through the same model.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models.llama_config import LlamaConfig
from mim_jax.nn.attention import dot_product_attention
from mim_jax.nn.kv_cache import KVCache
from mim_jax.nn.layers import RMSNorm, SwiGLU, dense_param
from mim_jax.nn.remat import remat_layer
from mim_jax.nn.rope import apply_rope, inverse_frequencies
from mim_jax.nn.sharding import constrain

class Attention(nn.Module):
  config: LlamaConfig

  @nn.compact
  def __call__(self, x_btd, positions_bt, mask_bts, kv, cache_index):
    cfg = self.config
    d, n, k, h = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    pd, cd = cfg.weight_dtype, cfg.compute_dtype
    q_dnh = dense_param(self, "q_kernel", (d, n, h), ("embed", "heads", "head_dim"), pd, d)
    k_dkh = dense_param(self, "k_kernel", (d, k, h), ("embed", "kv_heads", "head_dim"), pd, d)
    v_dkh = dense_param(self, "v_kernel", (d, k, h), ("embed", "kv_heads", "head_dim"), pd, d)
    o_nhd = dense_param(self, "o_kernel", (n, h, d), ("heads", "head_dim", "embed"), pd, n * h)

    q_btnh = jnp.einsum("btd,dnh->btnh", x_btd, q_dnh.astype(cd))
    k_btkh = jnp.einsum("btd,dkh->btkh", x_btd, k_dkh.astype(cd))
    v_btkh = jnp.einsum("btd,dkh->btkh", x_btd, v_dkh.astype(cd))
    inv_freq = inverse_frequencies(h, **cfg.rope_kwargs())
    q_btnh = constrain(apply_rope(q_btnh, positions_bt, inv_freq), ("batch", "length", "act_heads", "head_dim"))
    k_btkh = constrain(apply_rope(k_btkh, positions_bt, inv_freq), ("batch", "length", "act_kv_heads", "head_dim"))
    v_btkh = constrain(v_btkh, ("batch", "length", "act_kv_heads", "head_dim"))

    if kv is not None:
      k_cache_bskh, v_cache_bskh = kv
      start = (0, cache_index, 0, 0)
      k_btkh = jax.lax.dynamic_update_slice(k_cache_bskh, k_btkh.astype(k_cache_bskh.dtype), start)
      v_btkh = jax.lax.dynamic_update_slice(v_cache_bskh, v_btkh.astype(v_cache_bskh.dtype), start)
      kv = (k_btkh, v_btkh)
      k_btkh, v_btkh = k_btkh.astype(cd), v_btkh.astype(cd)

    out_btnh = dot_product_attention(q_btnh, k_btkh, v_btkh, mask_bts, impl=cfg.attention_impl)
    return jnp.einsum("btnh,nhd->btd", out_btnh, o_nhd.astype(cd)), kv


class DecoderLayer(nn.Module):
  config: LlamaConfig

  @nn.compact
  def __call__(self, x_btd, positions_bt, mask_bts, kv, cache_index):
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.weight_dtype, name=name)
    attn_out, kv = Attention(cfg, name="attn")(norm("attn_norm")(x_btd), positions_bt, mask_bts, kv, cache_index)
    x_btd = x_btd + attn_out
    x_btd = x_btd + SwiGLU(cfg.mlp_dim, cfg.compute_dtype, cfg.weight_dtype, name="mlp")(norm("mlp_norm")(x_btd))
    return constrain(x_btd, ("batch", "length", "act_embed")), kv


class Llama(nn.Module):
  """Token (or given) embeddings → decoder stack → final norm → logits (float32)."""

  config: LlamaConfig

  def setup(self):
    cfg = self.config
    embed_init = nn.initializers.normal(stddev=cfg.init_std)
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(embed_init, ("vocab", "embed")),
        (cfg.vocab_size, cfg.embed_dim), cfg.weight_dtype,
    )
    layer = remat_layer(DecoderLayer, cfg.remat_policy, cfg.scan_layers)
    if cfg.scan_layers:
      self.layers = nn.scan(
          layer,
          variable_axes={"params": 0},
          split_rngs={"params": True},
          in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
          length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )(cfg, name="layers")
    else:
      self.layers = [layer(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
    self.final_norm = RMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.weight_dtype)
    if not cfg.tie_embeddings:
      self.lm_head = self.param(
          "lm_head", nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("embed", "vocab")),
          (cfg.embed_dim, cfg.vocab_size), cfg.weight_dtype,
      )

  def embed(self, tokens_bt: jax.Array) -> jax.Array:
    embeds_btd = jnp.take(self.embedding, tokens_bt, axis=0).astype(self.config.compute_dtype)
    return constrain(embeds_btd, ("batch", "length", "act_embed"))

  def __call__(
      self,
      tokens_bt: jax.Array | None = None,
      positions_bt: jax.Array | None = None,
      mask_bts: jax.Array | None = None,
      *,
      embeds_btd: jax.Array | None = None,
      valid_bt: jax.Array | None = None,
      cache: KVCache | None = None,
      return_hidden: bool = False,
  ):
    """Returns float32 logits (b, t, vocab), then the final-normed hidden states
    (b, t, d) when `return_hidden`, then the updated cache when one is given.

    Without a cache, `mask_bts` defaults to causal-by-index over valid tokens.
    With a cache, the new tokens are written at `cache.length`; the default mask
    lets each see the valid cached slots and the new tokens up to itself, and a
    given `mask_bts` (b, t, max_length) is combined with it.
    """
    cfg = self.config
    x_btd = self.embed(tokens_bt) if embeds_btd is None else embeds_btd.astype(cfg.compute_dtype)
    b, t = x_btd.shape[:2]
    if positions_bt is None:
      positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if valid_bt is None:
      valid_bt = jnp.ones((b, t), bool)

    if cache is None:
      default_bts = jnp.tril(jnp.ones((t, t), bool))[None] & valid_bt[:, None, :]
      kv, cache_index = None, None
    else:
      default_bts, new_valid_bs = cache.attention_mask(valid_bt)
      kv, cache_index = (cache.k_lbskh, cache.v_lbskh), cache.length
    mask_bts = default_bts if mask_bts is None else mask_bts & default_bts

    x_btd, kv = self._run_layers(x_btd, positions_bt, mask_bts, kv, cache_index)
    x_btd = self.final_norm(x_btd)
    head_dv = self.embedding.T if cfg.tie_embeddings else self.lm_head
    logits_btv = jnp.einsum(
        "btd,dv->btv", x_btd, head_dv.astype(cfg.compute_dtype), preferred_element_type=jnp.float32
    )
    logits_btv = constrain(logits_btv, ("batch", "length", "act_vocab"))
    outputs = (logits_btv, x_btd) if return_hidden else (logits_btv,)
    if cache is not None:
      outputs += (cache.replace(k_lbskh=kv[0], v_lbskh=kv[1], valid_bs=new_valid_bs, length=cache.length + t),)
    return outputs if len(outputs) > 1 else logits_btv

  def _run_layers(self, x_btd, positions_bt, mask_bts, kv, cache_index):
    if self.config.scan_layers:
      return self.layers(x_btd, positions_bt, mask_bts, kv, cache_index)
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      kv_i = None if kv is None else (kv[0][i], kv[1][i])
      x_btd, kv_i = layer(x_btd, positions_bt, mask_bts, kv_i, cache_index)
      if kv_i is not None:
        new_k.append(kv_i[0])
        new_v.append(kv_i[1])
    return x_btd, (None if kv is None else (jnp.stack(new_k), jnp.stack(new_v)))

  def init_cache(self, batch: int, max_length: int, dtype=None) -> KVCache:
    cfg = self.config
    return KVCache.create(cfg.num_layers, batch, max_length, cfg.num_kv_heads, cfg.head_dim,
                          dtype or cfg.compute_dtype)


def _init_fn(cfg: LlamaConfig):
  model = Llama(cfg)
  return lambda rng: model.init(rng, jnp.zeros((1, 1), jnp.int32))["params"]


def abstract_boxed_params(cfg: LlamaConfig):
  """Param ShapeDtypeStructs still wrapped in their logical-axis boxes."""
  return jax.eval_shape(_init_fn(cfg), jax.random.key(0))


def abstract_params(cfg: LlamaConfig):
  return nn.unbox(abstract_boxed_params(cfg))


def init_params(cfg: LlamaConfig, rng: jax.Array):
  """Random params as a plain nested dict (unsharded; see sharding.sharded_init)."""
  return nn.unbox(_init_fn(cfg)(rng))


def boxed_init_fn(cfg: LlamaConfig):
  """rng -> boxed params, for `sharded_init`."""
  return _init_fn(cfg)
