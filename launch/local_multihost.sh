#!/usr/bin/env bash
# Runs a multi-host JAX job on this one machine: NUM_PROCESSES processes on
# 127.0.0.1, each with DEVICES_PER_PROCESS CPU devices, joined through
# jax.distributed. It exercises the multi-host code paths (process-local data,
# global arrays, checkpoints written by several processes) without a cluster.
#
# Usage:
#   launch/local_multihost.sh [--dry_run] [--] [ARGS for python -m gpt1_jax.main ...]
#
#   launch/local_multihost.sh --workdir=/tmp/gpt1_mh --config.train.num_steps=20
#   NUM_PROCESSES=4 DEVICES_PER_PROCESS=1 launch/local_multihost.sh --workdir=/tmp/w
#   launch/local_multihost.sh --dry_run --workdir=/tmp/w   # print the N commands
#
# Process 0 writes to this terminal; process i > 0 to $LOG_DIR/process_i.log.
# The script waits for all of them. As soon as one fails it stops the others
# (SIGTERM, then SIGKILL after KILL_GRACE_SECONDS) and exits with the failed
# process's status. Ctrl-C or SIGTERM is passed on to every process as SIGTERM
# (each finishes its step, saves and exits 75); the script waits up to
# STOP_GRACE_SECONDS for them and exits 75 when every process did, so a
# scheduler can requeue the job, else 130 (Ctrl-C) or 143 (SIGTERM).
#
# Environment:
#   NUM_PROCESSES        processes (2)
#   DEVICES_PER_PROCESS  CPU devices per process (2)
#   PORT                 coordinator port on 127.0.0.1 (default: a free one)
#   LOG_DIR              logs of processes 1.. (/tmp/gpt1_jax_multihost)
#   KILL_GRACE_SECONDS   time between SIGTERM and SIGKILL after a process failed (5)
#   STOP_GRACE_SECONDS   time to save and exit after Ctrl-C / SIGTERM before SIGKILL (300)
#   CONFIG, WORKDIR      --config and --workdir, unless ARGS give them
#   DATA_DIR             --config.data.dir
#   XLA_FLAGS            kept, before this script's device-count flag
#   PYTHON, MODULE       interpreter (python) and entry module (gpt1_jax.main)
#   DRY_RUN=1            same as --dry_run
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

split_args "$@"
NUM_PROCESSES=${NUM_PROCESSES:-2}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-2}
KILL_GRACE_SECONDS=${KILL_GRACE_SECONDS:-5}
STOP_GRACE_SECONDS=${STOP_GRACE_SECONDS:-300}
for var in NUM_PROCESSES DEVICES_PER_PROCESS KILL_GRACE_SECONDS STOP_GRACE_SECONDS ${PORT:+PORT}; do
  [[ ${!var} =~ ^[0-9]+$ ]] || die "${var} must be a whole number (got '${!var}')"
done
((NUM_PROCESSES >= 1 && DEVICES_PER_PROCESS >= 1)) ||
  die "NUM_PROCESSES and DEVICES_PER_PROCESS must be at least 1"
num_processes=${NUM_PROCESSES}
devices_per_process=${DEVICES_PER_PROCESS}
grace=${KILL_GRACE_SECONDS}
log_dir=${LOG_DIR:-/tmp/gpt1_jax_multihost}

