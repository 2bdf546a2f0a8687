"""Our MIM (JAX/Flax) vs transformers' PyTorch Blip2ForConditionalGeneration on CPU, same weights, same run.

  python bench/mim_bench.py            # small MIM: ViT 384x6, Q-Former 384x4, Llama 512x4; ~3-5 min on 2 cores
  python bench/mim_bench.py --quick    # tiny widths, 56px images, train 2x64 (smoke run, about a minute)

Two workloads: the image path (ViT -> Q-Former -> projection, `get_image_features`)
on a batch of images, and the stage-2 train step (frozen ViT forward, Q-Former +
projection + Llama forward/backward, causal cross-entropy, AdamW on the trainable
params) on `<image>`-bearing sequences. Ours loads the HF checkpoint through
`load_hf_mim` and steps through `train/step.make_train_step`, as training does.
Prints markdown tables for BENCHMARKS.md, with a per-part breakdown of both
train steps. Both frameworks get every core; the "CPU util" column shows how
many a measurement really got, so a busy machine is visible in the numbers.
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
# libgomp's default spin-then-block barrier makes torch's small ops 10-100x slower whenever another
# process holds a core (measured here: a 68x64 Linear 9 ms vs 0.1 ms); passive waiting costs little
# when the machine is quiet. Set OMP_WAIT_POLICY=ACTIVE to measure torch's default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from configs import common  # noqa: E402
from mim_jax.convert.mim import load_hf_mim  # noqa: E402
from mim_jax.models.eva_vit import EvaViT  # noqa: E402
from mim_jax.models.image_encoder import ImageEncoder  # noqa: E402
from mim_jax.models.llama import Llama  # noqa: E402
from mim_jax.models.mim import MIM, MIMConfig, pack_images  # noqa: E402
from mim_jax.train.loss import cross_entropy  # noqa: E402
from mim_jax.train.step import make_train_step  # noqa: E402
from mim_jax.train.freeze import STAGE_TRAINABLE  # noqa: E402
from mim_jax.train.optimizer import make_optimizer  # noqa: E402
from bench.common import cpu_seconds, machine, measure, ms, progress, row  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sizes:
  image_size: int
  vit: tuple[int, int, int, int]  # width, layers, heads, mlp
  qformer: tuple[int, int, int, int]  # width, layers, heads, ffn
  queries: int
  llm: tuple[int, int, int, int, int]  # width, layers, heads, ffn, vocab
  encode_batch: int
  batch: int
  seq: int
  images_per_example: int
  repeats: int  # timed calls after one warm-up; the train step dominates, so few
  part_repeats: int


FULL = Sizes(image_size=224, vit=(384, 6, 6, 1536), qformer=(384, 4, 6, 1536), queries=32,
             llm=(512, 4, 8, 1376, 32003), encode_batch=8, batch=4, seq=256, images_per_example=2, repeats=3,
             part_repeats=2)
QUICK = Sizes(image_size=56, vit=(64, 2, 4, 128), qformer=(64, 2, 4, 128), queries=8, llm=(64, 2, 4, 128, 1003),
              encode_batch=4, batch=2, seq=64, images_per_example=2, repeats=2, part_repeats=1)
PATCH = 14
# TextBind's AdamW (spec §3), constant LR: the schedule is not what is being measured.
ADAMW = dict(lr=1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=1e-3)


# --------------------------------------------------------------------------- timing


def compile_timed(jitted, *args):
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


# --------------------------------------------------------------------------- models and inputs


def image_token_id(sizes: Sizes) -> int:
  return sizes.llm[4] - 3  # MIM appends <image>, <start>, <end> to Llama's vocabulary


def save_hf_model(sizes: Sizes, directory: str, attention: str) -> transformers.Blip2ForConditionalGeneration:
  """A random Blip2ForConditionalGeneration with a Llama LLM, saved where `load_hf_mim` reads it.

  Q-Former dropout is 0 so that both train steps compute the same deterministic loss (ours runs
  deterministic=True); it costs torch nothing either way at 32 queries.
  """
  (vd, vl, vh, vf), (qd, ql, qh, qf), (ld, ll, lh, lf, vocab) = sizes.vit, sizes.qformer, sizes.llm
  config = transformers.Blip2Config(
      vision_config=dict(hidden_size=vd, num_hidden_layers=vl, num_attention_heads=vh, intermediate_size=vf,
                         image_size=sizes.image_size, patch_size=PATCH),
      qformer_config=dict(hidden_size=qd, num_hidden_layers=ql, num_attention_heads=qh, intermediate_size=qf,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
      text_config=dict(model_type="llama", vocab_size=vocab, hidden_size=ld, num_hidden_layers=ll,
                       num_attention_heads=lh, num_key_value_heads=lh, intermediate_size=lf,
                       max_position_embeddings=max(sizes.seq, 512), tie_word_embeddings=False),
      num_query_tokens=sizes.queries, image_token_index=image_token_id(sizes),
  )
  torch.manual_seed(0)
  model = transformers.Blip2ForConditionalGeneration(config).float().eval()
  model.save_pretrained(directory)
  model.set_attn_implementation(attention)
  return model


def make_batch(sizes: Sizes, cfg: MIMConfig) -> dict[str, np.ndarray]:
  """Random text with `images_per_example` runs of `<image>` tokens per example, packed images.

  HF's labels=input_ids loss predicts tokens 1..t-1 from 0..t-2, so our last target gets weight 0:
  both then average the same b*(t-1) token losses and the first losses must agree.
  """
  b, t, m, k = sizes.batch, sizes.seq, sizes.images_per_example, sizes.queries
  rng = np.random.default_rng(1)
  tokens = rng.integers(3, image_token_id(sizes), (b, t), dtype=np.int32)
  starts_bm = np.broadcast_to(np.arange(m, dtype=np.int32) * (t // m) + 4, (b, m)).copy()
  for j in range(m):
    tokens[:, starts_bm[0, j]: starts_bm[0, j] + k] = image_token_id(sizes)
  rows_bm, _ = pack_images(np.ones((b, m), bool))
  size = cfg.vision.image_size
  weights = np.ones((b, t), np.float32)
  weights[:, -1] = 0
  return {
      "tokens": tokens, "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
      "targets": np.concatenate([tokens[:, 1:], np.zeros((b, 1), np.int32)], axis=1), "weights": weights,
      "image_starts": starts_bm, "image_rows": rows_bm,
      "images": rng.standard_normal((b * m, size, size, 3), dtype=np.float32),
  }


def to_nchw(images_nhwc: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))


def flops(sizes: Sizes) -> dict[str, float]:
  """Matmul FLOPs (2 per multiply-add, attention scores and values included) per image / per step."""
  (vd, vl, _, vf), (qd, ql, _, qf), (ld, ll, _, lf, vocab) = sizes.vit, sizes.qformer, sizes.llm
  s, q, t = (sizes.image_size // PATCH) ** 2 + 1, sizes.queries, sizes.seq
  vit = vl * (2 * s * (4 * vd * vd + 2 * vd * vf) + 4 * s * s * vd) + 2 * (s - 1) * PATCH * PATCH * 3 * vd
  cross = (ql + 1) // 2  # cross-attention every 2nd layer, from layer 0
  qformer = (ql * (2 * q * (4 * qd * qd + 2 * qd * qf) + 4 * q * q * qd)
             + cross * (2 * q * 2 * qd * qd + 2 * s * 2 * vd * qd + 4 * q * s * qd) + 2 * q * qd * ld)
  llm_token = ll * (2 * (4 * ld * ld + 3 * ld * lf) + 4 * t * ld) + 2 * ld * vocab
  n = sizes.batch * sizes.images_per_example
  return {"encode_image": vit + qformer,
          "train_step": n * vit + 3 * (n * qformer + sizes.batch * t * llm_token)}


# --------------------------------------------------------------------------- image path


def ours_encode(cfg: MIMConfig, params, images: np.ndarray, repeats: int):
  """(timing, compile s, features) of the jitted ViT -> Q-Former -> projection."""
  encode = jax.jit(lambda p, x: MIM(cfg).apply({"params": p}, images=x, method=MIM.encode_images))
  images = jnp.asarray(images)
  compiled, compile_s = compile_timed(encode, params, images)
  out = []
  timing = measure(lambda: out.append(jax.block_until_ready(compiled(params, images))), repeats)
  return timing, compile_s, np.asarray(out[0])


def torch_encode(model, images: np.ndarray, repeats: int):
  pixels = to_nchw(images)
  out = []

  def run():
    with torch.inference_mode():
      out.append(model.get_image_features(pixel_values=pixels).pooler_output)

  return measure(run, repeats), out[0].numpy()


# --------------------------------------------------------------------------- train step


def optimizer() -> optax.GradientTransformation:
  """Training's optimizer (frozen params get no state), at a constant LR and without clipping, as torch's side."""
  opt = common.optimizer(learning_rate=ADAMW["lr"], warmup_steps=0, b1=ADAMW["b1"], b2=ADAMW["b2"], eps=ADAMW["eps"],
                         weight_decay=ADAMW["weight_decay"], grad_clip=1e30)
  return make_optimizer(opt, 10**9, trainable=STAGE_TRAINABLE["stage2"])


def ours_train(cfg: MIMConfig, params, batch, repeats: int):
  """(timing, compile s, losses) of the real jitted step: fwd+bwd+AdamW, state donated."""
  opt = optimizer()
  state = {"params": params, "opt_state": jax.jit(opt.init)(params), "step": jnp.zeros((), jnp.int32)}
  step = jax.jit(make_train_step(MIM(cfg), opt, trainable=STAGE_TRAINABLE["stage2"]), donate_argnums=0)
  batch = jax.device_put(batch)
  compiled, compile_s = compile_timed(step, state, batch)
  losses = []

  def run():
    nonlocal state
    state, metrics = compiled(state, batch)
    losses.append(float(metrics["loss"]))

  return measure(run, repeats), compile_s, losses


def torch_inputs(batch) -> dict[str, torch.Tensor]:
  ids = torch.from_numpy(batch["tokens"]).long()
  return {"pixel_values": to_nchw(batch["images"]), "input_ids": ids, "labels": ids}


def torch_trainable(model) -> list[torch.nn.Parameter]:
  """Stage 2: everything but the ViT. Without grads the ViT runs forward only, as our stop_gradient makes it."""
  model.vision_model.requires_grad_(False)
  return [p for p in model.parameters() if p.requires_grad]


def torch_adamw(params) -> torch.optim.Optimizer:
  # fused, as HF's Trainer picks on CPU: the default per-tensor loop is several times slower.
  return torch.optim.AdamW(params, lr=ADAMW["lr"], betas=(ADAMW["b1"], ADAMW["b2"]), eps=ADAMW["eps"],
                           weight_decay=ADAMW["weight_decay"], fused=True)


def torch_train(model, batch, repeats: int):
  """(timing, losses): HF forward with labels (its own shifted cross-entropy) + backward + grad norm
  (our step reports one) + AdamW."""
  model.train()
  trainable = torch_trainable(model)
  opt = torch_adamw(trainable)
  inputs = torch_inputs(batch)
  losses = []

  def run():
    loss = model(**inputs).loss
    loss.backward()
    torch.nn.utils.get_total_norm([p.grad for p in trainable])
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(loss.item())

  timing = measure(run, repeats)
  model.eval()
  return timing, losses


# --------------------------------------------------------------------------- where the step's time goes


def ours_parts(cfg: MIMConfig, params, batch, repeats: int) -> dict[str, float]:
  """Seconds per step of each part, each jitted alone at the step's shapes."""
  enc_params = {k: v for k, v in params["image_encoder"].items() if k != "vision"}
  images = jnp.asarray(batch["images"])
  n, b, t, d = images.shape[0], *batch["tokens"].shape, cfg.llm.embed_dim
  rng = np.random.default_rng(2)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32))
  features = normal(n, cfg.vision.num_positions, cfg.vision.embed_dim)
  cot = normal(n, cfg.num_image_tokens, d)
  embeds = normal(b, t, d)
  timed = lambda fn, *args: measure(lambda: jax.block_until_ready(fn(*args)), repeats).median_s

  vit = jax.jit(lambda p, x: EvaViT(cfg.vision).apply({"params": p}, x))
  encoder = ImageEncoder(cfg.vision, cfg.qformer, d)
  qformer = jax.jit(lambda p, f: jax.vjp(lambda p_: encoder.apply({"params": p_}, None, f), p)[1](cot))

  def llm_loss(p, x):
    logits = Llama(cfg.llm).apply({"params": p}, None, batch["positions"], embeds_btd=x)
    return cross_entropy(logits, batch["targets"], batch["weights"])[0]

  llm = jax.jit(jax.grad(llm_loss, argnums=(0, 1)))
  opt = optimizer()
  carry = (jax.tree.map(jnp.copy, params), jax.jit(opt.init)(params))
  grads = jax.tree.map(jnp.zeros_like, params)

  def update(p, opt_state, g):
    updates, opt_state = opt.update(g, opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  update = jax.jit(update, donate_argnums=(0, 1))  # in place, as in the step

  def run_update():
    nonlocal carry
    carry = jax.block_until_ready(update(*carry, grads))

  return {
      f"ViT forward ({n} images)": timed(vit, params["image_encoder"]["vision"], images),
      "Q-Former + projection fwd+bwd": timed(qformer, enc_params, features),
      "Llama fwd+bwd + cross-entropy": timed(llm, params["llm"], embeds),
      "AdamW update": measure(run_update, repeats).median_s,
  }


def torch_parts(model, batch, repeats: int) -> dict[str, float]:
  """The same parts in PyTorch; the update is timed on gradients left by one backward."""
  model.train()
  trainable = torch_trainable(model)
  inputs = torch_inputs(batch)
  n, b, t = inputs["pixel_values"].shape[0], *inputs["input_ids"].shape
  rng = np.random.default_rng(2)
  normal = lambda *shape: torch.from_numpy(rng.standard_normal(shape, np.float32))
  vit_cfg = model.config.vision_config
  features = normal(n, (vit_cfg.image_size // vit_cfg.patch_size) ** 2 + 1, vit_cfg.hidden_size)
  cot = normal(n, model.config.num_query_tokens, model.config.text_config.hidden_size)
  embeds = normal(b, t, model.config.text_config.hidden_size).requires_grad_(True)
  timed = lambda fn: measure(fn, repeats).median_s

  def vit():
    with torch.no_grad():
      _ = model.vision_model(pixel_values=inputs["pixel_values"]).last_hidden_state

  def qformer():
    out = model.qformer(query_embeds=model.query_tokens.expand(n, -1, -1), encoder_hidden_states=features,
                        encoder_attention_mask=torch.ones(features.shape[:-1], dtype=torch.long)).last_hidden_state
    model.language_projection(out).backward(cot)

  def llm():
    logits = model.language_model(inputs_embeds=embeds).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), inputs["labels"][:, 1:].flatten())
    loss.backward()

  opt = torch_adamw(trainable)
  parts = {"vit": timed(vit), "qformer": timed(qformer), "llm": timed(llm)}
  parts["update"] = timed(opt.step)
  opt.zero_grad(set_to_none=True)
  model.eval()
  return dict(zip(("ViT", "Q-Former", "Llama", "AdamW"), parts.values()))


# --------------------------------------------------------------------------- report


def describe(sizes: Sizes, cfg: MIMConfig, attention: str) -> str:
  (vd, vl, vh, vf), (qd, ql, qh, qf), (ld, ll, lh, lf, vocab) = sizes.vit, sizes.qformer, sizes.llm
  s = cfg.vision.num_positions
  return (f"ViT {vd} wide x {vl} layers ({vh} heads, MLP {vf}, {sizes.image_size}px / {PATCH} -> {s} tokens); "
          f"Q-Former {qd} x {ql} ({qh} heads, FFN {qf}, {sizes.queries} queries); Llama {ld} x {ll} ({lh} heads, "
          f"FFN {lf}, vocab {vocab}). fp32. Ours: scan_layers vision={cfg.vision.scan_layers} "
          f"llm={cfg.llm.scan_layers}, dense einsum attention ('xla'); PyTorch attention: {attention}.")


def report(sizes: Sizes, cfg: MIMConfig, attention: str, res: dict, wall_s: float, cpu_s: float) -> None:
  quick = " (--quick)" if sizes != FULL else ""
  n_enc = sizes.encode_batch
  n_img = sizes.batch * sizes.images_per_example
  tokens = sizes.batch * sizes.seq
  work = flops(sizes)
  print(f"\n## MIM{quick}: ours (JAX/Flax) vs transformers Blip2ForConditionalGeneration, same weights\n")
  print(f"Machine: {machine()}. Whole run {wall_s / 60:.1f} min wall, {cpu_s / 60:.1f} min CPU.\n")
  print(describe(sizes, cfg, attention) + "\n")
  print(row("benchmark", "ours", "PyTorch", "ratio PyTorch/ours (>1: ours faster)", "ours compile",
            "GFLOP/s ours / PyTorch", "CPU util ours / PyTorch"))
  print(row("---", "---:", "---:", "---:", "---:", "---:", "---:"))
  enc, enc_compile, _ = res["ours_encode"]
  tenc, _ = res["torch_encode"]
  gf = lambda f, s: f"{f / s / 1e9:,.1f}"
  print(row(f"image path ViT+Q-Former+projection, batch {n_enc}",
            f"{ms(enc.median_s)} ({n_enc / enc.median_s:,.1f} img/s)",
            f"{ms(tenc.median_s)} ({n_enc / tenc.median_s:,.1f} img/s)", f"{tenc.median_s / enc.median_s:.2f}x",
            f"{enc_compile:.1f} s", f"{gf(n_enc * work['encode_image'], enc.median_s)} / "
            f"{gf(n_enc * work['encode_image'], tenc.median_s)}", f"{enc.cpu_per_wall:.2f} / {tenc.cpu_per_wall:.2f}"))
  step, step_compile, losses = res["ours_train"]
  tstep, tlosses = res["torch_train"]
  print(row(f"stage-2 train step {sizes.batch}x{sizes.seq}, {n_img} images (fwd+bwd+AdamW)",
            f"{ms(step.median_s)} ({tokens / step.median_s:,.0f} tok/s, {n_img / step.median_s:,.1f} img/s)",
            f"{ms(tstep.median_s)} ({tokens / tstep.median_s:,.0f} tok/s, {n_img / tstep.median_s:,.1f} img/s)",
            f"{tstep.median_s / step.median_s:.2f}x", f"{step_compile:.1f} s",
            f"{gf(work['train_step'], step.median_s)} / {gf(work['train_step'], tstep.median_s)}",
            f"{step.cpu_per_wall:.2f} / {tstep.cpu_per_wall:.2f}"))

  print("\n### Where the train step goes (each part timed alone at the step's shapes)\n")
  print(row("part", "ours", "PyTorch", "ratio PyTorch/ours", "share of step ours / PyTorch"))
  print(row("---", "---:", "---:", "---:", "---:"))
  for (name, ours_s), theirs_s in zip(res["ours_parts"].items(), res["torch_parts"].values()):
    print(row(name, ms(ours_s), ms(theirs_s), f"{theirs_s / ours_s:.2f}x",
              f"{ours_s / step.median_s:.0%} / {theirs_s / tstep.median_s:.0%}"))
  rest, trest = (step.median_s - sum(res["ours_parts"].values()), tstep.median_s - sum(res["torch_parts"].values()))
  print(row("rest = step - parts (embedding, scatter, glue; < 0 when parts run slower alone)", ms(rest), ms(trest),
            "", f"{rest / step.median_s:.0%} / {trest / tstep.median_s:.0%}"))
  print(row("full step", ms(step.median_s), ms(tstep.median_s), f"{tstep.median_s / step.median_s:.2f}x",
            "100% / 100%"))

  print(f"\nFLOPs: {work['encode_image'] / 1e9:.2f} GFLOP per image through the image path; "
        f"{work['train_step'] / 1e9:.1f} GFLOP per train step (ViT forward once, Q-Former, projection and Llama "
        "x3 for forward+backward; full t x t attention squares).")
  print(f"\nSanity: image features max |ours - torch| = {res['encode_diff']:.2e} (max |feature| "
        f"{res['encode_scale']:.2e}); train losses ours " + ", ".join(f"{x:.5f}" for x in losses[:2])
        + " vs torch " + ", ".join(f"{x:.5f}" for x in tlosses[:2]) + " (first two steps from the same weights).")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
  parser.add_argument("--layout", default="scan", choices=("scan", "unrolled"),
                      help="our scan_layers for the ViT and Llama stacks (scan: the loader's default)")
  parser.add_argument("--torch-attention", default="sdpa", choices=("sdpa", "eager"),
                      help="transformers attention implementation (ours is the dense einsum: the only one on CPU)")
  args = parser.parse_args()
  sizes = QUICK if args.quick else FULL
  torch.set_num_threads(os.cpu_count())
  transformers.utils.logging.disable_progress_bar()
  wall0, cpu0 = time.perf_counter(), cpu_seconds()
  print(f"machine: {machine()}", flush=True)
  if jax.device_count() != 1:
    raise SystemExit(f"expected one CPU device, got {jax.device_count()}: check XLA_FLAGS")

  res = {}
  scan = args.layout == "scan"
  with tempfile.TemporaryDirectory() as directory:
    model = save_hf_model(sizes, directory, args.torch_attention)
    cfg, host_params = load_hf_mim(directory, llm_overrides={"scan_layers": scan},
                                   vision_overrides={"scan_layers": scan})
  params = jax.device_put(host_params)
  batch = make_batch(sizes, cfg)
  images = np.random.default_rng(0).standard_normal((sizes.encode_batch, sizes.image_size, sizes.image_size, 3),
                                                    dtype=np.float32)
  progress("models built and loaded", wall0)

  res["ours_encode"] = ours_encode(cfg, params, images, sizes.repeats)
  res["torch_encode"] = torch_encode(model, images, sizes.repeats)
  res["encode_diff"] = float(np.abs(res["ours_encode"][2] - res["torch_encode"][1]).max())
  res["encode_scale"] = float(np.abs(res["torch_encode"][1]).max())
  progress(f"image path: ours {ms(res['ours_encode'][0].median_s)}, torch {ms(res['torch_encode'][0].median_s)}",
           wall0)
  # Each train step starts from the loaded weights, so that the losses compare: ours donates its
  # params (the parts come first), torch's steps and parts update the weights in place.
  res["ours_parts"] = ours_parts(cfg, params, batch, sizes.part_repeats)
  res["ours_train"] = ours_train(cfg, params, batch, sizes.repeats)
  progress(f"ours train: {ms(res['ours_train'][0].median_s)} (compile {res['ours_train'][1]:.1f} s)", wall0)
  res["torch_train"] = torch_train(model, batch, sizes.repeats)
  progress(f"torch train: {ms(res['torch_train'][0].median_s)}", wall0)
  res["torch_parts"] = torch_parts(model, batch, sizes.part_repeats)
  progress("breakdown", wall0)
  report(sizes, cfg, args.torch_attention, res, time.perf_counter() - wall0, cpu_seconds() - cpu0)


if __name__ == "__main__":
  main()
