#!/usr/bin/env bash
# Runs the GPU check on one NVIDIA GPU: python -m gpt1_jax.bench --suite=gpu.
#
# Correctness (bf16 vs f32 logits; cuDNN and dot_product attention vs XLA;
# 300 steps of pretraining on a shipped corpus vs the same run on CPU), the
# speed of GPT-1 117M in bf16 (batch sizes, scan_layers, remat, fused
# attention, attention dropout; Hugging Face eager and torch.compile for the
# ratio) and a profile summary of the fastest configuration, in under 8
# minutes. Writes OUT_DIR/gpu_check.json, OUT_DIR/gpu_check.md (the tables),
# OUT_DIR/gpu_check.log and OUT_DIR/work/ (pretraining curves, the trace).
# Needs no TensorFlow, tensorflow-datasets, spaCy or ftfy; the pretraining
# rows read configs/ with ml-collections (a small pure-Python wheel).
#
# Usage:
#   launch/gpu_check.sh [--dry_run] [OUT_DIR] [--] [ARGS for python -m gpt1_jax.bench ...]
#
#   launch/gpu_check.sh                             # -> out/gpu_check/
#   launch/gpu_check.sh /tmp/check --budget=300     # a shorter time budget (s)
#   launch/gpu_check.sh /tmp/check --gpu_rows=logits_bf16_vs_f32,speed_b16_xla
#   launch/gpu_check.sh --dry_run                   # print, don't run
#
# ARGS go to the benchmark after this script's own (--suite=gpu, --out,
# --work_dir, --data_dir), so e.g. --budget or --gpu_batches=8,16,32,64 win.
#
# Environment:
#   OUT_DIR       results directory, unless given as the first argument (out/gpu_check)
#   DATA_DIR      --data_dir: a prepared token store for the pretraining rows
#                 (default: the shipped data/imdb/store_first1000)
#   CUDA_VISIBLE_DEVICES   the GPU to check (default 0: the check is for one GPU)
#   XLA_PYTHON_CLIENT_MEM_FRACTION  share of GPU memory JAX takes (0.50 here:
#                 Hugging Face's rows run in a second process beside it)
#   TRITON_GEMM, XLA_FLAGS, TF_CPP_MIN_LOG_LEVEL   as for launch/gpu.sh
#   PYTHON        interpreter (python)
#   DRY_RUN=1     same as --dry_run
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

split_args "$@"
out_dir=${OUT_DIR:-out/gpu_check}
if ((${#FORWARD[@]})) && [[ ${FORWARD[0]} != -* ]]; then
  out_dir=${FORWARD[0]}
  FORWARD=("${FORWARD[@]:1}")
fi
[[ ${out_dir} == /* ]] || out_dir="${PWD}/${out_dir}"

args=(--suite=gpu "--out=${out_dir}/gpu_check.json" "--work_dir=${out_dir}/work")
if [[ -n ${DATA_DIR:-} ]]; then
  data_dir=${DATA_DIR}
  [[ ${data_dir} == /* || ${data_dir} == *://* ]] || data_dir="${PWD}/${data_dir}"
  args+=("--data_dir=${data_dir}")
fi
args+=("${FORWARD[@]}")

XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.50}
set_gpu_env
if ! is_dry_run; then
  mkdir -p "${out_dir}"
  exec > >(tee -a "${out_dir}/gpu_check.log") 2>&1
fi
# From the checkout: the benchmark reads configs/ and data/ there, installed or not.
cd "${REPO_DIR}"
exec_cmd env "${GPU_ENV[@]}" "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}" "${PYTHON}" -m gpt1_jax.bench "${args[@]}"