if [[ -z ${PORT:-} ]]; then
  # Free now; the coordinator (process 0) binds it a moment later.
  PORT=$("${PYTHON}" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
fi
main_args "${REPO_DIR}/configs/pretrain.py:gpt1"
xla_flags="${XLA_FLAGS:+${XLA_FLAGS} }--xla_force_host_platform_device_count=${devices_per_process}"

# process_cmd I: sets CMD, the command line of process I.
process_cmd() {
  CMD=(
    env JAX_PLATFORMS=cpu "XLA_FLAGS=${xla_flags}"
    "${PYTHON}" -m "${MODULE}"
    --coordinator_address="127.0.0.1:${PORT}"
    --num_processes="${num_processes}"
    --process_id="$1"
    "${MAIN_ARGS[@]}"
  )
}

# describe I: the shell line for process I, with its redirection.
describe() {
  local line
  process_cmd "$1"
  line=$(shell_join "${CMD[@]}")
  if (($1 > 0)); then
    line+=" >$(shell_join "${log_dir}/process_$1.log") 2>&1"
  fi
  printf '+ %s &\n' "${line}"
}

if is_dry_run; then
  printf '+ %s\n' "$(shell_join mkdir -p "${log_dir}")"
  for ((i = 0; i < num_processes; i++)); do describe "${i}"; done
  exit 0
fi

pids=()      # pids[i]: process i; with setsid also its process group
reaped=()    # reaped[i]=1 once `wait` has collected process i
statuses=()  # statuses[i]: process i's exit status, once reaped

# running PID: whether PID is alive (an unreaped zombie counts as gone).
running() {
  local stat
  kill -0 "$1" 2>/dev/null || return 1
  stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 0
  [[ ${stat} != Z* ]]
}

# signal_all SIG: sends SIG to each process's group (the process and whatever
# it started, even after the process itself has been reaped), or to the bare
# process where it has no group of its own.
signal_all() {
  local i
  for i in "${!pids[@]}"; do
    kill -s "$1" -- "-${pids[i]}" 2>/dev/null ||
      { [[ -z ${reaped[i]:-} ]] && kill -s "$1" "${pids[i]}" 2>/dev/null; } || true
  done
}

any_running() {
  local i
  for i in "${!pids[@]}"; do
    [[ -z ${reaped[i]:-} ]] && running "${pids[i]}" && return 0
  done
  return 1
}

# reap_finished: collects the status of every process that has exited; sets
# `failed` to the index of the first one that failed ('' if none). Not run in
# a $(...) subshell: it updates reaped and statuses.
reap_finished() {
  local i rc
  failed=""
  for i in "${!pids[@]}"; do
    [[ -z ${reaped[i]:-} ]] || continue
    running "${pids[i]}" && continue
    rc=0
    wait "${pids[i]}" 2>/dev/null || rc=$?
    reaped[i]=1
    statuses[i]=${rc}
    ((rc == 0)) || [[ -n ${failed} ]] || failed=${i}
  done
}

# nap: sleeps a little in a way a trapped signal interrupts at once (a bare
# `sleep` in the foreground, or `wait -n`, can hold the trap back).
nap() {
  sleep 0.2 &
  wait $! 2>/dev/null || true
}

# stop_all GRACE: SIGTERM to every process, SIGKILL to those left after GRACE seconds; reaps all.
stop_all() {
  local i deadline=$((SECONDS + $1))
  signal_all TERM
  while any_running && ((SECONDS < deadline)); do nap; done
  any_running && echo "local_multihost.sh: killing the processes still running after $1 s" >&2
  signal_all KILL
  reap_finished
  for i in "${!pids[@]}"; do
    [[ -n ${reaped[i]:-} ]] || { wait "${pids[i]}" 2>/dev/null || true; }
  done
}

# on_signal STATUS: Ctrl-C / SIGTERM. Every process saves and exits 75 ("try
# again"): then so does the launcher; otherwise it exits STATUS.
on_signal() {
  local i all_saved=1
  trap - INT TERM  # a second Ctrl-C ends the launcher at once (cleanup still runs)
  echo "local_multihost.sh: stopping every process (SIGTERM: each saves, then exits 75)" >&2
  stop_all "${STOP_GRACE_SECONDS}"
  for i in "${!pids[@]}"; do
    [[ ${statuses[i]:-} == 75 ]] || all_saved=0
  done
  if ((all_saved)); then
    echo "local_multihost.sh: every process saved and exited 75" >&2
    exit 75
  fi
  exit "$1"
}

# On any exit: stop whatever still runs and reap it, so nothing outlives us.
cleanup() {
  local rc=$?
  trap - INT TERM
  if any_running; then
    echo "local_multihost.sh: stopping the remaining processes" >&2
    stop_all "${grace}"
  fi
  exit "${rc}"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# A process of its own group per child, when setsid exists, so that stopping
# a process also stops anything it started.
start() {
  if command -v setsid >/dev/null 2>&1; then
    setsid "$@" &
  else
    "$@" &
  fi
}

mkdir -p "${log_dir}"
for ((i = 0; i < num_processes; i++)); do
  describe "${i}" >&2
  process_cmd "${i}"
  if ((i == 0)); then
    start "${CMD[@]}"
  else
    start "${CMD[@]}" >"${log_dir}/process_${i}.log" 2>&1
  fi
  pids[i]=$!
done

# Poll rather than `wait -n`: the loop sees every exit with its process index,
# and a signal's trap runs within 0.2 s however loaded the machine is.
while :; do
  reap_finished
  if [[ -n ${failed} ]]; then
    echo "local_multihost.sh: process ${failed} exited with status ${statuses[failed]}" >&2
    if ((failed != 0)); then
      echo "--- last lines of ${log_dir}/process_${failed}.log ---" >&2
      tail -n 20 "${log_dir}/process_${failed}.log" >&2 || true
    fi
    exit "${statuses[failed]}"
  fi
  ((${#reaped[@]} < num_processes)) || break
  nap
done
echo "local_multihost.sh: all ${num_processes} processes finished" >&2
