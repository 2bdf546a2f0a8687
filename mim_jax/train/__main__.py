r"""Train MIM (stage 1 or 2) or a plain Llama from a config file.

  python -m mim_jax.train --config configs/mim_stage2.py:tiny --workdir /tmp/mim_stage2_tiny
  python -m mim_jax.train --config configs/mim_stage2.py:tiny --print_config   # every field, then exit

Any config field can be set on the command line: `--config.train.steps=100`;
`--print_config` shows them all, overrides applied. Resumes automatically from
the newest checkpoint in --workdir. SIGTERM (preemption) and Ctrl-C (SIGINT)
save a checkpoint at the end of the current step and exit with status 143 and
130 after it is written; a second Ctrl-C stops without saving. The console
shows our progress lines and warnings; `--verbose` adds the libraries' logs.
"""
from __future__ import annotations

import sys

from absl import app, flags

from mim_jax import console

console.define_run_flags(None, "Checkpoints, metrics.jsonl, TensorBoard events and the tokenizer go here.")
flags.adopt_module_key_flags(console)  # --help lists the run flags, which console defines
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS.print_config and FLAGS.workdir is None:
    raise app.UsageError("--workdir is required: checkpoints and metrics go there (it resumes from them)")
  if not console.start_run(FLAGS):
    return
  with console.native_stderr_muted(FLAGS.verbose):
    from mim_jax.train.loop import Preempted, train  # imports TensorFlow

  try:
    train(FLAGS.config, FLAGS.workdir)
  except Preempted as preempted:
    sys.exit(128 + preempted.signum)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  console.run_app(main)
