"""The multi-host code path for real: 2 processes x 2 CPU devices over jax.distributed (gloo)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, micro_pretrain_config
from gpt1_jax import checkpoint, loop

pytestmark = [pytest.mark.multihost, pytest.mark.slow]

COMMON = [
    "--config.model.n_ctx=32", "--config.model.n_embd=32", "--config.model.n_head=2", "--config.model.n_layer=2",
    "--config.model.vocab_pad_multiple=8", "--config.train.batch_size=8", "--config.train.learning_rate=3e-3",
    "--config.train.warmup_steps=5", "--config.checkpoint.keep=10", "--config.log.every_steps=5",
    "--config.log.measure_peak=False", "--config.log.peak_flops_per_device=1e12", "--config.eval.batch_size=8"
]


def multihost(args, log_dir, timeout=600):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env.update(PYTHON=sys.executable, NUM_PROCESSES="2", DEVICES_PER_PROCESS="2", LOG_DIR=str(log_dir))
  out = subprocess.run(["bash", os.path.join(REPO, "launch", "local_multihost.sh"), *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
  logs = out.stderr[-4000:]
  peer = os.path.join(log_dir, "process_1.log")
  if os.path.exists(peer):
    logs += "\n--- process 1 ---\n" + open(peer).read()[-3000:]
  return out.returncode, logs


def single_process_config(data_dir, steps, num_devices, **mesh):
  return micro_pretrain_config(data_dir, steps, num_devices=num_devices, **{"eval.every_steps": 10}, **{
      f"mesh.{k}": v for k, v in mesh.items()
  })


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], r["train/loss"]) for r in map(json.loads, f) if "train/loss" in r]


def test_two_processes_pretrain_preempt_resume_match_one_process(lm_data_dir, tmp_path):
  wd = str(tmp_path / "mh")
  args = [
      "--config=configs/pretrain.py:tiny", f"--workdir={wd}", f"--config.data.dir={lm_data_dir}",
      "--config.train.num_steps=20", "--config.checkpoint.every_steps=10", "--config.eval.every_steps=10", *COMMON
  ]
  code, logs = multihost(args + ["--config.debug.preempt_at_step=10"], tmp_path / "logs1")
  print(f"injected: preemption at step 10 on both processes -> exit status {code}")
  assert code == loop.EXIT_PREEMPTED, logs
  assert checkpoint.Checkpoints(os.path.join(wd, "checkpoints")).latest_step() == 10
  code, logs = multihost(args, tmp_path / "logs2")
  assert code == 0, logs

  ref = str(tmp_path / "ref")
  loop.train_and_evaluate(single_process_config(lm_data_dir, 20, 4), ref)
  a, b = losses(wd), losses(ref)
  assert [s for s, _ in a] == [s for s, _ in b]
  np.testing.assert_allclose([l for _, l in a], [l for _, l in b], atol=1e-5)
  _, pa = checkpoint.load_params(wd)
  _, pb = checkpoint.load_params(ref)
  for x, y in zip(*(map(np.asarray, __import__("jax").tree.leaves(t)) for t in (pa, pb))):
    np.testing.assert_allclose(x, y, atol=1e-5)
  print("verified: 2 processes x 2 devices, preempted and resumed, equal 1 process x 4 devices (atol 1e-5)")

  # The 2-process checkpoint restores in one process on another mesh (fsdp x tensor).
  more = single_process_config(lm_data_dir, 30, 4, data=1, fsdp=2, tensor=2)
  result = loop.train_and_evaluate(more, wd)
  assert result["step"] == 30


def test_two_processes_finetune(tmp_path):
  wd = str(tmp_path / "ft")
  args = [
      "--config=configs/finetune.py:sst2_tiny", f"--workdir={wd}",
      f"--config.task.source={os.path.join(REPO, 'data', 'sst2')}", "--config.task.max_train_examples=32",
      "--config.train.num_epochs=1", "--config.eval.batch_size=64", *COMMON, "--config.train.batch_size=8",
      "--config.checkpoint.every_steps=2"
  ]
  code, logs = multihost(args, tmp_path / "logs")
  assert code == 0, logs
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  acc = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
  assert len(acc) == 1 and 0 <= acc[0] <= 1
  with open(os.path.join(wd, "predictions", "SST-2.tsv")) as f:
    assert len(f.read().splitlines()) == 873  # header + every dev example, once
