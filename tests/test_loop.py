"""End-to-end pretraining and fine-tuning through `train_and_evaluate` and the CLI."""

import json
import os
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

pytestmark = pytest.mark.slow

pretrain_config = micro_pretrain_config


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def params_of(workdir):
  return checkpoint.load_params(workdir)[1]


def assert_trees_equal(a, b, atol=0.0):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


@pytest.fixture(scope="module")
def reference_run(lm_data_dir, tmp_path_factory):
  """40 uninterrupted steps on one device: the baseline for resume checks."""
  wd = str(tmp_path_factory.mktemp("ref"))
  result = loop.train_and_evaluate(pretrain_config(lm_data_dir), wd)
  return wd, result


def test_pretraining_learns_and_logs(reference_run):
  wd, result = reference_run
  rows = read_metrics(wd)
  train = [r for r in rows if "train/loss" in r]
  assert train[0]["train/loss"] > 9.5  # ~ln(40481) = 10.6 at init
  # 40 steps of a 2-layer, 32-wide model: ~2 nats below the uniform guess.
  assert train[-1]["train/loss"] < train[0]["train/loss"] - 1.5, train
  ev = [r for r in rows if "eval/loss" in r]
  assert [r["step"] for r in ev] == [20, 40]
  assert np.isclose(ev[-1]["eval/perplexity"], np.exp(ev[-1]["eval/loss"]), rtol=1e-5)
  for key in ("train/lr", "train/grad_norm"):
    assert key in train[-1]
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    assert "perf/tokens_per_sec" in json.loads(f.readline())
  assert os.listdir(os.path.join(wd, "tensorboard"))
  assert result["step"] == 40


def test_resume_after_preemption_is_exact(lm_data_dir, reference_run, tmp_path):
  ref_wd, _ = reference_run
  wd = str(tmp_path)
  with pytest.raises(loop.Preempted) as e:
    loop.train_and_evaluate(pretrain_config(lm_data_dir, **{"debug.preempt_at_step": 17}), wd)
  assert e.value.code == loop.EXIT_PREEMPTED
  assert checkpoint.Checkpoints(os.path.join(wd, "checkpoints")).latest_step() == 17
  loop.train_and_evaluate(pretrain_config(lm_data_dir), wd)
  assert_trees_equal(params_of(wd), params_of(ref_wd))
  assert read_metrics(wd) == read_metrics(ref_wd)


@pytest.mark.parametrize("devices", [4, 1])
def test_checkpoint_from_8_devices_resumes_on_fewer(lm_data_dir, tmp_path, devices):
  wd = str(tmp_path)
  with pytest.raises(loop.Preempted):
    loop.train_and_evaluate(pretrain_config(lm_data_dir, steps=20, num_devices=8, **{"debug.preempt_at_step": 10}), wd)
  loop.train_and_evaluate(pretrain_config(lm_data_dir, steps=20, num_devices=devices), wd)
  ref = str(tmp_path / "ref8")
  loop.train_and_evaluate(pretrain_config(lm_data_dir, steps=20, num_devices=8), ref)
  # Same data and dropout; only the reduction order differs between meshes.
  assert_trees_equal(params_of(wd), params_of(ref), atol=1e-5)
  a = [r["train/loss"] for r in read_metrics(wd) if "train/loss" in r]
  b = [r["train/loss"] for r in read_metrics(ref) if "train/loss" in r]
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_kill_9_then_resume_matches_uninterrupted(lm_data_dir, reference_run, tmp_path):
  """`kill -9` mid-run after a checkpoint; the same command again finishes like the reference."""
  ref_wd, _ = reference_run
  wd = str(tmp_path / "run")
  cmd = micro_cli(wd, lm_data_dir)
  env = dict(os.environ)
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  ckdir = os.path.join(wd, "checkpoints")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(os.path.join(ckdir, "20")):
      break
    time.sleep(0.05)
  assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  print(f"killed -9 with checkpoints {sorted(os.listdir(ckdir))}")
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "resumed from" in done.stderr
  assert_trees_equal(params_of(wd), params_of(ref_wd))
  assert read_metrics(wd) == read_metrics(ref_wd)


def test_bad_config_fails_before_compiling(lm_data_dir, tmp_path):
  c = pretrain_config(lm_data_dir, num_devices=8)
  c.train.batch_size = 12
  with pytest.raises(ValueError, match=r"micro-batch 12 .* does not divide over the batch mesh axes of size 8"):
    loop.train_and_evaluate(c, str(tmp_path / "a"))
  c = pretrain_config(str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="nowhere"):
    loop.train_and_evaluate(c, str(tmp_path / "b"))
  c = pretrain_config(lm_data_dir)
  c.model.n_head = 3
  with pytest.raises(ValueError, match="n_embd=32 is not divisible by n_head=3"):
    loop.train_and_evaluate(c, str(tmp_path / "c"))
  assert not os.path.exists(tmp_path / "c" / "checkpoints")
  c = pretrain_config(lm_data_dir)
  c.train.lm_loss_chunk = 5
  with pytest.raises(ValueError, match=r"train.lm_loss_chunk=5 must be 0 \(off\) or a positive divisor"):
    loop.train_and_evaluate(c, str(tmp_path / "d"))


