"""Our Flax Llama vs transformers' PyTorch LlamaForCausalLM on CPU, same weights, same run.

  python bench/llama_bench.py            # bench_130m: train 8x512, decode 32+64 (~10 min on 2 quiet cores)
  python bench/llama_bench.py --quick    # 2 layers, train 2x64, 8 new tokens (smoke run)

Prints markdown tables for BENCHMARKS.md: train step and greedy decode side by
side with ratios, matmul and memory-bandwidth rooflines measured in the same
process, and a breakdown of where our train step's time goes. Both frameworks
get every core (torch.set_num_threads(nproc); XLA's CPU thread pool is sized to
the cores), so run it on a quiet machine: the "CPU util" column shows how many
cores a measurement really got.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tempfile
import time
from pathlib import Path

# One CPU device: the tests' 8 emulated devices would split the cores and the batch.
os.environ["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from configs import common  # noqa: E402
from mim_jax.convert.llama import load_hf_llama  # noqa: E402
from mim_jax.infer.generate import SamplingConfig, generate  # noqa: E402
from mim_jax.models.llama import DecoderLayer, Llama  # noqa: E402
from mim_jax.models.llama_config import LlamaConfig  # noqa: E402
from mim_jax.nn.attention import dot_product_attention  # noqa: E402
from mim_jax.nn.layers import SwiGLU  # noqa: E402
from mim_jax.train.loss import cross_entropy, lm_loss  # noqa: E402
from mim_jax.train.step import make_train_step  # noqa: E402
from mim_jax.train.optimizer import make_optimizer  # noqa: E402
from bench.common import Timing, cpu_seconds, machine, measure, ms, progress, row  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sizes:
  layers: int
  batch: int
  seq: int
  prompt: int
  new_tokens: int
  train_repeats: int  # the train step dominates the run time: few repeats
  repeats: int
  matmul_n: int
  copy_mb: int


FULL = Sizes(layers=12, batch=8, seq=512, prompt=32, new_tokens=64, train_repeats=2, repeats=2, matmul_n=2048,
             copy_mb=512)
QUICK = Sizes(layers=2, batch=2, seq=64, prompt=32, new_tokens=8, train_repeats=2, repeats=2, matmul_n=512,
              copy_mb=64)
DECODE_BATCHES = (1, 8)


# --------------------------------------------------------------------------- timing


# --------------------------------------------------------------------------- models and work counts


def preset(layers: int) -> LlamaConfig:
  return LlamaConfig.preset("bench_130m", num_layers=layers)


def save_hf_model(cfg: LlamaConfig, directory: str) -> transformers.LlamaForCausalLM:
  hf_config = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
      max_position_embeddings=cfg.max_positions, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
      tie_word_embeddings=False,
  )
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(hf_config).float()
  model.save_pretrained(directory)
  return model


def load_ours(directory: str, expected: LlamaConfig, scan: bool):
  """Our params through the real HF loader; the config must be the preset's."""
  cfg, params = load_hf_llama(directory, scan_layers=scan, remat_policy="none")
  want = dataclasses.replace(expected, scan_layers=scan)
  if cfg != want:
    diff = {k: (v, getattr(want, k)) for k, v in cfg.to_dict().items() if v != getattr(want, k)}
    raise SystemExit(f"loaded config differs from the bench_130m preset (loaded, preset): {diff}")
  return cfg, jax.device_put(params)


def matmul_params(cfg: LlamaConfig) -> int:
  """Weights that take part in matmuls: every layer's projections and the lm_head (not the embedding gather)."""
  d, n, k, h, f = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  return cfg.num_layers * (d * (n + 2 * k) * h + n * h * d + 3 * d * f) + d * cfg.vocab_size


def train_flops(cfg: LlamaConfig, b: int, t: int) -> float:
  """6 * matmul params * tokens, plus attention QK^T and AV (2 matmuls * 2 flops * b*t*t*n*h per layer
  forward, x3 for forward+backward) over the full t*t square, as our dense attention computes it (PaLM's
  convention); causal-aware kernels do about half of that part."""
  attention = 3 * 2 * 2 * b * t * t * cfg.num_heads * cfg.head_dim * cfg.num_layers
  return 6.0 * matmul_params(cfg) * b * t + attention


