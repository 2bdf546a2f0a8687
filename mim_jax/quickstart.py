r"""The quickstart job: train a Llama on text, export to Hugging Face, reload, sample.

  python -m mim_jax.quickstart --config configs/quickstart.py --workdir /tmp/mim_quickstart

With the default config everything is random-init and tiny (a sentencepiece
tokenizer is trained on the bundled text), so it runs in about a minute on a
laptop CPU. Point `--config.init_from` at a HF Llama directory and
`--config.tokenizer` at its tokenizer to fine-tune real weights instead.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mim_jax.config import model_config, validate
from mim_jax.convert.llama import load_hf_llama, save_hf_llama
from mim_jax.data.tokenizer import Tokenizer, train_sentencepiece
from mim_jax.infer.generate import SamplingConfig, generate
from mim_jax.models.llama import Llama, boxed_init_fn
from mim_jax.models.vocab import resize_vocab
from mim_jax.nn.sharding import create_mesh
from mim_jax.train import lm_step
from mim_jax.train.optimizer import make_optimizer

SAMPLE_TEXT = Path(__file__).parent / "assets" / "sample_text.txt"

config_flags.DEFINE_config_file("config", None, "Run config (a configs/*.py file).", lock_config=True)
flags.DEFINE_string("workdir", "/tmp/mim_quickstart", "Where the tokenizer and the HF export are written.")
FLAGS = flags.FLAGS
log = logging.getLogger("mim_jax.quickstart")


def _read_text(path: str) -> list[str]:
  path = Path(path or SAMPLE_TEXT)
  if not path.is_file():
    raise FileNotFoundError(f"text_file {path} not found")
  lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
  if not lines:
    raise ValueError(f"text_file {path} has no text")
  return lines


def _tokenizer(config, lines: list[str], workdir: Path) -> Tokenizer:
  if config.tokenizer:
    return Tokenizer.load(config.tokenizer)
  # Room for the three MIM tokens; sentencepiece may use fewer pieces on little text.
  return Tokenizer.load(train_sentencepiece(lines, workdir / "tokenizer", config.model.vocab_size - 3))


def _windows(tokenizer: Tokenizer, lines: list[str], seq_len: int) -> np.ndarray:
  stream = []
  for line in lines:
    stream += [tokenizer.bos_id] + tokenizer.encode(line) + [tokenizer.eos_id]
  stream = np.asarray(stream, np.int32)
  if len(stream) <= seq_len:
    stream = np.tile(stream, seq_len // len(stream) + 2)
  starts = np.arange(0, len(stream) - seq_len - 1, max(1, seq_len // 4))
  return np.stack([stream[s:s + seq_len + 1] for s in starts])


def _initial_params(config, tokenizer: Tokenizer, rng: jax.Array):
  """(LlamaConfig, host params or None for random init) with the vocab matching the tokenizer."""
  if config.init_from:
    overrides = {k: config.model[k] for k in ("dtype", "param_dtype", "scan_layers", "remat_policy", "attention_impl")}
    cfg, params = load_hf_llama(config.init_from, **overrides)
    return resize_vocab(cfg, params, tokenizer.vocab_size, rng)
  cfg = dataclasses.replace(model_config(config), vocab_size=tokenizer.vocab_size)
  return cfg, None


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  config = FLAGS.config
  validate(config)
  workdir = Path(FLAGS.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  train = config.train

  lines = _read_text(config.text_file)
  tokenizer = _tokenizer(config, lines, workdir)
  rng = jax.random.key(train.seed)
  cfg, loaded = _initial_params(config, tokenizer, rng)
  windows = _windows(tokenizer, lines, train.seq_len)
  log.info("tokenizer: %d ids (<image>=%d <start>=%d <end>=%d); %d training windows of %d tokens",
           tokenizer.vocab_size, tokenizer.image_id, tokenizer.start_id, tokenizer.end_id, len(windows), train.seq_len)

  mesh = create_mesh(config.mesh)
  rules = config.sharding_rules
  optimizer = make_optimizer(config.optimizer, train.steps)
  shardings = lm_step.state_shardings(boxed_init_fn(cfg), optimizer, rng, mesh, rules)
  if loaded is None:
    state = lm_step.init_state(boxed_init_fn(cfg), optimizer, rng, shardings)
  else:
    params = jax.device_put(loaded, shardings["params"])
    state = {"params": params, "opt_state": jax.jit(optimizer.init, out_shardings=shardings["opt_state"])(params),
             "step": jnp.zeros((), jnp.int32)}
  step_fn = lm_step.jit_train_step(lm_step.make_train_step(Llama(cfg), optimizer), shardings, mesh, rules)
  log.info("mesh %s; %.2fM params", dict(mesh.shape), sum(x.size for x in jax.tree.leaves(state["params"])) / 1e6)

  data_rng = np.random.default_rng(train.seed)
  first_loss = last_loss = None
  start = time.time()
  for step in range(train.steps):
    rows = windows[data_rng.integers(0, len(windows), train.batch_size)]
    batch = {"tokens": rows[:, :-1], "targets": rows[:, 1:], "weights": np.ones(rows[:, 1:].shape, np.float32)}
    state, metrics = step_fn(state, batch)
    if step == 0 or (step + 1) % train.log_every == 0 or step + 1 == train.steps:
      last_loss = float(metrics["loss"])
      first_loss = last_loss if first_loss is None else first_loss
      elapsed = time.time() - start
      rate = (step + 1) * train.batch_size * train.seq_len / elapsed
      eta = elapsed / (step + 1) * (train.steps - step - 1)
      log.info("step %d/%d loss %.4f grad_norm %.3f | %.0f tokens/s, ETA %.0fs",
               step + 1, train.steps, last_loss, float(metrics["grad_norm"]), rate, eta)

  export_dir = workdir / "hf_export"
  save_hf_llama(export_dir, cfg, state["params"], tokenizer=tokenizer, dtype=config.export.dtype,
                max_shard_bytes=int(config.export.max_shard_gb * 2**30))
  reloaded_cfg, reloaded = load_hf_llama(export_dir, scan_layers=cfg.scan_layers)
  probe = jnp.asarray(windows[:1, :-1])
  before = Llama(cfg).apply({"params": jax.device_get(state["params"])}, probe)
  after = Llama(reloaded_cfg).apply({"params": reloaded}, probe)
  reload_diff = float(jnp.abs(before - after).max())

  prompt = lines[0].split()[:3]
  sampling = SamplingConfig(max_new_tokens=config.sample.max_new_tokens, temperature=config.sample.temperature,
                            top_p=config.sample.top_p, stop_ids=(tokenizer.eos_id,), pad_id=0)
  prompt_ids = [tokenizer.bos_id] + tokenizer.encode(" ".join(prompt))
  sample = generate(reloaded_cfg, reloaded, [prompt_ids], sampling, jax.random.key(train.seed))[0]
  print(f"\nloss {first_loss:.3f} -> {last_loss:.3f} over {train.steps} steps")
  print(f"exported to {export_dir} ({config.export.dtype}); reloaded logits max |diff| = {reload_diff:.2e}")
  print(f"sample: {' '.join(prompt)}{tokenizer.decode(sample, skip_special_tokens=True)}")
  print(f"load it with transformers: AutoModelForCausalLM.from_pretrained({str(export_dir)!r})")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
