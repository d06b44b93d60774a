"""A workdir belongs to one run, and a refused run changes nothing in it (issue 15).

Each test reproduces a way a run used to lose or mislead, then checks the
refusal names what and where, happens before any step, and leaves every file
of the workdir byte-identical.
"""

import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, load_config, micro_cli, micro_model, micro_pretrain_config
from gpt1_jax import config as config_lib
from gpt1_jax import checkpoint, loop
from gpt1_jax import workdir as workdir_lib

pytestmark = [pytest.mark.reliability]


def snapshot(wd):
  """``{relative path: sha256}`` of every file under ``wd``."""
  out = {}
  for path in glob.glob(os.path.join(wd, "**", "*"), recursive=True) + glob.glob(os.path.join(wd, ".lock")):
    if os.path.isfile(path):
      with open(path, "rb") as f:
        out[os.path.relpath(path, wd)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def pretrained(lm_data_dir, tmp_path_factory):
  """A finished 20-step micro pretraining run (constant schedule), checkpoints at 10 and 20."""
  wd = str(tmp_path_factory.mktemp("pretrained") / "run")
  loop.train_and_evaluate(micro_pretrain_config(lm_data_dir, steps=20), wd)
  return wd


def copy_of(src, tmp_path):
  dst = str(tmp_path / "wd")
  shutil.copytree(src, dst)
  return dst


def test_lock_refuses_a_second_run_before_reading_data(tmp_path):
  wd = str(tmp_path / "wd")
  c = micro_pretrain_config("/nonexistent/data", steps=5)  # a data error would come later: the lock is first
  with workdir_lib.Lock(wd):
    owner = json.loads(open(os.path.join(wd, ".lock")).read())
    with pytest.raises(workdir_lib.WorkdirError, match=rf"in use by another run: pid {os.getpid()} on host"):
      loop.train_and_evaluate(c, wd)
    assert json.loads(open(os.path.join(wd, ".lock")).read()) == owner  # the refused run left the owner's record
  assert open(os.path.join(wd, ".lock")).read() == ""  # released: empty, never unlinked
  print("verified: a second run is refused naming the first's pid, host and start, before any data is read")


@pytest.mark.slow
def test_concurrent_cli_runs_and_kill_9_takeover(lm_data_dir, tmp_path):
  wd = str(tmp_path / "wd")
  first = subprocess.Popen(micro_cli(wd, lm_data_dir, 100_000), cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.exists(os.path.join(wd, "metrics.jsonl")):
      assert first.poll() is None, "the first run exited early"
      time.sleep(0.1)
    second = subprocess.run(micro_cli(wd, lm_data_dir, 50, ["--config.train.learning_rate=1e-3"]), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    print(f"second run: exit {second.returncode}: {second.stderr.strip().splitlines()[-1]}")
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1].startswith(f"error: {wd} is in use by another run: pid {first.pid}")
    assert "step " not in second.stderr  # it never trained
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  third = subprocess.run(micro_cli(wd, lm_data_dir, 20, ["--config.checkpoint.allow_config_change=True"]), cwd=REPO,
                         capture_output=True, text=True, timeout=300)
  assert third.returncode == 0, third.stderr[-3000:]
  assert f"the previous run there (pid {first.pid} on host" in third.stderr
  print("verified: after kill -9 of the owner, the next run takes the workdir over and says whose it was")


@pytest.mark.parametrize("entry, kind", [("checkpoints", "file"), ("metrics.jsonl", "dir"), ("best", "file")])
def test_workdir_layout_errors_come_before_any_work(tmp_path, entry, kind):
  wd = tmp_path / "wd"
  wd.mkdir()
  (wd / entry).mkdir() if kind == "dir" else (wd / entry).write_text("x")
  before = snapshot(str(wd))
  with pytest.raises(workdir_lib.WorkdirError, match=rf"{wd / entry} exists but is not a"):
    loop.train_and_evaluate(micro_pretrain_config("/nonexistent/data", steps=5), str(wd))
  assert snapshot(str(wd)) == before
  print(f"injected: {entry} as a {kind} -> refused before the data was read")


def _flip_bits(step_dir):
  files = [
      f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
      if os.path.isfile(f) and os.path.getsize(f) > 100_000
  ]
  target = max(files, key=os.path.getsize)
  with open(target, "r+b") as f:
    data = bytearray(f.read())
    for off in (len(data) // 3, len(data) // 2):
      data[off] ^= 0x10  # one bit each, same size
    f.seek(0)
    f.write(data)
  return target


def test_bit_flip_is_a_corrupt_checkpoint(pretrained, lm_data_dir, tmp_path):
  wd = copy_of(pretrained, tmp_path)
  target = _flip_bits(os.path.join(wd, "checkpoints", "20"))
  print(f"injected: 2 flipped bits in {os.path.relpath(target, wd)} (same size)")
  before = snapshot(wd)
  c = micro_pretrain_config(lm_data_dir, steps=30)
  with pytest.raises(
      checkpoint.CheckpointError, match=r"(?s)checkpoints/20 is corrupt: its bytes changed.*checksum "
      r"mismatch in .*allow_fallback"):
    loop.train_and_evaluate(c, wd)
  assert snapshot(wd) == before
  c.checkpoint.allow_fallback = True
  result = loop.train_and_evaluate(c, wd)
  assert result["step"] == 30
  assert os.listdir(os.path.join(wd, "corrupt_checkpoints"))[0].startswith("20-")
  print("verified: the flip is reported as a corrupt checkpoint; with allow_fallback it is quarantined and the "
        "run resumes from step 10")


def test_checksums_are_mesh_independent_and_see_every_flipped_bit():
  from jax.sharding import NamedSharding, PartitionSpec as P
  x = np.random.default_rng(0).standard_normal((16, 24)).astype(np.float32)
  mesh = jax.make_mesh((4, 2), ("a", "b"))
  sharded = jax.device_put(x, NamedSharding(mesh, P("a", "b")))
  tree = {"w": x, "i": np.arange(5, dtype=np.int32), "h": x.astype(jax.numpy.bfloat16)}
  ref = checkpoint.checksums(tree)
  assert checkpoint.checksums({**tree, "w": sharded}) == ref
  # The device implementation (used on accelerators) gives the numpy one's numbers (CPU), sharded too.
  device = jax.device_get(checkpoint._tree_checksums({**tree, "w": sharded}))
  assert {k: [int(v) for v in np.asarray(device[k[2:-2]])] for k in ref} == ref
  big = np.random.default_rng(2).standard_normal((3000, 1500)).astype(np.float32)  # several numpy chunks
  big_sh = jax.device_put(big, NamedSharding(mesh, P("a", "b")))
  assert checkpoint.checksums({"b": big_sh}) == checkpoint.checksums({"b": big}) == {
      "['b']": [int(v) for v in np.asarray(jax.device_get(checkpoint._tree_checksums({"b": big}))["b"])]
  }
  # Independent reference: the same sums in Python integers.
  words = [int(v) for v in x.view(np.uint32).reshape(-1)]
  assert ref["['w']"] == [sum(words) % 2**32, sum(v * v for v in words) % 2**32]
  rng = np.random.default_rng(1)
  for _ in range(20):
    y = x.copy().reshape(-1).view(np.uint32)
    y[rng.integers(y.size)] ^= np.uint32(1 << int(rng.integers(32)))
    assert checkpoint.checksums({**tree, "w": y.view(np.float32).reshape(x.shape)})["['w']"] != ref["['w']"]
  assert checkpoint.checksums({"s": np.int64(100)}) == {"['s']": [100, 10_000]}  # 8 bytes = words 100 and 0
  zeroed = x.copy()
  zeroed[3:5] = 0  # a lost page reads back as zeros
  assert checkpoint.checksums({**tree, "w": zeroed})["['w']"] != ref["['w']"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("finetuned") / "run")
  c = micro_model(load_config("finetune", "sst2_tiny"))
  c.task.max_train_examples = 16
  c.train.update(num_steps=2, batch_size=8)
  c.eval.update(every_steps=0, batch_size=8)
  c.log.update(every_steps=1, measure_peak=False, peak_flops_per_device=1e12)
  c.mesh.num_devices = 1
  loop.train_and_evaluate(c, wd)
  return wd


@pytest.mark.parametrize("allow_fallback", [False, True])
def test_pretraining_config_in_a_finetuning_workdir(finetuned, lm_data_dir, tmp_path, allow_fallback):
  wd = copy_of(finetuned, tmp_path)
  before = snapshot(wd)
  c = micro_pretrain_config(lm_data_dir, steps=5)
  c.checkpoint.allow_fallback = allow_fallback
  with pytest.raises(ValueError, match=r"(?s)holds a fine-tuning on task sst2 run, but this config is pretraining.*"
                     r"intact"):
    loop.train_and_evaluate(c, wd)
  assert snapshot(wd) == before
  print(f"verified (allow_fallback={allow_fallback}): refused as another kind of run, nothing changed")


def test_resume_with_another_model_changes_nothing(pretrained, lm_data_dir, tmp_path):
  wd = copy_of(pretrained, tmp_path)
  before = snapshot(wd)
  c = micro_pretrain_config(lm_data_dir, steps=20)
  c.model.n_embd = 48
  with pytest.raises(ValueError, match=r"model.n_embd: checkpoint 32 != config 48"):
    loop.train_and_evaluate(c, wd)
  assert snapshot(wd) == before


def test_resume_config_changes(pretrained, lm_data_dir, tmp_path, caplog):
  wd = copy_of(pretrained, tmp_path)
  before = snapshot(wd)
  # A learning-rate change is refused with the diff, leaving the workdir as it was...
  c = micro_pretrain_config(lm_data_dir, steps=20)
  c.train.learning_rate = 1e-3
  with pytest.raises(ValueError, match=r"(?s)train.learning_rate: checkpoint 0.003 -> now 0.001.*allow_config_change"):
    loop.train_and_evaluate(c, wd)
  assert snapshot(wd) == before
  # ...and so is a cosine schedule over more steps: the rate would jump at the resume step.
  c = micro_pretrain_config(lm_data_dir, steps=20, **{"train.schedule": "cosine"})
  with pytest.raises(ValueError, match=r"train.schedule: checkpoint 'constant' -> now 'cosine'"):
    loop.train_and_evaluate(c, wd)
  assert snapshot(wd) == before
  # A longer run on the constant schedule continues the same trajectory: accepted, logged as a diff.
  c = micro_pretrain_config(lm_data_dir, steps=25, **{"log.every_steps": 1})
  with caplog.at_level("INFO"):
    assert loop.train_and_evaluate(c, wd)["step"] == 25
  text = caplog.text
  assert "train.num_steps: checkpoint 20 -> now 25" in text and "log.every_steps: checkpoint 5 -> now 1" in text
  # With the override, a refused change goes ahead and is logged as such.
  c = micro_pretrain_config(lm_data_dir, steps=25, **{
      "train.learning_rate": 1e-3,
      "checkpoint.allow_config_change": True
  })
  caplog.clear()
  with caplog.at_level("WARNING"):
    loop.train_and_evaluate(c, wd)
  assert "allowed by checkpoint.allow_config_change" in caplog.text


def test_a_run_saved_in_the_old_config_format_resumes_as_the_same_run(pretrained, lm_data_dir, tmp_path, caplog):
  """Runs saved before ``init.weights`` and before the record held every key (``init.from``; a pretraining
  task of only its name) resume with nothing to refuse: the old spelling is read, missing keys are defaults."""
  wd = copy_of(pretrained, tmp_path)
  assert config_lib.load(wd) == config_lib.resolve(micro_pretrain_config(lm_data_dir, steps=20))  # config.json

  def old_format(config):
    return {**config, "init": {"from": config["init"]["weights"]}, "task": {"name": config["task"]["name"]}}

  with open(os.path.join(wd, "config.json")) as f:
    old = old_format(json.load(f))
  with open(os.path.join(wd, "config.json"), "w") as f:
    json.dump(old, f)
  metas = glob.glob(os.path.join(wd, "checkpoints", "*", "meta", "metadata"))
  assert len(metas) == 2
  for path in metas:
    with open(path) as f:
      meta = json.load(f)
    with open(path, "w") as f:
      json.dump({**meta, "config": old_format(meta["config"])}, f)
  assert config_lib.load(wd) == config_lib.resolve(micro_pretrain_config(lm_data_dir, steps=20))
  c = micro_pretrain_config(lm_data_dir, steps=25, **{"log.every_steps": 1})
  with caplog.at_level("INFO"):
    assert loop.train_and_evaluate(c, wd)["step"] == 25
  changes = [line for line in caplog.text.splitlines() if " -> now " in line]
  assert changes == ["  log.every_steps: checkpoint 5 -> now 1", "  train.num_steps: checkpoint 20 -> now 25"]


def test_cosine_extension_is_refused_with_the_jump(lm_data_dir, tmp_path):
  wd = str(tmp_path / "wd")
  loop.train_and_evaluate(micro_pretrain_config(lm_data_dir, steps=10, **{"train.schedule": "cosine"}), wd)
  before = snapshot(wd)
  c = micro_pretrain_config(lm_data_dir, steps=13, **{"train.schedule": "cosine"})
  with pytest.raises(
      ValueError, match=r"train.num_steps: checkpoint 10 -> now 13\nthe learning rate at step 10 "
      r"would be 0.000.* instead of 0"):
    loop.train_and_evaluate(c, wd)
  assert snapshot(wd) == before


@pytest.mark.parametrize("argv, message", [
    (["--config.train.learning_rat=1e-3"], "error: --config.train.learning_rat: the config has no key "
     "'learning_rat'; did you mean \"learning_rate\""),
    (["--config.data.dir=/nonexistent/data"], "error: "),
])
def test_cli_user_errors_are_one_line(tmp_path, argv, message):
  cmd = [sys.executable, "-m", "gpt1_jax.main", "--config=configs/pretrain.py:tiny", f"--workdir={tmp_path}/wd", *argv]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert "Traceback" not in out.stderr, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1].startswith(message), out.stderr[-2000:]


def test_cli_bugs_keep_their_traceback():
  from gpt1_jax import errors
  try:
    np.zeros(3).reshape(7)  # raised inside numpy: not one of our deliberate errors
  except ValueError as e:
    assert not errors.is_user_error(e)
  c = load_config("pretrain", "tiny")
  with c.unlocked():
    c.model.bogus = 1
  with pytest.raises(ValueError) as e:
    config_lib.resolve(c)  # one of ours: its message names the key
  assert errors.is_user_error(e.value)


def finetune_config(**overrides):
  c = micro_model(load_config("finetune", "sst2_tiny"))
  c.train.update(num_steps=2, batch_size=8)
  c.mesh.num_devices = 1
  for k, v in overrides.items():
    section, key = k.split(".")
    c[section][key] = v
  return c


@pytest.mark.parametrize(
    "make_config, refusal",
    [
        (lambda data: micro_pretrain_config("/nonexistent/data"), "/nonexistent/data"),  # bad data, pretraining
        (lambda data: micro_pretrain_config(data, **{"data.seq_len": 64}), "exceeds model.n_ctx"),  # bad config
        (lambda data: finetune_config(), "nonexistent"),  # fine-tuning: refused after checkpoints/ was made
    ])
def test_a_refused_run_on_a_new_workdir_leaves_nothing(lm_data_dir, tmp_path, make_config, refusal):
  c = make_config(lm_data_dir)
  if c.task.name != "lm":
    with c.unlocked():
      c.init.weights = str(tmp_path / "nonexistent_pretrained")
  wd = tmp_path / "new" / "nested" / "wd"  # makedirs made two parents too
  with pytest.raises(Exception, match=refusal):
    loop.train_and_evaluate(c, str(wd))
  assert not (tmp_path / "new").exists(), sorted(str(p) for p in tmp_path.rglob("*"))
  existing = tmp_path / "existing"
  existing.mkdir()
  (existing / "notes.txt").write_text("mine")
  with pytest.raises(Exception, match=refusal):
    loop.train_and_evaluate(c, str(existing))
  assert sorted(os.listdir(existing)) == ["notes.txt"]  # no .lock, no checkpoints/: only what was there
  print(f"verified: refused ({refusal!r}) and left no directory, lock or checkpoints/ behind")


def test_a_run_that_failed_after_writing_keeps_everything(lm_data_dir, tmp_path):
  wd = str(tmp_path / "wd")
  with pytest.raises(loop.NonFiniteError):
    loop.train_and_evaluate(micro_pretrain_config(lm_data_dir, steps=20, **{"debug.nan_at_step": 12}), wd)
  assert {".lock", "checkpoints", "config.json", "metrics.jsonl"} <= set(os.listdir(wd))
  assert os.listdir(os.path.join(wd, "checkpoints")) == ["10"]