def decode_weight_bytes(cfg: LlamaConfig, params) -> int:
  """Bytes read per decoded token at batch 1: every param except the embedding table (one row is read)."""
  total = sum(x.nbytes for x in jax.tree.leaves(params))
  return total - params["embedding"].nbytes


# --------------------------------------------------------------------------- rooflines


def matmul_rates(n: int, repeats: int) -> tuple[float, float]:
  """GFLOP/s of an n^3 fp32 matmul: (jnp jitted, torch)."""
  a_nn = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
  matmul = jax.jit(lambda x, y: x @ y)
  ours = measure(lambda: matmul(a_nn, a_nn).block_until_ready(), repeats + 2)
  t_nn = torch.from_numpy(np.array(a_nn))
  theirs = measure(lambda: t_nn @ t_nn, repeats + 2)
  return 2 * n**3 / ours.median_s / 1e9, 2 * n**3 / theirs.median_s / 1e9


def copy_bandwidth(megabytes: int, repeats: int) -> float:
  """GB/s of bytes read + written by a numpy copy (one thread, as a batch-1 decode mostly is)."""
  src = np.ones(megabytes * 2**20 // 4, np.float32)
  dst = np.empty_like(src)
  timing = measure(lambda: np.copyto(dst, src), repeats + 2)
  return 2 * src.nbytes / timing.median_s / 1e9


# --------------------------------------------------------------------------- train step


def make_batch(cfg: LlamaConfig, b: int, t: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(1)
  tokens = rng.integers(3, cfg.vocab_size, (b, t + 1), dtype=np.int32)
  return {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((b, t), np.float32)}


def hlo_summary(compiled) -> dict:
  """XLA's own counts for the compiled step, and the bytes its relayout copies write, by source op.

  A transpose is materialised by a `copy` (alone or as a fusion root), so counting copies counts each
  relayout once. A scanned layer body appears once in the text, whatever its trip count.
  """
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  by_source: dict[str, int] = {}
  for dtype, dims, rest in re.findall(r"= (f32|s32|pred)\[([\d,]*)\]\{[^}]*\} copy\((.*)", compiled.as_text()):
    size = int(np.prod([int(x) for x in dims.split(",") if x] or [1])) * (1 if dtype == "pred" else 4)
    op = re.search(r'op_name="([^"]*)"', rest)
    source = "/".join(re.sub(r"layers_\d+", "layers_i", op.group(1)).split("/")[-3:]) if op else "(unnamed)"
    by_source[source] = by_source.get(source, 0) + size
  top = sorted(by_source.items(), key=lambda kv: -kv[1])[:4]
  return {"xla_flops": cost.get("flops", float("nan")), "xla_bytes": cost.get("bytes accessed", float("nan")),
          "copy_bytes": sum(by_source.values()), "top_copies": top}


def ours_train(cfg: LlamaConfig, params, batch, repeats: int):
  """(timing, compile seconds, first loss, hlo summary) of the jitted fwd+bwd+AdamW step."""
  optimizer = make_optimizer(common.optimizer(), total_steps=1000)
  state = {"params": params, "opt_state": jax.jit(optimizer.init)(params), "step": jnp.zeros((), jnp.int32)}
  step = jax.jit(make_train_step(Llama(cfg), optimizer), donate_argnums=0)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  losses = []

  def run():
    nonlocal state
    state, metrics = compiled(state, batch)
    losses.append(float(metrics["loss"]))

  return measure(run, repeats), compile_s, losses[0], hlo_summary(compiled)


def torch_train(model, batch, repeats: int):
  """(timing, first loss) of forward + cross-entropy + backward + clip + AdamW, as HF's labels= loss does.

  fused AdamW, as HF's Trainer picks: the default per-tensor loop takes 4x longer on CPU.
  """
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=1e-3, fused=True)
  tokens, targets = torch.from_numpy(batch["tokens"]).long(), torch.from_numpy(batch["targets"]).long()
  losses = []

  def run():
    logits = model(input_ids=tokens).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(loss.item())

  timing = measure(run, repeats)
  model.eval()
  return timing, losses[0]


def forward_only(cfg, params, model, batch, repeats: int) -> tuple[Timing, Timing]:
  """Loss forward without gradients: (ours, torch)."""
  fwd = jax.jit(lambda p, b: lm_loss(Llama(cfg), p, b)[0])
  ours = measure(lambda: fwd(params, batch).block_until_ready(), repeats)
  tokens, targets = torch.from_numpy(batch["tokens"]).long(), torch.from_numpy(batch["targets"]).long()

  def run_torch():
    with torch.no_grad():
      logits = model(input_ids=tokens).logits
      torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).item()

  return ours, measure(run_torch, repeats)


