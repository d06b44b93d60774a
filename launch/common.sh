# shellcheck shell=bash
# Helpers shared by the launchers in this folder. Sourced, never run.
#
# Each launcher builds every command as an argv array and hands it to
# run_cmd/exec_cmd, so the line that --dry_run prints is exactly the argv
# that would run, quoted so that it can be pasted back into a shell.

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  # 4.4 is the first bash where "${empty_array[@]}" is fine under `set -u`.
  echo "gpt1_jax launchers need bash >= 4.4 (this is ${BASH_VERSION})" >&2
  exit 2
fi

# The checkout these launchers belong to (the default --config lives there).
# shellcheck disable=SC2034  # read by the launchers that source this file
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODULE=${MODULE:-gpt1_jax.main}
if [[ -z ${PYTHON:-} ]]; then
  if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi

# usage: prints the calling script's header comment (its usage text).
usage() {
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0" | grep -v '^SBATCH'
}

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

# is_true VALUE: whether an on/off environment variable is on.
is_true() {
  case "${1:-0}" in
    1 | true | True | yes) return 0 ;;
    *) return 1 ;;
  esac
}

is_dry_run() { is_true "${DRY_RUN:-0}"; }

# Prints the arguments as one line of shell words; plain words stay bare.
shell_join() {
  local arg out="" safe='^[A-Za-z0-9_@%+=:,./-]+$' q="'\\''"
  for arg in "$@"; do
    if [[ $arg =~ $safe ]]; then
      out+="${arg} "
    elif [[ $arg == *[[:cntrl:]]* ]]; then
      # Keeps a newline or tab from splitting the printed line: $'...'.
      printf -v arg '%q' "$arg"
      out+="${arg} "
    else
      out+="'${arg//\'/${q}}' "
    fi
  done
  printf '%s' "${out% }"
}

# run_cmd CMD...: runs CMD; under --dry_run prints "+ CMD" on stdout instead.
# A real run echoes the same line on stderr first, like `set -x`.
run_cmd() {
  if is_dry_run; then
    printf '+ %s\n' "$(shell_join "$@")"
  else
    printf '+ %s\n' "$(shell_join "$@")" >&2
    "$@"
  fi
}

# exec_cmd CMD...: as run_cmd, but replaces this shell, so signals reach CMD.
exec_cmd() {
  run_cmd "$@"
  is_dry_run && exit 0
  exec "$@"
}

# has_flag NAME ARGS...: whether ARGS set the absl flag --NAME (or -NAME).
has_flag() {
  local name=$1 arg
  shift
  for arg in "$@"; do
    case "${arg}" in
      "--${name}" | "--${name}="* | "-${name}" | "-${name}="*) return 0 ;;
    esac
  done
  return 1
}

# split_args ARGS...: sets FORWARD to ARGS less --dry_run (which sets DRY_RUN=1).
# Everything after a bare `--` is forwarded untouched; the `--` itself is
# dropped, since absl would read every later flag as a positional argument.
split_args() {
  FORWARD=()
  while (($#)); do
    case "$1" in
      --dry_run | --dry-run) DRY_RUN=1 ;;
      --)
        shift
        FORWARD+=("$@")
        return 0
        ;;
      *) FORWARD+=("$1") ;;
    esac
    shift
  done
}

# main_args DEFAULT_CONFIG EXTRA...: sets MAIN_ARGS, the entry point's
# arguments: --config (CONFIG, else DEFAULT_CONFIG) unless FORWARD has one,
# since config_flags refuses a second --config; --workdir=$WORKDIR unless
# FORWARD has one; --config.data.dir=$DATA_DIR; then EXTRA; then FORWARD,
# last, so that its config overrides win (of two, config_flags keeps the last).
main_args() {
  local default_config=$1
  shift
  MAIN_ARGS=()
  if ! has_flag config "${FORWARD[@]}"; then
    MAIN_ARGS+=("--config=${CONFIG:-${default_config}}")
  fi
  if [[ -n ${WORKDIR:-} ]] && ! has_flag workdir "${FORWARD[@]}"; then
    MAIN_ARGS+=("--workdir=${WORKDIR}")
  fi
  if [[ -n ${DATA_DIR:-} ]]; then
    MAIN_ARGS+=("--config.data.dir=${DATA_DIR}")
  fi
  MAIN_ARGS+=("$@" "${FORWARD[@]}")
}

# set_gpu_env: sets GPU_ENV, the NAME=VALUE words (for `env`) of a training
# process on NVIDIA GPUs.
#
# XLA_FLAGS were checked against the jaxlib the tests install
# (tests/test_launch.py). TRITON_GEMM picks the matmul code generator:
#   any      let the autotuner try Triton for every GEMM it supports, next to
#            cuBLAS (the JAX GPU performance guide's advice);
#   default  XLA's own choice;
#   off      cuBLAS only (rules Triton out when debugging numerics or compiles).
# The latency-hiding scheduler overlaps collectives with compute; it matters
# across GPUs and costs nothing on one. The caller's XLA_FLAGS go last and win.
#
# TF only feeds data; the entry point hides GPUs from it with
# tf.config.set_visible_devices([], 'GPU'), so CUDA_VISIBLE_DEVICES stays
# untouched for JAX. TF_CPP_MIN_LOG_LEVEL=1 drops TF's and XLA's INFO lines.
set_gpu_env() {
  local flags=(--xla_gpu_enable_latency_hiding_scheduler=true)
  case "${TRITON_GEMM:-any}" in
    any) flags+=(--xla_gpu_triton_gemm_any=true) ;;
    default) ;;
    off) flags+=(--xla_gpu_enable_triton_gemm=false) ;;
    *) die "TRITON_GEMM must be any, default or off (got '${TRITON_GEMM}')" ;;
  esac
  [[ -n ${XLA_FLAGS:-} ]] && flags+=("${XLA_FLAGS}")
  # shellcheck disable=SC2034  # read by the launchers that source this file
  GPU_ENV=(
    "XLA_FLAGS=${flags[*]}"
    "XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"
    "TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}"
  )
}

# bf16 compute and cuDNN's fused attention: the fast path on Ampere and later.
# shellcheck disable=SC2034  # read by the launchers that source this file
GPU_CONFIG_OVERRIDES=(--config.model.dtype=bfloat16 --config.model.attention=cudnn)
