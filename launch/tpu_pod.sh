#!/usr/bin/env bash
# Creates a Cloud TPU VM slice (a pod slice: several hosts, or a single host),
# installs gpt1_jax on every worker and trains on all of them at once, with
# the workdir (checkpoints, metrics) and the data on Cloud Storage.
#
# Usage:
#   launch/tpu_pod.sh [OPTIONS] SUBCOMMAND [--] [ARGS for python -m gpt1_jax.main ...]
#
# Subcommands:
#   create   the TPU VM (tpu-vm create; with --queued a queued resource,
#            waited on until ACTIVE)
#   setup    copy this checkout (or clone REPO_URL) to every worker and
#            pip install -e '.[tpu]' there, into a Python 3.12 virtualenv
#            made by uv; then check that JAX sees every TPU chip
#   run      start `python -m gpt1_jax.main --distributed` on every worker in
#            the background (nohup); each writes ~/gpt1_jax_logs/<host>.log.
#            `stop` a previous run first: a TPU serves one process at a time
#   logs     print the end of every worker's log (FOLLOW=1: keep following)
#   stop     SIGTERM the run started by `run` on every worker
#   delete   the TPU VM (with --queued: the queued resource and its TPU VM)
#   plan     here, before renting anything: compile the job's train step for
#            ACCELERATOR_TYPE (x NUM_SLICES) with `python -m gpt1_jax.aot`
#            (needs `pip install -e '.[aot]'`); writes PLAN_DIR/aot.md and
#            fails if the step does not fit in the chips' HBM
#   all      plan, then create, setup, run; stops after plan if it fails
#            (PLAN=0 skips it)
# ARGS (plan, run and all only) go to the entry point verbatim (plan passes
# on --config and --config.* only).
#
#   export TPU_NAME=gpt1-v4-32 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32
#   export WORKDIR=gs://my-bucket/gpt1/run1 DATA_DIR=gs://my-bucket/bookcorpus
#   launch/tpu_pod.sh all --config.train.num_steps=100000
#   launch/tpu_pod.sh logs
#   launch/tpu_pod.sh delete
#   launch/tpu_pod.sh --queued --spot --dry_run all   # print every command
#   ACCELERATOR_TYPE=v5e-256 launch/tpu_pod.sh plan --config.mesh.tensor=4
#
# Options (each also an environment variable):
#   --tpu_name=NAME          TPU_NAME            (required)
#   --zone=ZONE              ZONE                (required)
#   --accelerator_type=TYPE  ACCELERATOR_TYPE    (v4-32)
#   --runtime_version=VER    RUNTIME_VERSION     (default: from the TPU generation)
#   --project=PROJECT        PROJECT             (default: gcloud's own)
#   --queued                 QUEUED=1            use queued resources
#   --spot                   SPOT=1              Spot capacity
#   --dry_run                DRY_RUN=1           print commands, run nothing
# More environment:
#   WORKDIR       gs:// workdir, passed as --workdir (required by run unless
#                 ARGS give --workdir): every host must see the same files
#   DATA_DIR      gs:// output of gpt1_jax.data.prepare: --config.data.dir
#   CONFIG        --config unless ARGS give one (configs/pretrain.py:gpt1)
#   REPO_URL      clone this on the workers instead of copying this checkout
#   REPO_REF      branch or tag of REPO_URL to clone (default: its default)
#   REMOTE_DIR    checkout on the workers, under ~ (gpt1_jax)
#   INSTALL_EXTRAS  pip extras installed on the workers (tpu)
#   REMOTE_PYTHON_VERSION  Python of the workers' virtualenv ~/gpt1_jax_venv (3.12)
#   QUEUED_RESOURCE_ID  name of the queued resource (TPU_NAME-qr)
#   WORKER        workers for `logs` (all); LOG_LINES lines per log (50)
#   NUM_SLICES    slices for plan (1; multi-slice needs the config's mesh.dcn_*)
#   PLAN_DIR      plan's output directory (aot_plan/ACCELERATOR_TYPE)
#   PLAN          0: `all` skips plan (1)
#   GCLOUD        gcloud binary (gcloud); MODULE entry module (gpt1_jax.main)
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

subcommand=""
rest=()
while (($#)); do
  case "$1" in
    --queued) QUEUED=1 ;;
    --spot) SPOT=1 ;;
    --tpu_name=*) TPU_NAME=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --accelerator_type=*) ACCELERATOR_TYPE=${1#*=} ;;
    --runtime_version=*) RUNTIME_VERSION=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      rest+=("$@")
      break
      ;;
    -*) rest+=("$1") ;;
    *)
      if [[ -z ${subcommand} ]]; then subcommand=$1; else rest+=("$1"); fi
      ;;
  esac
  shift
done
split_args "${rest[@]}"

case "${subcommand}" in
  create | setup | run | logs | stop | delete | plan | all) ;;
  "") die "no subcommand; see --help" ;;
  *) die "unknown subcommand '${subcommand}'; see --help" ;;