def breakdown(cfg: LlamaConfig, params, batch, repeats: int) -> dict[str, float]:
  """Seconds per train step spent in each part, each part jitted alone at the step's shapes (fwd+bwd)."""
  b, t = batch["tokens"].shape
  d, n, h, L = cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.num_layers
  layer_p = jax.tree.map(lambda x: x[0], params["layers"]) if cfg.scan_layers else params["layers_0"]
  rng = np.random.default_rng(2)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32))
  x_btd, cot_btd = normal(b, t, d), normal(b, t, d)
  positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  mask_bts = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))

  def vjp_time(f, *args) -> float:
    grads = jax.jit(lambda *a: jax.vjp(f, *a)[1](cot_btd))
    return measure(lambda: jax.block_until_ready(grads(*args)), repeats).median_s

  layer = DecoderLayer(cfg)
  layer_fn = lambda p, x: layer.apply({"params": p}, x, positions_bt, mask_bts, None, None)[0]
  mlp = SwiGLU(cfg.mlp_dim, cfg.compute_dtype, cfg.weight_dtype)
  mlp_fn = lambda p, x: mlp.apply({"params": p}, x)
  q_btnh = normal(b, t, n, h)
  attn_fn = lambda q, k, v: dot_product_attention(q, k, v, mask_bts).reshape(b, t, d)

  def head_loss(head_dv, x):
    logits_btv = jnp.einsum("btd,dv->btv", x, head_dv, preferred_element_type=jnp.float32)
    return cross_entropy(logits_btv, batch["targets"], batch["weights"])[0]

  head_grads = jax.jit(jax.grad(head_loss, argnums=(0, 1)))
  optimizer = make_optimizer(common.optimizer(), total_steps=1000)
  carry = (jax.tree.map(jnp.copy, params), jax.jit(optimizer.init)(params))

  def update(p, opt_state, grads):
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  update = jax.jit(update, donate_argnums=(0, 1))  # in place, as in the step

  def run_update():
    nonlocal carry
    carry = jax.block_until_ready(update(*carry, params))

  return {
      f"decoder layer x{L}": L * vjp_time(layer_fn, layer_p, x_btd),
      f"  attention core softmax(QK^T)V x{L}": L * vjp_time(attn_fn, q_btnh, q_btnh, q_btnh),
      f"  MLP (SwiGLU) x{L}": L * vjp_time(mlp_fn, layer_p["mlp"], x_btd),
      "lm_head + cross-entropy": measure(
          lambda: jax.block_until_ready(head_grads(params["lm_head"], x_btd)), repeats).median_s,
      "clip + AdamW update": measure(run_update, repeats).median_s,
  }


# --------------------------------------------------------------------------- decode


def prompts_for(cfg: LlamaConfig, b: int, t: int) -> np.ndarray:
  return np.random.default_rng(3 + b).integers(3, cfg.vocab_size, (b, t), dtype=np.int64)


def ours_decode(cfg, params, prompts_bt: np.ndarray, new_tokens: int, repeats: int):
  sampling = SamplingConfig(max_new_tokens=new_tokens, stop_ids=(-1,), pad_id=0)  # -1 is never sampled
  rows = prompts_bt.tolist()
  out = []
  timing = measure(lambda: out.append(generate(cfg, params, rows, sampling)), repeats)
  return timing, np.asarray(out[0])


def torch_decode(model, prompts_bt: np.ndarray, new_tokens: int, repeats: int):
  """HF generate, greedy, exactly `new_tokens` new tokens with its KV cache."""
  ids = torch.from_numpy(prompts_bt)
  out = []

  def run():
    with torch.inference_mode():
      out.append(model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0))

  timing = measure(run, repeats)
  return timing, out[0][:, prompts_bt.shape[1]:].numpy()


