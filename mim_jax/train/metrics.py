"""Training metrics: model FLOPs per step, MFU, TensorBoard scalars and a console line.

FLOP count (`step_flops`), per step, multiply-add = 2 FLOPs:
- A matmul with a weight of P params applied to n tokens costs 2·P·n forward.
  Backward costs the same again for the input gradient wherever something
  upstream trains, and the same again for the weight gradient if the weight
  trains. So a trained module costs 6·P·n, a frozen module inside the
  gradient path 4·P·n, and a frozen module before it (the ViT: its output is
  a stop_gradient) 2·P·n.
- Attention scores and values cost 4·T·S·d per layer and sequence forward
  (T queries, S keys, d = heads·head_dim), with the same backward factor as
  the layer's weights. Causal and tree (caption-branch) masks are counted as
  the full T×T the dense kernel computes: that is the work done, and PaLM's
  MFU convention counts it the same way.
- LLM tokens: every position of the fixed (batch, seq_len) shape, caption
  branches and padding included (they are positions the step computes).
  Images: the step's packed image budget, padding rows included.
- Embedding lookups, norms, softmax and the optimizer are left out (< 1 %).
MFU = FLOPs / step time / devices / the device's peak dense bf16 FLOP/s.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import jax

from mim_jax.models.llama_config import LlamaConfig
from mim_jax.models.mim import MIMConfig

log = logging.getLogger("mim_jax.train")

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator generation, from the vendors' datasheets: peak dense bf16 FLOP/s and HBM per chip."""
  topology: str  # libtpu's generation prefix of a topology name (launch/aot_compile.py); "" for GPUs
  device_kinds: tuple[str, ...]  # prefixes of jax's `device_kind`
  peak_bf16_flops: float
  hbm_bytes: int


CHIPS = (
    Chip("v4", ("TPU v4",), 275e12, 32 * GIB),
    Chip("v5e", ("TPU v5 lite", "TPU v5e"), 197e12, 16 * GIB),
    Chip("v5p", ("TPU v5p", "TPU v5"), 459e12, 95 * GIB),
    Chip("v6e", ("TPU v6 lite", "TPU v6e"), 918e12, 32 * GIB),
    Chip("", ("NVIDIA H100",), 989e12, 80 * GIB),
    Chip("", ("NVIDIA H200",), 989e12, 141 * GIB),
    Chip("", ("NVIDIA A100",), 312e12, 80 * GIB),
)


def peak_flops(device: jax.Device, override: float = 0.0) -> float | None:
  """The device's peak, `override` if positive, None when unknown (CPU)."""
  if override > 0:
    return override
  matches = [(len(prefix), chip) for chip in CHIPS for prefix in chip.device_kinds
             if device.device_kind.startswith(prefix)]
  return max(matches, key=lambda m: m[0])[1].peak_bf16_flops if matches else None


def _llama_matmul_params(cfg: LlamaConfig) -> tuple[int, int]:
  """(params in the layer matmuls, params in the LM head)."""
  d, h = cfg.embed_dim, cfg.head_dim
  attention = d * h * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
  mlp = 3 * d * cfg.mlp_dim
  return cfg.num_layers * (attention + mlp), d * cfg.vocab_size


def _factor(trains: bool, grad_flows: bool) -> int:
  return 6 if trains else (4 if grad_flows else 2)


def llm_flops(cfg: LlamaConfig, batch: int, seq_len: int, *, trains: bool, grad_flows: bool) -> float:
  layers, head = _llama_matmul_params(cfg)
  tokens = batch * seq_len
  attention = 4 * seq_len * seq_len * cfg.num_heads * cfg.head_dim * cfg.num_layers * batch
  return _factor(trains, grad_flows) / 2 * (2 * (layers + head) * tokens + attention)


