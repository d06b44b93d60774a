"""What reaches the console (issue 31, item 3): library notices that tell a user nothing stay off it.

* Reading weights (a weights checkpoint, a training state, a run still saving) logs no warning:
  Orbax's read-only manager warned four times per open, its item reader once more.
* Importing TensorFlow writes nothing to the process's stderr (its C++ start-up notices ignore
  ``TF_CPP_MIN_LOG_LEVEL``).
* Under ``report.log_to_file`` every record goes to the file and none to the console, and a run's
  progress away from a terminal is a console line at each quarter, only once it has run a while.

The demo end to end is in tests/test_demo.py.
"""

import builtins
import logging
import os
import subprocess
import sys

import jax
import numpy as np

from conftest import REPO
from gpt1_jax import checkpoint, report
from gpt1_jax.model import ModelConfig, init_params

CFG = ModelConfig(vocab_size=64, n_ctx=16, n_embd=16, n_head=2, n_layer=1, vocab_pad_multiple=1)


def test_reading_weights_logs_no_warning(tmp_path, caplog):
  params = init_params(CFG, jax.random.key(0))
  checkpoint.save_params(str(tmp_path / "weights"), CFG, params)
  run = checkpoint.Checkpoints(str(tmp_path / "run" / "checkpoints"), async_save=False)
  run.save(3, {"params": params, "step": np.int32(3)}, {"model": checkpoint.model_config_to_dict(CFG)}, force=True)
  run.close()
  # A save in flight: Orbax's temporary directory beside the committed step is not a step.
  os.makedirs(tmp_path / "run" / "checkpoints" / "6.orbax-checkpoint-tmp-1234")

  with caplog.at_level(logging.INFO):
    _, from_weights = checkpoint.load_params(str(tmp_path / "weights"))
    _, from_run = checkpoint.load_params(str(tmp_path / "run"))

  assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
  assert checkpoint.complete_steps(str(tmp_path / "run" / "checkpoints")) == [3]
  for a, b, c in zip(jax.tree.leaves(params), jax.tree.leaves(from_weights), jax.tree.leaves(from_run)):
    np.testing.assert_array_equal(np.asarray(a), b)
    np.testing.assert_array_equal(np.asarray(a), c)


def test_importing_tensorflow_writes_nothing_to_stderr():
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user runs it
  p = subprocess.run([sys.executable, "-c", "from gpt1_jax.data import tf; print(int(tf.constant(2) * 3))"], cwd=REPO,
                     env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0 and p.stdout == "6\n", p.stderr
  assert p.stderr == ""


def test_importing_tensorflow_passes_on_what_is_not_a_start_up_notice(monkeypatch, capfd):
  from gpt1_jax import data

  class FakeTensorFlow:
    pass

  real_import = builtins.__import__

  def fake_import(name, *args, **kwargs):
    if name == "tensorflow":
      os.write(
          2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
          b"something went wrong in C++\n")
      return FakeTensorFlow
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", fake_import)
  assert data._import_quietly() is FakeTensorFlow
  monkeypatch.undo()
  assert capfd.readouterr().err == "something went wrong in C++\n"


def _run_progress(total, seconds_per_step, monkeypatch, desc="pretrain"):
  clock = [0.0]
  monkeypatch.setattr(report.time, "perf_counter", lambda: clock[0])
  progress = report.Progress(total, 0, desc=desc)
  assert progress.bar is None  # not a terminal under pytest
  for step in range(1, total + 1):
    clock[0] += seconds_per_step
    progress.update(step, {"train/loss": 2.0})
  progress.close()


def test_log_to_file_keeps_records_off_the_console_and_prints_quarters_of_long_runs(tmp_path, monkeypatch, capsys):
  root = logging.getLogger()
  handlers, level = list(root.handlers), root.level
  monkeypatch.setattr(report, "_log_file", None)
  try:
    path = report.log_to_file(str(tmp_path / "w" / "demo.log"))
    logging.getLogger("orbax.somewhere").warning("a library's warning")
    _run_progress(100, 2.0, monkeypatch)  # 200 s: a line at 25, 50 and 75 %
    _run_progress(100, 0.1, monkeypatch, desc="finetune")  # 10 s: its result says enough
  finally:
    for h in list(root.handlers):
      if h not in handlers:
        root.removeHandler(h)
        h.close()
    for h in handlers:
      if h not in root.handlers:
        root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)
  out, err = capsys.readouterr()
  assert [line.split(" | ")[0] for line in out.splitlines()
         ] == ["   pretrain: step 25/100", "   pretrain: step 50/100", "   pretrain: step 75/100"]
  assert "a library's warning" not in err + out
  text = open(path).read()
  assert "WARNING orbax.somewhere" in text and "a library's warning" in text
  assert "pretrain: step 100/100" in text and "finetune: step 100/100" in text