def logits_diff(cfg, params, model, prompts_bt: np.ndarray) -> float:
  ours = Llama(cfg).apply({"params": params}, jnp.asarray(prompts_bt, jnp.int32))
  with torch.no_grad():
    theirs = model(input_ids=torch.from_numpy(prompts_bt)).logits.numpy()
  return float(np.max(np.abs(np.asarray(ours) - theirs)))


# --------------------------------------------------------------------------- report


@dataclasses.dataclass
class Results:
  sizes: Sizes
  base: LlamaConfig
  torch_attention: dict  # "train"/"decode" -> transformers attn_implementation
  matmul: dict = dataclasses.field(default_factory=dict)  # "ours"/"torch" -> GFLOP/s
  bandwidth: float = 0.0
  train: dict = dataclasses.field(default_factory=dict)  # scan_layers -> (Timing, compile s, first loss, hlo)
  torch_train: tuple = ()  # (Timing, first loss)
  decode: dict = dataclasses.field(default_factory=dict)  # (scan_layers or "torch", batch) -> (Timing, tokens)
  logits_diff: float = 0.0
  forward: dict = dataclasses.field(default_factory=dict)  # "ours"/"torch" -> Timing
  parts: dict = dataclasses.field(default_factory=dict)
  weight_bytes: int = 0


# transformers' sdpa CPU kernel is several times slower than eager for one-token decode steps here
# (3.7 vs 15.5 tok/s at batch 1), and faster for training, so "auto" gives the reference its better one.
TORCH_ATTENTION = {"auto": {"train": "sdpa", "decode": "eager"}, "sdpa": {"train": "sdpa", "decode": "sdpa"},
                   "eager": {"train": "eager", "decode": "eager"}}
