r"""The quickstart job: train a Llama on text, export to Hugging Face, reload, sample.

  python -m mim_jax.quickstart --config configs/quickstart.py --workdir /tmp/mim_quickstart

Training is `python -m mim_jax.train` itself (train/loop.py, built by
train/setup.py), so the quickstart shows the real loop: checkpoints,
metrics, resume. With the default config everything is random-init and tiny
(a sentencepiece tokenizer is trained on the bundled text), so it runs in
about a minute on a laptop CPU. `--config.init.llm` (a HF Llama directory)
and `--config.tokenizer` fine-tune real weights instead; `--print_config`
lists every field. Ctrl-C saves a checkpoint and the same command resumes;
`--verbose` shows the libraries' logs too.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import flags

from mim_jax import console

console.define_run_flags("/tmp/mim_quickstart", "Where the run, the tokenizer and the HF export are written.")
flags.adopt_module_key_flags(console)  # --help lists the run flags, which console defines
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not console.start_run(FLAGS):
    return
  with console.native_stderr_muted(FLAGS.verbose):  # these import TensorFlow
    from mim_jax.convert.llama import load_hf_llama
    from mim_jax.data.text_windows import read_text_lines, token_windows
    from mim_jax.infer.generate import SamplingConfig, generate
    from mim_jax.models.llama import Llama
    from mim_jax.train.checkpoint import restore_params
    from mim_jax.train.export import export, run_config, run_tokenizer
    from mim_jax.train.loop import Preempted, train

  config, workdir = FLAGS.config, Path(FLAGS.workdir)
  try:
    train(config, workdir)
  except Preempted as preempted:
    sys.exit(128 + preempted.signum)
  # The whole run's history, also when this call resumed (or found it finished).
  history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]

  export_dir = workdir / "hf_export"
  export(str(workdir), str(export_dir), dtype=config.export.dtype,
         max_shard_bytes=int(config.export.max_shard_gb * 2**30))
  params, meta = restore_params(workdir / "checkpoints")
  cfg, tokenizer = run_config(meta), run_tokenizer(workdir, meta)
  reloaded_cfg, reloaded = load_hf_llama(export_dir, scan_layers=cfg.scan_layers)
  lines = read_text_lines(config.data.text_file)
  probe = jnp.asarray(token_windows(tokenizer, lines, config.train.seq_len)[:1, :-1])
  before = Llama(cfg).apply({"params": jax.device_get(params)}, probe)
  reload_diff = float(jnp.abs(before - Llama(reloaded_cfg).apply({"params": reloaded}, probe)).max())

  prompt = lines[0].split()[:3]
  sampling = SamplingConfig(max_new_tokens=config.sample.max_new_tokens, temperature=config.sample.temperature,
                            top_p=config.sample.top_p, stop_ids=(tokenizer.eos_id,), pad_id=0)
  prompt_ids = [tokenizer.bos_id] + tokenizer.encode(" ".join(prompt))
  sample = generate(reloaded_cfg, reloaded, [prompt_ids], sampling, jax.random.key(config.train.seed))[0]
  print(f"\nloss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f} over {history[-1]['step']} steps")
  print(f"exported to {export_dir} ({config.export.dtype}); reloaded logits max |diff| = {reload_diff:.2e}")
  print(f"sample: {' '.join(prompt)}{tokenizer.decode(sample, skip_special_tokens=True)}")
  print(f"load it with transformers: AutoModelForCausalLM.from_pretrained({str(export_dir)!r})")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  console.run_app(main)