esac
if ((${#FORWARD[@]})) && [[ ${subcommand} != run && ${subcommand} != all && ${subcommand} != plan ]]; then
  die "'${subcommand}' takes no arguments for gpt1_jax.main (got: $(shell_join "${FORWARD[@]}"))"
fi

ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
if [[ ${subcommand} != plan ]]; then
  [[ -n ${TPU_NAME:-} ]] || die "set TPU_NAME (or --tpu_name=)"
  [[ -n ${ZONE:-} ]] || die "set ZONE (or --zone=)"
fi
[[ ${NUM_SLICES:-1} =~ ^[1-9][0-9]*$ ]] || die "NUM_SLICES must be a positive whole number"
if [[ -z ${RUNTIME_VERSION:-} ]]; then
  # Google's recommended TPU VM images for JAX, by TPU generation.
  case "${ACCELERATOR_TYPE}" in
    v6e-*) RUNTIME_VERSION=v2-alpha-tpuv6e ;;
    v5p-*) RUNTIME_VERSION=v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
    *) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
  esac
fi
GCLOUD=${GCLOUD:-gcloud}
QUEUED_RESOURCE_ID=${QUEUED_RESOURCE_ID:-${TPU_NAME:-}-qr}
REMOTE_DIR=${REMOTE_DIR:-gpt1_jax}
# jax >= 0.7 needs Python >= 3.11 and the TPU VM images ship Ubuntu 22.04's
# 3.10, so setup builds a virtualenv with uv's own Python in ~/gpt1_jax_venv.
REMOTE_PYTHON_VERSION=${REMOTE_PYTHON_VERSION:-3.12}
VENV=gpt1_jax_venv # under ~ on every worker
# shellcheck disable=SC2088  # the ~ is meant for the worker's shell
REMOTE_PYTHON="~/${VENV}/bin/python"
[[ ${LOG_LINES:-50} =~ ^[0-9]+$ ]] || die "LOG_LINES must be a whole number"
LOGS=gpt1_jax_logs # under ~ on every worker
# REMOTE_DIR is deleted and rewritten by setup: keep it a plain path under ~.
[[ ${REMOTE_DIR} =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)*$ && ${REMOTE_DIR} != *..* ]] ||
  die "REMOTE_DIR must be a plain relative path under ~ (got '${REMOTE_DIR}')"
[[ ${REMOTE_PYTHON_VERSION} =~ ^3\.[0-9]+$ ]] || die "REMOTE_PYTHON_VERSION must look like 3.12"

gcloud_flags=(--zone="${ZONE:-}")
[[ -n ${PROJECT:-} ]] && gcloud_flags+=(--project="${PROJECT}")
spot_flag=()
is_true "${SPOT:-0}" && spot_flag=(--spot)

# on_workers WORKER COMMAND: runs the shell line COMMAND on the given workers.
on_workers() {
  run_cmd "${GCLOUD}" compute tpus tpu-vm ssh "${TPU_NAME}" --worker="$1" \
    --command="$2" "${gcloud_flags[@]}"
}

wait_until_active() {
  local state describe=("${GCLOUD}" compute tpus queued-resources describe
    "${QUEUED_RESOURCE_ID}" --format='value(state.state)' "${gcloud_flags[@]}")
  if is_dry_run; then
    run_cmd "${describe[@]}"
    return 0
  fi
  while :; do
    state=$("${describe[@]}")
    echo "queued resource ${QUEUED_RESOURCE_ID}: ${state}" >&2
    case "${state}" in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDED | SUSPENDING) die "queued resource ${QUEUED_RESOURCE_ID} is ${state}" ;;
    esac
    sleep "${POLL_SECONDS:-30}"
  done
}

create() {
  if is_true "${QUEUED:-0}"; then
    run_cmd "${GCLOUD}" compute tpus queued-resources create "${QUEUED_RESOURCE_ID}" \
      --node-id="${TPU_NAME}" --accelerator-type="${ACCELERATOR_TYPE}" \
      --runtime-version="${RUNTIME_VERSION}" "${spot_flag[@]}" "${gcloud_flags[@]}"
    wait_until_active
  else
    run_cmd "${GCLOUD}" compute tpus tpu-vm create "${TPU_NAME}" \
      --accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}" \
      "${spot_flag[@]}" "${gcloud_flags[@]}"
  fi
}