TRAIN_LAYOUTS = {"unrolled": (False,), "scan": (True,), "both": (True, False)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
  parser.add_argument("--train-layouts", default="unrolled", choices=tuple(TRAIN_LAYOUTS),
                      help="scan_layers value(s) to time the train step with; unrolled was the faster on CPU "
                           "(decode always runs both)")
  parser.add_argument("--torch-attention", default="auto", choices=tuple(TORCH_ATTENTION),
                      help="transformers attention implementation; auto = sdpa to train, eager to decode "
                           "(ours is the dense 'xla' einsum: the only one on CPU)")
  parser.add_argument("--new-tokens", type=int, help="decode length (default 64, --quick 8)")
  parser.add_argument("--train-repeats", type=int, help="timed train steps after the warm-up one (default 2)")
  args = parser.parse_args()
  sizes = QUICK if args.quick else FULL
  sizes = dataclasses.replace(sizes, new_tokens=args.new_tokens or sizes.new_tokens,
                              train_repeats=args.train_repeats or sizes.train_repeats)
  torch.set_num_threads(os.cpu_count())
  transformers.utils.logging.disable_progress_bar()
  wall0, cpu0 = time.perf_counter(), cpu_seconds()
  print(f"machine: {machine()}", flush=True)
  if jax.device_count() != 1:
    raise SystemExit(f"expected one CPU device, got {jax.device_count()}: check XLA_FLAGS")

  base = preset(sizes.layers)
  res = Results(sizes, base, TORCH_ATTENTION[args.torch_attention])
  res.matmul["ours"], res.matmul["torch"] = matmul_rates(sizes.matmul_n, sizes.repeats)
  res.bandwidth = copy_bandwidth(sizes.copy_mb, sizes.repeats)
  progress(f"rooflines: matmul {res.matmul['ours']:.1f} / {res.matmul['torch']:.1f} GFLOP/s (jax / torch), "
           f"copy {res.bandwidth:.1f} GB/s", wall0)
  batch = make_batch(base, sizes.batch, sizes.seq)
  with tempfile.TemporaryDirectory() as directory:
    model = save_hf_model(base, directory)
    # Decode and parity first: torch's train step changes its weights, and ours donates its params.
    model.set_attn_implementation(res.torch_attention["decode"])
    for b in DECODE_BATCHES:
      res.decode["torch", b] = torch_decode(model, prompts_for(base, b, sizes.prompt), sizes.new_tokens,
                                            sizes.repeats)
    progress("torch decode", wall0)
    for scan in (True, False):
      cfg, params = load_ours(directory, base, scan)
      diff = logits_diff(cfg, params, model, prompts_for(base, 8, sizes.prompt))
      res.logits_diff = max(res.logits_diff, diff)
      for b in DECODE_BATCHES:
        res.decode[scan, b] = ours_decode(cfg, params, prompts_for(base, b, sizes.prompt), sizes.new_tokens,
                                          sizes.repeats)
      progress(f"ours decode scan_layers={scan}", wall0)
      if scan in TRAIN_LAYOUTS[args.train_layouts]:
        res.train[scan] = ours_train(cfg, params, batch, sizes.train_repeats)
        progress(f"ours train scan_layers={scan}: {ms(res.train[scan][0].median_s)}", wall0)
      del params
    model.set_attn_implementation(res.torch_attention["train"])
    res.torch_train = torch_train(model, batch, sizes.train_repeats)
    progress(f"torch train: {ms(res.torch_train[0].median_s)}", wall0)
    cfg, params = load_ours(directory, base, fastest_layout(res))
  res.forward["ours"], res.forward["torch"] = forward_only(cfg, params, model, batch, 1)
  progress("forward only", wall0)
  res.parts = breakdown(cfg, params, batch, 1)
  res.weight_bytes = decode_weight_bytes(cfg, params)
  report(res, time.perf_counter() - wall0, cpu_seconds() - cpu0)


def fastest_layout(res: Results) -> bool:
  return min(res.train, key=lambda scan: res.train[scan][0].median_s)


def report(res: Results, wall_s: float, cpu_s: float) -> None:
  sizes, base = res.sizes, res.base
  b, t, n_new = sizes.batch, sizes.seq, sizes.new_tokens
  tokens, flops = b * t, train_flops(base, b, t)
  torch_timing, torch_loss = res.torch_train
  torch_s, fastest = torch_timing.median_s, fastest_layout(res)
  best = res.train[fastest][0].median_s
  quick = f" (--quick: {sizes.layers} layers)" if sizes.layers != FULL.layers else ""
  attention = res.torch_attention
  print(f"\n## Llama bench_130m{quick}: ours (JAX/Flax) vs transformers LlamaForCausalLM, fp32, same weights\n")
  print(f"Machine: {machine()}. Whole run {wall_s / 60:.1f} min wall, {cpu_s / 60:.1f} min CPU. PyTorch attention: "
        f"{attention['train']} to train, {attention['decode']} to decode; ours: dense einsum ('xla').\n")
  print(row("benchmark", "ours", "PyTorch", "ours speed / PyTorch", "CPU util ours / PyTorch"))
  print(row("---", "---:", "---:", "---:", "---:"))
  for scan, (timing, compile_s, _, _) in res.train.items():
    print(row(f"train step {b}x{t} (fwd+bwd+clip+AdamW), scan_layers={scan}",
              f"{ms(timing.median_s)} ({tokens / timing.median_s:,.0f} tok/s; compile {compile_s:.1f} s)",
              f"{ms(torch_s)} ({tokens / torch_s:,.0f} tok/s)", f"{torch_s / timing.median_s:.2f}x",
              f"{timing.cpu_per_wall:.2f} / {torch_timing.cpu_per_wall:.2f}"))
  fwd_ours, fwd_torch = res.forward["ours"], res.forward["torch"]
  print(row(f"forward only (loss, no grad) {b}x{t}, scan_layers={fastest}", ms(fwd_ours.median_s),
            ms(fwd_torch.median_s), f"{fwd_torch.median_s / fwd_ours.median_s:.2f}x",
            f"{fwd_ours.cpu_per_wall:.2f} / {fwd_torch.cpu_per_wall:.2f}"))
  for bs in DECODE_BATCHES:
    theirs = res.decode["torch", bs][0]
    theirs_rate = bs * n_new / theirs.median_s
    for scan in (True, False):
      ours = res.decode[scan, bs][0]
      rate = bs * n_new / ours.median_s
      print(row(f"greedy decode b={bs}, {sizes.prompt}+{n_new} tokens, scan_layers={scan}",
                f"{rate:,.1f} tok/s (first call, compiling: {ours.first_s:.1f} s)", f"{theirs_rate:,.1f} tok/s",
                f"{rate / theirs_rate:.2f}x", f"{ours.cpu_per_wall:.2f} / {theirs.cpu_per_wall:.2f}"))
  mm_ours, mm_torch = res.matmul["ours"], res.matmul["torch"]
  print(row(f"fp32 matmul {sizes.matmul_n}^3 (roofline)", f"{mm_ours:,.1f} GFLOP/s", f"{mm_torch:,.1f} GFLOP/s",
            f"{mm_ours / mm_torch:.2f}x", ""))

  print("\n### Rooflines (same run)\n")
  print(row("quantity", "ours", "PyTorch"))
  print(row("---", "---:", "---:"))
  print(row("train FLOPs per step (formula below)", f"{flops / 1e12:.3f} TFLOP", ""))
  print(row("train achieved GFLOP/s", f"{flops / best / 1e9:,.1f}", f"{flops / torch_s / 1e9:,.1f}"))
  print(row("… as a fraction of the own framework's matmul rate", f"{flops / best / 1e9 / mm_ours:.0%}",
            f"{flops / torch_s / 1e9 / mm_torch:.0%}"))
  print(row("… as a fraction of the faster matmul rate", f"{flops / best / 1e9 / max(mm_ours, mm_torch):.0%}",
            f"{flops / torch_s / 1e9 / max(mm_ours, mm_torch):.0%}"))
  roof = res.bandwidth * 1e9 / res.weight_bytes
  print(row(f"memory copy bandwidth (numpy, {sizes.copy_mb} MB, read+write)", f"{res.bandwidth:.1f} GB/s", ""))
  print(row(f"batch-1 decode roofline: bandwidth / {res.weight_bytes / 1e6:.0f} MB weights per token",
            f"{roof:,.1f} tok/s", ""))
  ours_b1 = n_new / res.decode[fastest, 1][0].median_s
  torch_b1 = n_new / res.decode["torch", 1][0].median_s
  print(row(f"batch-1 decode as a fraction of that roofline (ours scan_layers={fastest})", f"{ours_b1 / roof:.0%}",
            f"{torch_b1 / roof:.0%}"))
  print(f"\nFLOPs = 6 x {matmul_params(base) / 1e6:.1f}M matmul params (all projections + lm_head, no embedding "
        f"gather) x {tokens} tokens + attention 3 x 2 matmuls x 2 x b*t*t*heads*head_dim x layers over the full "
        f"t x t square (PaLM's convention; what our dense attention computes). Decode rates include the prefill.")

  print(f"\n### Where our train step goes (scan_layers={fastest}; each part jitted alone at the step's shapes)\n")
  print(row("part", "time", "share of step"))
  print(row("---", "---:", "---:"))
  print(row("forward only (loss, whole model)", ms(fwd_ours.median_s), f"{fwd_ours.median_s / best:.0%}"))
  for name, seconds in res.parts.items():
    print(row(name, ms(seconds), f"{seconds / best:.0%}"))
  rest = best - sum(seconds for name, seconds in res.parts.items() if not name.startswith(" "))
  print(row("rest = step - parts (embedding, final norm, glue; < 0 when parts run slower alone)", ms(rest),
            f"{rest / best:.0%}"))
  print(row("full step", ms(best), "100%"))
  hlo = res.train[fastest][3]
  once = " (a scanned layer body counts once)" if fastest else ""
  print(f"\nXLA cost analysis of the step{once}: {hlo['xla_flops'] / 1e12:.3f} TFLOP (formula {flops / 1e12:.3f}), "
        f"{hlo['xla_bytes'] / 1e9:.1f} GB accessed; relayout copies/transposes write {hlo['copy_bytes'] / 1e9:.2f} GB "
        "per step, most from: " + "; ".join(f"`{src}` {n / 1e9:.2f} GB" for src, n in hlo["top_copies"]) + ".")
  same = {key: int((tokens_bn == res.decode["torch", key[1]][1]).all(axis=1).sum())
          for key, (_, tokens_bn) in res.decode.items() if key[0] != "torch"}
  print(f"\nSanity: logits max |ours - torch| = {res.logits_diff:.2e} (8x{sizes.prompt} prompt, both layouts); "
        f"first-step loss ours " + ", ".join(f"{v[2]:.5f}" for v in res.train.values()) + f" vs torch "
        f"{torch_loss:.5f}; greedy rows identical to torch: "
        + ", ".join(f"scan={s} b={bs}: {n}/{bs}" for (s, bs), n in same.items()) + ".")


if __name__ == "__main__":
  main()
