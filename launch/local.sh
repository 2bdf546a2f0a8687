#!/usr/bin/env bash
# Train on this machine's devices (CPU, one GPU host, or a single TPU VM).
#
#   launch/local.sh configs/mim_stage2.py:tiny /tmp/mim_stage2_tiny [--config.x=y ...]
#
# Re-running the same command resumes from the newest checkpoint in the workdir.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG[:arg] WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[[ -x $python ]] || python=python3
exec "$python" -m mim_jax.train --config="$config" --workdir="$workdir" "$@"
