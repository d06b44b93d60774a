"""Fault injection: kill -9 (including mid-save), SIGTERM, corrupt checkpoints, NaNs, bad input.

Each test prints what it injected and what it verified (`pytest -s` shows it).
"""

import glob
import json
import os
import random
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from conftest import REPO, load_config, micro_cli, micro_model
from gpt1_jax import checkpoint, loop

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
STEPS = 40


def run(cmd, timeout=300):
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def params_equal(a_dir, b_dir):
  _, a = checkpoint.load_params(a_dir)
  _, b = checkpoint.load_params(b_dir)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def metrics(wd):
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(l).items() if not k.startswith("perf/")} for l in f]


@pytest.fixture(scope="module")
def reference(lm_data_dir, tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("reference"))
  out = run(micro_cli(wd, lm_data_dir, STEPS))
  assert out.returncode == 0, out.stderr[-3000:]
  return wd


def kill_when(proc, condition, deadline_s=240):
  deadline = time.time() + deadline_s
  while time.time() < deadline and proc.poll() is None:
    if condition():
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      return True
    time.sleep(0.005)
  return False


def test_kill_9_at_random_points_including_mid_save(lm_data_dir, reference, tmp_path):
  wd = str(tmp_path / "run")
  ck = os.path.join(wd, "checkpoints")
  rng = random.Random(1234)
  points = [("during an async save", lambda: bool(glob.glob(os.path.join(ck, "*orbax-checkpoint-tmp*"))))]
  for _ in range(2):
    delay = rng.uniform(0.5, 6.0)
    points.append((f"{delay:.2f}s after training started", lambda d=delay, t=[None]: _after_first_metrics(wd, d, t)))
  for what, cond in points:
    proc = subprocess.Popen(micro_cli(wd, lm_data_dir, STEPS), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    killed = kill_when(proc, cond)
    steps = sorted(os.listdir(ck)) if os.path.isdir(ck) else []
    print(f"injected: kill -9 {what} (killed={killed}); checkpoint dir then held {steps}")
  out = run(micro_cli(wd, lm_data_dir, STEPS))
  assert out.returncode == 0, out.stderr[-3000:]
  assert not glob.glob(os.path.join(ck, "*orbax-checkpoint-tmp*"))
  params_equal(wd, reference)
  assert metrics(wd) == metrics(reference)
  print("verified: final parameters bitwise equal and metrics.jsonl equal to the uninterrupted run")


def _after_first_metrics(wd, delay, t0):
  if not os.path.exists(os.path.join(wd, "metrics.jsonl")):
    return False
  if t0[0] is None:
    t0[0] = time.time()
  return time.time() - t0[0] >= delay


def test_sigterm_saves_exits_75_and_resumes(lm_data_dir, reference, tmp_path):
  wd = str(tmp_path / "run")
  proc = subprocess.Popen(micro_cli(wd, lm_data_dir, STEPS), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and not os.path.exists(os.path.join(wd, "metrics.jsonl")):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  print(f"injected: SIGTERM mid-run -> exit status {proc.returncode}")
  assert proc.returncode == loop.EXIT_PREEMPTED, err[-3000:]
  assert "received SIGTERM" in err and "saved step" in err
  saved = checkpoint.Checkpoints(os.path.join(wd, "checkpoints")).latest_step()
  assert saved is not None and saved < STEPS
  out = run(micro_cli(wd, lm_data_dir, STEPS))
  assert out.returncode == 0, out.stderr[-3000:]
  params_equal(wd, reference)
  assert metrics(wd) == metrics(reference)
  print(f"verified: saved step {saved} on SIGTERM; the resumed run equals the uninterrupted one bitwise")


def _truncate_newest(wd):
  ck = os.path.join(wd, "checkpoints")
  newest = max(int(d) for d in os.listdir(ck) if d.isdigit())
  files = [
      f for f in glob.glob(os.path.join(ck, str(newest), "state", "**", "*"), recursive=True)
      if os.path.isfile(f) and os.path.getsize(f) > 1000
  ]
  target = max(files, key=os.path.getsize)
  with open(target, "r+b") as f:
    f.truncate(os.path.getsize(target) // 2)
  return newest, target


def test_corrupt_newest_checkpoint_stops_or_falls_back(lm_data_dir, reference, tmp_path):
  import shutil
  wd = str(tmp_path / "run")
  shutil.copytree(reference, wd)
  newest, target = _truncate_newest(wd)
  print(f"injected: truncated {os.path.relpath(target, wd)} of step {newest}")
  cmd = micro_cli(wd, lm_data_dir, STEPS + 10)
  out = run(cmd)
  assert out.returncode != 0
  assert f"checkpoints/{newest} is corrupt or incomplete" in out.stderr
  assert "allow_fallback" in out.stderr
  out = run(cmd + ["--config.checkpoint.allow_fallback=True"])
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resumed from {os.path.join(wd, 'checkpoints', str(newest - 10))}" in out.stderr
  assert os.listdir(os.path.join(wd, "corrupt_checkpoints"))[0].startswith(f"{newest}-")
  print(f"verified: refused to start on the corrupt step {newest}; with allow_fallback resumed from {newest - 10}")


def test_nan_at_known_step_stops_with_the_step_and_last_checkpoint(lm_data_dir, tmp_path):
  wd = str(tmp_path / "run")
  out = run(micro_cli(wd, lm_data_dir, STEPS, ["--config.debug.nan_at_step=12"]))
  print("injected: NaN loss and gradients at step index 12 (the 13th update)")
  assert out.returncode != 0
  assert "non-finite loss or gradient norm at step 13" in out.stderr
  assert "global batch #12" in out.stderr
  assert f"last good checkpoint: {os.path.join(wd, 'checkpoints', '10')}" in out.stderr
  assert checkpoint.Checkpoints(os.path.join(wd, "checkpoints")).all_steps() == [10]
  print("verified: the run stopped at step 13 naming the batch and checkpoint 10; nothing after it was saved")


def test_nan_skip_mode_counts_and_keeps_going(lm_data_dir, tmp_path):
  c = micro_model(load_config("pretrain", "tiny"))
  c.data.dir = lm_data_dir
  c.train.update(num_steps=10, batch_size=8, on_nonfinite="skip")
  c.log.update(every_steps=5, measure_peak=False, peak_flops_per_device=1e12)
  c.eval.every_steps = 0
  c.mesh.num_devices = 1
  c.debug.nan_at_step = 3
  wd = str(tmp_path)
  result = loop.train_and_evaluate(c, wd)
  rows = metrics(wd)
  assert rows[0]["train/nonfinite_steps"] == 1 and rows[1]["train/nonfinite_steps"] == 0
  _, params = checkpoint.load_params(wd)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
  assert np.isfinite(result["train/loss"])
  print("verified: the NaN update was skipped and counted; parameters stayed finite")


@pytest.mark.parametrize("change, message", [
    ({
        "model.n_head": 5
    }, "n_embd=32 is not divisible by n_head=5"),
    ({
        "train.batch_size": 7
    }, "does not divide over the batch mesh axes"),
    ({
        "mesh.data": 3
    }, "uses 3 devices but 8 are available"),
    ({
        "data.seq_len": 64
    }, "exceeds model.n_ctx=32"),
    ({
        "train.grad_accum_steps": 3
    }, "not divisible by train.grad_accum_steps=3"),
])
def test_config_errors_before_compiling(lm_data_dir, tmp_path, change, message):
  c = micro_model(load_config("pretrain", "tiny"))
  c.data.dir = lm_data_dir
  c.train.batch_size = 8
  c.mesh.num_devices = 0 if "mesh.data" in change else 8
  for k, v in change.items():
    section, key = k.split(".")
    c[section][key] = v
  with pytest.raises(ValueError, match=message):
    loop.train_and_evaluate(c, str(tmp_path))
  print(f"injected: {change} -> {message!r}")


def test_data_errors_name_the_path(lm_data_dir, tmp_path):
  import shutil
  bad = str(tmp_path / "data")
  shutil.copytree(lm_data_dir, bad)
  shard = sorted(glob.glob(os.path.join(bad, "train-*")))[0]
  os.remove(shard)
  c = micro_model(load_config("pretrain", "tiny"))
  c.data.dir = bad
  c.mesh.num_devices = 1
  with pytest.raises(Exception, match=os.path.basename(shard)):
    loop.train_and_evaluate(c, str(tmp_path / "wd"))
  manifest = os.path.join(lm_data_dir, "manifest.json")
  with open(manifest) as f:
    m = json.load(f)
  shutil.rmtree(bad)
  shutil.copytree(lm_data_dir, bad)
  m["tokenizer_fingerprint"] = "0" * 64
  with open(os.path.join(bad, "manifest.json"), "w") as f:
    json.dump(m, f)
  with pytest.raises(Exception, match="tokenised with vocabulary 0000000000000000.*configured tokenizer is"):
    loop.train_and_evaluate(c, str(tmp_path / "wd2"))
  print("verified: a missing shard and a foreign tokenizer are refused naming the file / fingerprint")


def test_malformed_task_file_names_file_and_line(tmp_path):
  (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\t7\n")
  (tmp_path / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")
  c = micro_model(load_config("finetune", "sst2_tiny"))
  c.task.source = str(tmp_path)
  c.mesh.num_devices = 1
  with pytest.raises(ValueError, match=r"train.tsv:3"):
    loop.train_and_evaluate(c, str(tmp_path / "wd"))
  print("injected: label 7 on line 3 of train.tsv -> error naming train.tsv:3")
