r"""Train MIM (stage 1 or 2) or a plain Llama from a config file.

  python -m mim_jax.train --config configs/mim_stage2.py:tiny --workdir /tmp/mim_stage2_tiny

Resumes automatically from the newest checkpoint in --workdir; SIGTERM
(preemption) saves a checkpoint and exits with status 143 after it is written.
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from mim_jax.train.loop import Preempted, train

config_flags.DEFINE_config_file("config", None, "Run config (a configs/*.py file, optionally :arg).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl, TensorBoard events and the tokenizer go here.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  try:
    train(FLAGS.config, FLAGS.workdir)
  except Preempted:
    sys.exit(143)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
