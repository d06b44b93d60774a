#!/usr/bin/env bash
# Trains (or fine-tunes) GPT-1 on one NVIDIA GPU, in bf16 with cuDNN attention.
#
# Usage:
#   launch/gpu.sh [--dry_run] [--] [ARGS for python -m gpt1_jax.main ...]
#
#   launch/gpu.sh --workdir=workdirs/gpt1
#   launch/gpu.sh --workdir=workdirs/gpt1 --config.train.num_steps=1000
#   CONFIG=configs/finetune.py:sst2 launch/gpu.sh --workdir=workdirs/sst2
#   launch/gpu.sh --dry_run --workdir=workdirs/gpt1    # print, don't run
#
# ARGS go to the entry point verbatim, after this script's own overrides
# (--config.model.dtype=bfloat16 --config.model.attention=cudnn), so an ARG
# such as --config.model.attention=xla wins.
#
# Environment:
#   CONFIG        --config, unless ARGS give one (configs/pretrain.py:gpt1)
#   WORKDIR       --workdir, unless ARGS give one
#   DATA_DIR      --config.data.dir (output of python -m gpt1_jax.data.prepare)
#   TRITON_GEMM   any (default) | default | off: see set_gpu_env in common.sh
#   XLA_FLAGS     appended to this script's XLA flags, so yours win
#   XLA_PYTHON_CLIENT_MEM_FRACTION   share of GPU memory JAX takes (0.90)
#   TF_CPP_MIN_LOG_LEVEL             C++ log level of TF and XLA (1: no INFO)
#   PYTHON, MODULE  interpreter (python) and entry module (gpt1_jax.main)
#   DRY_RUN=1     same as --dry_run
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

split_args "$@"
main_args "${REPO_DIR}/configs/pretrain.py:gpt1" "${GPU_CONFIG_OVERRIDES[@]}"
set_gpu_env
exec_cmd env "${GPU_ENV[@]}" "${PYTHON}" -m "${MODULE}" "${MAIN_ARGS[@]}"