def image_flops(cfg: MIMConfig, images: int, *, qformer_trains: bool) -> float:
  """ViT (forward only) + Q-Former + projection, for `images` images."""
  v, q = cfg.vision, cfg.qformer
  patches = (v.image_size // v.patch_size) ** 2 + 1
  vit_matmuls = v.num_layers * (4 * v.embed_dim ** 2 + 2 * v.embed_dim * v.mlp_dim) + 3 * v.patch_size ** 2 * v.embed_dim
  vit = 2 * vit_matmuls * patches + 4 * patches * patches * v.embed_dim * v.num_layers
  width, queries = q.embed_dim, q.num_queries
  cross = sum(q.has_cross_attention(i) for i in range(q.num_layers))
  # Per layer on the queries: self-attention q/k/v/out + FFN; cross layers add q/out on the
  # queries and k/v on the image patches.
  query_matmuls = q.num_layers * (4 * width ** 2 + 2 * width * q.mlp_dim) + cross * 2 * width ** 2
  qformer = (2 * (query_matmuls + width * cfg.llm.embed_dim) * queries + 2 * cross * 2 * q.encoder_dim * width * patches
             + 4 * queries * width * (q.num_layers * queries + cross * patches))
  return images * (vit + _factor(qformer_trains, True) / 2 * qformer)


def step_flops(cfg: LlamaConfig | MIMConfig, *, batch: int, seq_len: int, images: int, llm_trains: bool,
               qformer_trains: bool) -> float:
  if isinstance(cfg, LlamaConfig):
    return llm_flops(cfg, batch, seq_len, trains=True, grad_flows=True)
  return (llm_flops(cfg.llm, batch, seq_len, trains=llm_trains, grad_flows=qformer_trains)
          + image_flops(cfg, images, qformer_trains=qformer_trains))


class MetricsLogger:
  """Console line (rate, ETA) and TensorBoard scalars, on process 0 only.

  The rate counts from `start_clock()`, which the loop calls when a process's
  first step has finished: that step includes compiling (seconds to minutes),
  and an ETA from it would swing from hours to seconds by the next line. The
  line's s/step is the last window's; the ETA uses the average since the
  clock started, so a checkpoint save inside one window does not swing it
  either (saves recur, so the average is what the rest of the run will see)."""

  def __init__(self, workdir: Path, total_steps: int, flops_per_step: float, peak: float | None):
    self.total_steps, self.flops_per_step, self.peak = total_steps, flops_per_step, peak
    self.enabled = jax.process_index() == 0
    self._writer = None
    if self.enabled:
      import tensorflow as tf  # TensorBoard event files; tf is already the input pipeline's dependency
      self._tf = tf
      self._writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))
      if not peak:
        log.info("MFU is not shown: no peak FLOP/s is known for %r; set --config.train.peak_flops_per_device=<FLOP/s> "
                 "to show it", jax.devices()[0].device_kind)
    self._last_time = self._started = None
    self._steps_timed = 0

  def start_clock(self) -> None:
    self._last_time = self._started = time.time()

  def log(self, step: int, scalars: dict[str, float], *, steps_done: int, tokens: float, images: float) -> None:
    """`scalars` of step `step`; `steps_done`, `tokens`, `images` since the previous call (or `start_clock`)."""
    if not self.enabled:
      return
    now = time.time()
    elapsed = now - self._last_time if self._last_time is not None else 0.0
    self._last_time = now
    rates, eta = {}, None
    if steps_done > 0 and elapsed > 0:
      self._steps_timed += steps_done
      eta = (now - self._started) / self._steps_timed * (self.total_steps - step)
      step_time = elapsed / steps_done
      rates = {"step_time_s": step_time, "tokens_per_s": tokens / elapsed, "images_per_s": images / elapsed,
               "tflops_per_device": self.flops_per_step / step_time / jax.device_count() / 1e12}
      if self.peak:
        rates["mfu"] = rates["tflops_per_device"] * 1e12 / self.peak
    values = {**scalars, **rates}
    with self._writer.as_default(step=step):
      for name, value in values.items():
        self._tf.summary.scalar(name, value)
    self._writer.flush()
    terms = ", ".join(f"{k.removesuffix('_loss')} {v:.4f}" for k, v in scalars.items() if k.endswith("_loss"))
    log.info("step %d/%d loss %.4f%s lr %.3g grad_norm %.3f | %s", step, self.total_steps, values["loss"],
             f" ({terms})" if terms else "", values["learning_rate"], values["grad_norm"], _rates(rates, eta))

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def _rates(rates: dict[str, float], eta: float | None) -> str:
  if not rates:
    return "first step (includes compiling; no rate yet)"
  mfu = f" MFU {rates['mfu']:.1%}" if "mfu" in rates else ""
  return (f"{rates['step_time_s']:.2f}s/step {rates['tokens_per_s']:.0f} tok/s {rates['images_per_s']:.1f} img/s "
          f"{rates['tflops_per_device']:.2f} TFLOP/s/dev{mfu} | ETA {_duration(eta)}")


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