def test_misspelt_override_is_an_error(tmp_path):
  out = subprocess.run([
      sys.executable, "-m", "gpt1_jax.main", "--config=configs/pretrain.py:tiny", f"--workdir={tmp_path}",
      "--config.train.num_stpes=5"
  ], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "num_stpes" in out.stderr


def test_incompatible_checkpoint_is_refused_with_a_diff(lm_data_dir, reference_run, tmp_path):
  import shutil
  ref_wd, _ = reference_run
  wd = str(tmp_path / "copy")
  shutil.copytree(ref_wd, wd)
  c = pretrain_config(lm_data_dir, steps=60)
  c.model.n_layer = 3
  before = {p: open(os.path.join(wd, p), "rb").read() for p in ("config.json", "metrics.jsonl")}
  with pytest.raises(ValueError, match=r"model.n_layer: checkpoint 2 != config 3"):
    loop.train_and_evaluate(c, wd)
  # The refused run leaves the record of the accepted one as it was (issue 15, item 4).
  assert {p: open(os.path.join(wd, p), "rb").read() for p in before} == before


def test_finetune_from_pretrained_end_to_end(reference_run, tmp_path):
  ref_wd, _ = reference_run
  c = micro_model(load_config("finetune", "sst2_tiny"))
  c.task.source = os.path.join(REPO, "data", "sst2")
  c.task.max_train_examples = 64
  c.train.update(num_epochs=1.0, batch_size=16)
  c.eval.batch_size = 64
  c.log.update(every_steps=2, measure_peak=False, peak_flops_per_device=1e12)
  c.mesh.num_devices = 2
  c.init.weights = ref_wd
  c.task.lm_coef = 0.5  # the paper's joint objective (the tiny demo variant turns it off)
  wd = str(tmp_path)
  result = loop.train_and_evaluate(c, wd)
  assert result["step"] == 4
  assert 0.0 <= result["eval/accuracy"] <= 1.0
  rows = read_metrics(wd)
  assert any("train/task_loss" in r and "train/lm_loss" in r for r in rows)
  with open(os.path.join(wd, "predictions", "SST-2.tsv")) as f:
    lines = f.read().splitlines()
  assert lines[0] == "index\tprediction" and len(lines) == 873
  cfg, best = checkpoint.load_params(os.path.join(wd, "best"))
  assert set(best) == {"transformer", "head"}
  # The transformer really started from the pretrained weights (one step of lr 1e-3 moves them little).
  pre = params_of(ref_wd)["transformer"]["embed"]["positions"]
  assert np.abs(best["transformer"]["embed"]["positions"] - pre).max() < 0.05


def test_the_old_init_from_flag_is_init_weights():
  """`from` is a Python keyword, which ml_collections cannot parse: `--config.init.from` (init.weights'
  old name) is respelt before absl parses the flags, in both of absl's forms."""
  argv = ["prog", "--config=x.py", "--config.init.from=/ckpt/dir", "--workdir=w"]
  assert config_lib.renamed_flags(argv) == ["prog", "--config=x.py", "--config.init.weights=/ckpt/dir", "--workdir=w"]
  assert config_lib.renamed_flags(["prog", "--config.init.from",
                                   "openai:/m"]) == ["prog", "--config.init.weights", "openai:/m"]
  assert config_lib.renamed_flags(["prog", "--", "--config.init.from=x"]) == ["prog", "--", "--config.init.from=x"]


def test_tensorboard_events_without_importing_tensorflow(tmp_path):
  """TensorBoard's own writer imports TensorFlow where it is installed (as in this environment); ours
  does not, and TensorBoard's reader (which may import it) reads back exactly the logged scalars."""
  script = f"""
import sys
from gpt1_jax.report import MetricWriter
w = MetricWriter({str(tmp_path)!r})
for step in (5, 10, 15):
  w.write(step, {{"train/loss": 3.0 / step, "train/lr": 0.25, "task": "lm", "train/grad_norm": float("nan")}})
w.close()
print("tensorflow" in sys.modules)
"""
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, env={
      **os.environ, "JAX_PLATFORMS": "cpu"
  })
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split() == ["False"]
  assert "oneDNN" not in out.stderr and "absl::InitializeLog" not in out.stderr, out.stderr[-3000:]
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  events = EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  assert sorted(events.Tags()["scalars"]) == ["train/loss", "train/lr"]  # strings and NaN are not scalars
  loss = events.Scalars("train/loss")  # float32 in the event proto
  assert [e.step for e in loss] == [5, 10, 15] and [e.value for e in loss] == pytest.approx([0.6, 0.3, 0.2], rel=1e-6)
  assert [e.value for e in events.Scalars("train/lr")] == [0.25] * 3
  assert events.file_version == 2.0


