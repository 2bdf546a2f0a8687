#!/usr/bin/env bash
# Create (if needed) a TPU VM slice, install this repository on every worker, and train.
#
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR CONFIG[:arg] WORKDIR [--config.x=y ...]
#   launch/tpu_pod.sh mim-v5p us-east5-a v5p-64 configs/mim_stage2.py gs://BUCKET/runs/stage2 \
#       --config.data.data_dir=gs://BUCKET/tfds --config.init.mim=gs://BUCKET/ckpt/stage1_hf
#
# Environment: PROJECT (gcloud project; default: the configured one), RUNTIME
# (TPU software version; default v2-alpha-tpuv5 for v5p, v2-alpha-tpuv5-lite for v5e,
# v2-alpha-tpuv6e for v6e, tpu-ubuntu2204-base otherwise), SPOT=1 for spot capacity,
# REPO_URL (git URL of this repository; default: origin of the local checkout), BRANCH.
#
# Every worker runs the same command; MIM_JAX_DISTRIBUTED=1 makes mim_jax call
# jax.distributed.initialize(), which finds the coordinator and the process
# index from the TPU VM metadata. WORKDIR must be on GCS (all hosts write to it).
# Preemption: the TPU sends SIGTERM; the job saves a checkpoint and exits, and
# running this script again resumes from it.
set -euo pipefail
if [[ $# -lt 5 ]]; then
  sed -n '2,18p' "$0" >&2
  exit 2
fi
name=$1 zone=$2 accelerator=$3 config=$4 workdir=$5
shift 5
[[ $workdir == gs://* ]] || { echo "WORKDIR must be a gs:// path shared by all hosts, got $workdir" >&2; exit 2; }
project_flag=()
[[ -n ${PROJECT:-} ]] && project_flag=(--project "$PROJECT")
case $accelerator in
  v5p-*) runtime=${RUNTIME:-v2-alpha-tpuv5} ;;
  v5litepod-*) runtime=${RUNTIME:-v2-alpha-tpuv5-lite} ;;
  v6e-*) runtime=${RUNTIME:-v2-alpha-tpuv6e} ;;
  *) runtime=${RUNTIME:-tpu-ubuntu2204-base} ;;
esac
repo_url=${REPO_URL:-$(git -C "$(dirname "$0")/.." remote get-url origin)}
branch=${BRANCH:-main}

if ! gcloud compute tpus tpu-vm describe "$name" --zone "$zone" "${project_flag[@]}" >/dev/null 2>&1; then
  spot=()
  [[ ${SPOT:-0} == 1 ]] && spot=(--spot)
  gcloud compute tpus tpu-vm create "$name" --zone "$zone" "${project_flag[@]}" \
    --accelerator-type "$accelerator" --version "$runtime" "${spot[@]}"
fi

quoted_args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" "${project_flag[@]}" --worker=all --command "
set -euo pipefail
if [[ ! -d mim-jax ]]; then git clone --branch $branch $repo_url mim-jax; fi
cd mim-jax && git fetch -q origin $branch && git checkout -q $branch && git pull -q
if [[ ! -x .venv/bin/python ]]; then python3 -m venv .venv; fi
.venv/bin/pip install -q -r requirements.txt 'jax[tpu]==0.10.2'
export MIM_JAX_DISTRIBUTED=1 TF_CPP_MIN_LOG_LEVEL=3
.venv/bin/python -m mim_jax.train --config=$config --workdir=$workdir$quoted_args
"