setup() {
  local fetch install check clone tarball=${TMPDIR:-/tmp}/gpt1_jax_src.tgz
  local dir
  dir=$(shell_join "${REMOTE_DIR}")
  if [[ -n ${REPO_URL:-} ]]; then
    clone=(git clone --depth=1)
    [[ -n ${REPO_REF:-} ]] && clone+=(--branch="${REPO_REF}")
    fetch="rm -rf ${dir} && $(shell_join "${clone[@]}" "${REPO_URL}" "${REMOTE_DIR}")"
  else
    # The working tree as it is (uncommitted edits included), less the
    # local environment and outputs.
    run_cmd tar --exclude=./.git --exclude=./.venv --exclude=./workdirs \
      --exclude=./out --exclude=__pycache__ --exclude='*.egg-info' \
      --exclude=.pytest_cache -czf "${tarball}" -C "${REPO_DIR}" .
    run_cmd "${GCLOUD}" compute tpus tpu-vm scp "${tarball}" \
      "${TPU_NAME}:gpt1_jax_src.tgz" --worker=all "${gcloud_flags[@]}"
    fetch="rm -rf ${dir} && mkdir -p ${dir} && tar -xzf gpt1_jax_src.tgz -C ${dir}"
  fi
  # PIP_BREAK_SYSTEM_PACKAGES lets the --user install of uv through on images
  # whose system Python is marked externally managed (PEP 668).
  install="cd ${dir} && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --user --upgrade uv \
&& rm -rf ~/${VENV} && python3 -m uv venv --python ${REMOTE_PYTHON_VERSION} ~/${VENV} \
&& python3 -m uv pip install --python ${REMOTE_PYTHON} -e $(shell_join ".[${INSTALL_EXTRAS:-tpu}]")"
  on_workers all "${fetch} && ${install}"
  check='import jax; jax.distributed.initialize(); print(f"process {jax.process_index()}:'
  check+=' {jax.local_device_count()} of {jax.device_count()} devices")'
  check="${REMOTE_PYTHON} -c $(shell_join "${check}")"
  on_workers all "${check}"
}

run() {
  local train workdir="" arg prev=""
  main_args configs/pretrain.py:gpt1
  for arg in "${MAIN_ARGS[@]}"; do
    case "${prev}|${arg}" in
      *"|--workdir="* | *"|-workdir="*) workdir=${arg#*=} ;;
      "--workdir|"* | "-workdir|"*) workdir=${arg} ;;
    esac
    prev=${arg}
  done
  [[ ${workdir} == gs://* ]] ||
    die "set WORKDIR=gs://BUCKET/PATH: every host writes checkpoints to the same workdir (got '${workdir}')"
  train="${REMOTE_PYTHON} $(shell_join -m "${MODULE}" --distributed "${MAIN_ARGS[@]}")"
  # setsid + nohup + every stream redirected: the run outlives the ssh session,
  # and its pid (also its process group) lets `stop` end it.
  on_workers all "set -e; mkdir -p ~/${LOGS}; cd $(shell_join "${REMOTE_DIR}"); \
setsid nohup ${train} >>~/${LOGS}/\$(hostname).log 2>&1 </dev/null & \
echo \$! >~/${LOGS}/run.pid; echo \"\$(hostname): started pid \$!\""
}

logs() {
  local follow=""
  is_true "${FOLLOW:-0}" && follow=" -F"
  on_workers "${WORKER:-all}" "tail -n ${LOG_LINES:-50}${follow} ~/${LOGS}/*.log"
}

stop() {
  on_workers all "if [ -f ~/${LOGS}/run.pid ]; then pid=\$(cat ~/${LOGS}/run.pid); \
kill -TERM -- -\$pid 2>/dev/null || kill -TERM \$pid 2>/dev/null || true; \
rm -f ~/${LOGS}/run.pid; echo \"\$(hostname): stopped \$pid\"; fi"
}

# plan: the AOT compile of the job for ACCELERATOR_TYPE, on this machine.
plan() {
  local args=() arg
  has_flag config "${FORWARD[@]}" || args+=("--config=${CONFIG:-configs/pretrain.py:gpt1}")
  for arg in "${FORWARD[@]}"; do
    case "${arg}" in
      --config=* | --config.*=*) args+=("${arg}") ;;
    esac
  done
  # From the checkout: the configs' paths are relative to it.
  (cd "${REPO_DIR}" && run_cmd "${PYTHON}" -m gpt1_jax.aot --topology="${ACCELERATOR_TYPE}" \
    --num_slices="${NUM_SLICES:-1}" "${args[@]}" --out="${PLAN_DIR:-aot_plan/${ACCELERATOR_TYPE}}")
}

delete() {
  if is_true "${QUEUED:-0}"; then
    run_cmd "${GCLOUD}" compute tpus queued-resources delete "${QUEUED_RESOURCE_ID}" \
      --force --quiet "${gcloud_flags[@]}"
  else
    run_cmd "${GCLOUD}" compute tpus tpu-vm delete "${TPU_NAME}" --quiet "${gcloud_flags[@]}"
  fi
}

case "${subcommand}" in
  all)
    if is_true "${PLAN:-1}"; then
      plan || die "plan: the job does not compile or fit on ${ACCELERATOR_TYPE}; nothing was created"
    fi
    create
    setup
    run
    is_dry_run || echo "started; follow with: $0 logs (FOLLOW=1), end with: $0 delete" >&2
    ;;
  *) "${subcommand}" ;;
esac
