"""The training system around the step: input pipeline rate vs the step's
consumption, and checkpoint save cost and its overlap with training.

  python bench/train_system_bench.py            # ~5-10 min on 2 cores
  python bench/train_system_bench.py --quick    # smoke run

1. Input pipeline (mim_jax.data.pipeline, the code training runs), in examples/s
   per process, on synthetic TFDS data: `tiny` (64 px PNGs, 28 px model images,
   length 64) and `full-shape` (512 px PNGs as data_gen writes them, 224 px
   model images, length 768, the spec's stage-2 shapes). The rate scales with
   the host's cores (data.num_parallel_calls); this machine's count is printed.
2. The train step's consumption, examples/s, for the tiny MIM and a small MIM
   on this CPU, measured with the same jitted step the loop runs.
3. Checkpoints of the small MIM's train state through mim_jax.train.checkpoint:
   the blocking part of an async save (device → host copy), the whole save,
   and the step time while a save runs in the background vs without.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import machine, row  # noqa: E402
from mim_jax.data.batches import pack_batch  # noqa: E402
from mim_jax.data.features import FeatureConfig  # noqa: E402
from mim_jax.data.pipeline import DataSource, InputPipeline  # noqa: E402
from mim_jax.data.synthetic import write_synthetic  # noqa: E402
from mim_jax.data.tokenizer import Tokenizer, train_sentencepiece  # noqa: E402
from mim_jax.models.eva_vit import VisionConfig  # noqa: E402
from mim_jax.models.llama_config import LlamaConfig  # noqa: E402
from mim_jax.models.mim import MIM, MIMConfig, init_params  # noqa: E402
from mim_jax.models.qformer import QFormerConfig  # noqa: E402
from mim_jax.train import checkpoint  # noqa: E402
from mim_jax.train.step import make_train_step  # noqa: E402
from mim_jax.train.freeze import STAGE_TRAINABLE  # noqa: E402
from mim_jax.data.text_windows import read_text_lines  # noqa: E402
from mim_jax.train.optimizer import make_optimizer  # noqa: E402
from configs import common  # noqa: E402

SHAPES = {  # name: (png side, model image side, seq_len, max_images, batch)
    "tiny": (64, 28, 64, 2, 8),
    "full-shape": (512, 224, 768, 3, 8),
}
MODELS = {
    "tiny": MIMConfig(LlamaConfig(vocab_size=300, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                  head_dim=16, mlp_dim=128, max_positions=512),
                      VisionConfig.preset("tiny"), QFormerConfig.preset("tiny")),
    "small": MIMConfig(LlamaConfig(vocab_size=300, embed_dim=512, num_layers=4, num_heads=8, num_kv_heads=8,
                                   head_dim=64, mlp_dim=1376, max_positions=1024),
                       VisionConfig(image_size=224, patch_size=14, embed_dim=384, num_layers=6, num_heads=6,
                                    mlp_dim=1536),
                       QFormerConfig(num_queries=32, embed_dim=384, num_layers=4, num_heads=6, mlp_dim=1536,
                                     encoder_dim=384)),
}


def pipeline_rate(data_dir: Path, tok: Tokenizer, shape: str, batches: int) -> float:
  png, side, length, images, batch = SHAPES[shape]
  paths = write_synthetic(data_dir / shape, captions=8, conversations=256, image_size=png)
  features = FeatureConfig(max_len=length, max_images=images, num_image_tokens=32)
  p = InputPipeline([DataSource(str(paths["conversations"]))], tok, features, batch_size=batch, seed=0,
                    num_parallel_calls=os.cpu_count(), image_size=side)
  for _ in range(2):
    next(p)
  start = time.perf_counter()
  for _ in range(batches):
    pack_batch(next(p), budget=batch * images)
  return batches * batch / (time.perf_counter() - start)


def step_setup(name: str, length: int, batch: int):
  cfg = MODELS[name]
  trainable = STAGE_TRAINABLE["stage2"]
  optimizer = make_optimizer(common.optimizer(), 100, trainable=trainable)
  params = init_params(cfg, jax.random.key(0))
  state = {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}
  step = jax.jit(make_train_step(MIM(cfg), optimizer, trainable=trainable), donate_argnums=0)
  rng = np.random.default_rng(0)
  side, m = cfg.vision.image_size, 2
  host = {"tokens": rng.integers(3, 290, (batch, length), dtype=np.int32),
          "targets": rng.integers(3, 290, (batch, length), dtype=np.int32),
          "weights": np.ones((batch, length), np.float32),
          "positions": np.tile(np.arange(length, dtype=np.int32), (batch, 1)),
          "mask": np.tile(np.tril(np.ones((length, length), bool)), (batch, 1, 1)),
          "image_starts": np.tile(np.array([1, 40], np.int32), (batch, 1)),
          "image_valid": np.ones((batch, m), bool),
          "pixels": rng.integers(0, 256, (batch, m, side, side, 3), dtype=np.uint8)}
  arrays, _ = pack_batch(host, budget=batch * m)
  return state, step, {k: jnp.asarray(v) for k, v in arrays.items()}


def step_rate(name: str, length: int, batch: int, steps: int) -> tuple[float, float]:
  state, step, batch_arrays = step_setup(name, length, batch)
  state, metrics = step(state, batch_arrays)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch_arrays)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  return batch / seconds, seconds


def checkpoint_costs(workdir: Path, steps: int) -> dict:
  state, step, batch = step_setup("small", 256, 4)
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)

  def timed_steps():
    nonlocal state
    start = time.perf_counter()
    for _ in range(steps):
      state, m = step(state, batch)
    jax.block_until_ready(m)
    return (time.perf_counter() - start) / steps

  quiet = timed_steps()
  manager = checkpoint.make_manager(workdir, keep_last=2, keep_every=None)
  start = time.perf_counter()
  checkpoint.save(manager, 1, state, {"step": 1}, force=True)
  blocking = time.perf_counter() - start
  during = timed_steps()
  manager.wait_until_finished()
  total = time.perf_counter() - start - during * steps
  size = sum(f.stat().st_size for f in workdir.rglob("*") if f.is_file())
  manager.close()
  return {"bytes": size, "blocking_s": blocking, "total_s": total, "step_quiet_s": quiet, "step_during_s": during}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  batches, steps = (3, 2) if args.quick else (20, 5)
  print(machine())
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    lines = read_text_lines()
    tok = Tokenizer.load(train_sentencepiece(lines, tmp / "tok", vocab_size=509))
    print(f"\n{os.cpu_count()} cores; input pipeline vs train step, examples/s per process\n")
    print(row("shapes", "pipeline ex/s", "model", "train step ex/s (s/step)", "pipeline ÷ step"))
    print(row("---", "---", "---", "---", "---"))
    for shape, model in (("tiny", "tiny"), ("full-shape", "small")):
      rate = pipeline_rate(tmp, tok, shape, batches)
      length, batch = SHAPES[shape][2], SHAPES[shape][4]
      consumed, seconds = step_rate(model, length if model == "tiny" else 256, batch, steps)
      print(row(f"{shape} ({SHAPES[shape][0]} px PNG, len {length})", f"{rate:.1f}", model,
                f"{consumed:.1f} ({seconds:.3f})", f"{rate / consumed:.1f}×"))
    costs = checkpoint_costs(tmp / "ckpt", steps)
    print("\ncheckpoint of the small MIM's train state (async orbax)\n")
    print(row("state on disk", "blocking", "whole save", "step alone", "step during save"))
    print(row("---", "---", "---", "---", "---"))
    print(row(f"{costs['bytes'] / 2**20:.0f} MiB", f"{costs['blocking_s']:.2f} s", f"{costs['total_s']:.2f} s",
              f"{costs['step_quiet_s']:.3f} s", f"{costs['step_during_s']:.3f} s"))


if __name__ == "__main__":
  main()