def test_metrics_jsonl_is_standard_json_with_non_finite_values_as_null(tmp_path):
  from gpt1_jax.report import MetricWriter
  w = MetricWriter(str(tmp_path), tensorboard=False)
  w.write(
      3, {
          "train/loss": float("nan"),
          "train/grad_norm": float("inf"),
          "eval/accuracy": np.float32(0.5),
          "train/nonfinite_steps": 1
      })
  line = (tmp_path / "metrics.jsonl").read_text()
  assert "NaN" not in line and "Infinity" not in line
  row = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
  assert row == {
      "step": 3,
      "train/loss": None,
      "train/grad_norm": None,
      "eval/accuracy": 0.5,
      "train/nonfinite_steps": 1
  }


def test_negative_finetune_steps_are_refused_before_reading_data(tmp_path):
  c = micro_model(load_config("finetune", "sst2_tiny"))
  c.task.source = str(tmp_path / "no_such_task_dir")  # reading it would fail differently
  c.train.num_steps = -5
  with pytest.raises(ValueError, match=r"train.num_steps=-5"):
    loop.train_and_evaluate(c, str(tmp_path / "wd"))
  assert not (tmp_path / "wd" / "config.json").exists()


def test_speed_after_a_resume_counts_only_the_steps_run(lm_data_dir, tmp_path, monkeypatch):
  """The first window after a resume holds restored steps (for the loss means) that this process
  did not run: its tokens/s, steps/s and MFU must divide only the steps it ran by its time."""
  from gpt1_jax import sharding
  wd = str(tmp_path)
  with pytest.raises(loop.Preempted):  # log every 5: steps 16 and 17 are saved as pending
    loop.train_and_evaluate(
        pretrain_config(lm_data_dir, steps=25, **{
            "debug.preempt_at_step": 17,
            "eval.every_steps": 0
        }), wd)
  # A clock that advances 1000 s per step this process runs (no evaluation: it would build batches
  # too), so the figures are exact step counts.
  real, ran = time.perf_counter, [0]
  monkeypatch.setattr(time, "perf_counter", lambda: real() + 1000.0 * ran[0])
  global_batch = sharding.global_batch

  def counting(*args, **kwargs):
    ran[0] += 1
    return global_batch(*args, **kwargs)

  monkeypatch.setattr(sharding, "global_batch", counting)
  loop.train_and_evaluate(pretrain_config(lm_data_dir, steps=25, **{"eval.every_steps": 0}), wd)
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    rows = {r["step"]: r for r in map(json.loads, f) if "train/loss" in r}
  first, steady = rows[20], rows[25]  # steps 16-20 (3 run here), then 21-25 (5 run)
  print(f"first window after resume: {first['perf/steps_per_sec'] * 1000:.4f} steps per 1000 s "
        f"(3 run, 5 logged); the next: {steady['perf/steps_per_sec'] * 1000:.4f}")
  assert first["perf/steps_per_sec"] == pytest.approx(1e-3, rel=1e-3)  # not 5 / 3000 s
  assert steady["perf/steps_per_sec"] == pytest.approx(1e-3, rel=1e-3)
  tokens_per_step = 32 * 8  # seq_len x global batch
  for row in (first, steady):
    assert row["perf/tokens_per_sec"] == pytest.approx(tokens_per_step * row["perf/steps_per_sec"], rel=1e-9)
  assert first["perf/mfu"] / first["perf/steps_per_sec"] == pytest.approx(
      steady["perf/mfu"] / steady["perf/steps_per_sec"], rel=1e-9)
  # The peak MFU divides by, once per process: in the first row each of the two runs logged.
  peaks = {s: r["perf/peak_flops_per_device"] for s, r in rows.items() if "perf/peak_flops_per_device" in r}
  assert peaks == {5: 1e12, 20: 1e12}


def test_non_finite_loss_at_the_first_steps_names_absurd_settings():

  class Ck:

    def step_dir(self, step):
      return f"ckpt/{step}"

  nan = {"finite": np.asarray(False), "loss": np.asarray(np.nan), "grad_norm": np.asarray(np.nan)}

  def message(step, **train):
    c = load_config("pretrain", "tiny")
    c.train.update(**train)
    with pytest.raises(loop.NonFiniteError) as e:
      loop._check_finite([(step, nan)], config_lib.resolve(c), Ck(), None)
    return str(e.value)

  blamed = message(2, learning_rate=10.0)
  assert "train.learning_rate=10 (Adam moves every weight" in blamed
  assert "the settings rather than the data are the likely cause" in blamed and "global batch #1" in blamed
  assert "train.eps=1e+30" in message(3, eps=1e30) and "train.weight_decay=1e+09" in message(3, weight_decay=1e9)
  for plain in (message(2, learning_rate=3e-3), message(5000, learning_rate=10.0)):  # sane, or late: the data
    assert "settings" not in plain and "the batch was global batch" in plain and "on_nonfinite='skip'" in plain
