"""What our programs set up before JAX and TensorFlow load: a quiet console and the compilation cache.

`setup_logging()` leaves our progress lines, warnings and errors; the
libraries' INFO chatter (orbax's per-save lines, jax's backend probing,
TensorFlow's C++ start-up notes, TFDS's "preparing dataset") is dropped.
`--verbose` (`setup_logging(verbose=True)`) or MIM_JAX_VERBOSE=1 brings it back.
TensorFlow and libtpu read their settings from the environment when they
load, so call this before anything imports them (train/loop.py imports
TensorFlow): the programs import their heavy modules inside `main`.

`use_compilation_cache()` turns on JAX's persistent compilation cache, so a
restarted run (a preemption, Ctrl-C, a crash) reloads its compiled step
instead of compiling it again: `~/.cache/mim_jax/jit`, or MIM_JAX_CACHE (the
variable tests/conftest.py reads too; set it empty to turn the cache off).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys

CACHE_DIR = "~/.cache/mim_jax/jit"
# Shorter compiles are cheaper to redo than to read back from disk (jax's own default, too).
CACHE_MIN_COMPILE_S = 1.0


HELP_FLAGS = ("-h", "--help", "-?", "--helpshort", "--helpfull", "--helpxml")


def run_app(main) -> None:
  """absl's `app.run(main)`, except that asking for help exits 0: absl exits 1 after printing it, which scripts
  and CI read as a failure."""
  from absl import app

  asked_for_help = any(arg in HELP_FLAGS for arg in sys.argv[1:sys.argv.index("--") if "--" in sys.argv else None])
  try:
    app.run(main)
  except SystemExit as exit_:
    if asked_for_help and exit_.code == 1:
      sys.exit(0)
    raise


def verbose_requested(flag: bool = False) -> bool:
  return flag or os.environ.get("MIM_JAX_VERBOSE", "0") not in ("", "0")


def setup_logging(verbose: bool = False) -> None:
  """Our INFO lines to stderr as `HH:MM:SS message`; other libraries' only from WARNING (all of it if verbose)."""
  verbose = verbose_requested(verbose)
  # jaxlib's and TensorFlow's C++ INFO and WARNING lines at run time (PjRt device counts, tf.data buffer notes);
  # 2 still shows errors. TensorFlow's import-time notes ignore it: see native_stderr_muted.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")
  _quiet_libtpu_without_tpus()
  from absl import logging as absl_logging

  root = logging.getLogger()
  # absl's app.run() installs its handler on the root logger, at INFO: orbax logs every save step through it.
  root.removeHandler(absl_logging.get_absl_handler())
  for handler in [h for h in root.handlers if getattr(h, "mim_jax", False)]:
    root.removeHandler(handler)
  handler = logging.StreamHandler(sys.stderr)
  handler.mim_jax = True
  handler.setFormatter(_Formatter())
  handler.addFilter(_Filter(verbose))
  root.addHandler(handler)
  root.setLevel(logging.INFO if verbose else logging.WARNING)
  logging.getLogger("mim_jax").setLevel(logging.INFO)
  absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)


@contextlib.contextmanager
def native_stderr_muted(verbose: bool = False):
  """Mutes file descriptor 2 while TensorFlow's shared libraries load: TensorFlow ≥ 2.18 writes its start-up
  notes (oneDNN, CPU features) through C++ absl logging, which TF_CPP_MIN_LOG_LEVEL no longer reaches. Python
  exceptions still print, after; a crash inside the import prints nothing, so rerun with --verbose."""
  if verbose_requested(verbose):
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with open(os.devnull, "w") as null:
    os.dup2(null.fileno(), 2)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


def _quiet_libtpu_without_tpus() -> None:
  """jax[tpu] installs libtpu, and jax starts its TPU client on every host, TPU or not. Off Cloud TPU the
  metadata server is missing, so libtpu logs `E0000 … unexpected worker hostname` and "Failed to find host
  bounds" before giving up. On a host with no TPU chips, a one-host topology (what it would find anyway) lets
  it give up quietly; TPU hosts keep whatever their environment says."""
  try:
    from jax._src import hardware_utils  # the check jax itself makes before its TPU set-up
    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
  except (ImportError, AttributeError):
    return
  if chips == 0:
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_HOST_BOUNDS", "1,1,1")


class _Formatter(logging.Formatter):
  def __init__(self):
    super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

  def format(self, record: logging.LogRecord) -> str:
    time, _, message = super().format(record).partition(" ")
    level = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
    where = "" if record.name.startswith("mim_jax") else f"[{record.module}] "  # a library's: which file said it
    return f"{time} {level}{where}{message}"


class _Filter(logging.Filter):
  """Other libraries from WARNING, deprecation notices left out; on processes other than 0, ours too (their INFO
  repeats process 0's)."""

  def __init__(self, verbose: bool):
    super().__init__()
    self.verbose = verbose

  def filter(self, record: logging.LogRecord) -> bool:
    if self.verbose:
      return True
    if not record.name.startswith("mim_jax"):
      # A library's deprecation notice (TensorFlow's, TFDS's) is addressed to our code, not to who runs it.
      return record.levelno >= logging.WARNING and "deprecated" not in record.getMessage()
    return record.levelno >= logging.WARNING or _process_index() == 0


def _process_index() -> int:
  # jax.process_index() would start the backends, which must wait for jax.distributed.initialize();
  # its state says 0 until then, like a single process.
  from jax._src import distributed
  return distributed.global_state.process_id or 0


def use_compilation_cache() -> str | None:
  """Turns the persistent compilation cache on (unless JAX_COMPILATION_CACHE_DIR already set one); returns its
  directory, None when MIM_JAX_CACHE is set empty."""
  import jax

  path = jax.config.jax_compilation_cache_dir or os.path.expanduser(os.environ.get("MIM_JAX_CACHE", CACHE_DIR))
  if not path:
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_S)
  return path


def define_run_flags(workdir_default: str | None, workdir_help: str) -> None:
  """The flags of our config-driven programs (`python -m mim_jax.train`, the quickstart)."""
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Run config (a configs/*.py file, optionally :arg); set fields with "
                                  "--config.a.b=value, see them all with --print_config.", lock_config=True)
  flags.DEFINE_string("workdir", workdir_default, workdir_help)
  flags.DEFINE_bool("print_config", False, "Print the resolved config (overrides applied) and exit without training.")
  flags.DEFINE_bool("verbose", False, "Also show the libraries' INFO logs (orbax, jax, TensorFlow); or MIM_JAX_VERBOSE=1.")


def start_run(flag_values) -> bool:
  """After `define_run_flags`: False once --print_config has printed the config (the program exits), else
  sets up the console and the compilation cache and returns True."""
  if flag_values.print_config:
    print(flag_values.config)
    return False
  setup_logging(flag_values.verbose)
  use_compilation_cache()
  return True
