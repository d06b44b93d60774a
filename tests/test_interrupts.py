"""Ctrl-C and SIGTERM at the command line (issue 32, item 7): before the first step, exit 75 at once
with one line, also while XLA compiles; a second Ctrl-C during training exits 130 at once."""

import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import REPO, micro_cli
from gpt1_jax import interrupts

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def signal_when(cmd, line_part, signals, timeout=240):
  """Runs ``cmd``, sends ``signals`` (10 ms apart) once stderr shows ``line_part``; returns
  ``(exit status, seconds from the first signal to the exit, stderr lines from then on)``."""
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={
      **os.environ, "JAX_PLATFORMS": "cpu"
  })
  timer = threading.Timer(timeout, proc.kill)
  timer.start()
  sent, after = None, []
  try:
    for line in proc.stderr:
      if sent is not None:
        after.append(line.rstrip("\n"))
      elif line_part in line:
        sent = time.monotonic()
        for s in signals:
          proc.send_signal(s)
          time.sleep(0.01)
    proc.wait()
  finally:
    timer.cancel()
  assert sent is not None, f"never saw {line_part!r}"
  return proc.returncode, time.monotonic() - sent, after


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_while_compiling_exits_75_at_once_with_one_line(lm_data_dir, tmp_path, sig):
  wd = str(tmp_path / "wd")
  # Logged just before the step is compiled (seconds on CPU, minutes for a large model on a TPU).
  status, seconds, after = signal_when(micro_cli(wd, lm_data_dir), "state per device", [sig])
  print(f"{sig.name} while compiling: exit {status} after {seconds:.2f}s: {after}")
  assert status == interrupts.EXIT_PREEMPTED
  assert after == [
      f"interrupted by {sig.name} before the first training step: nothing to save; exiting with "
      f"status 75 (rerun the same command)"
  ]
  assert seconds < 2  # did not wait for the compiler
  assert not os.path.exists(os.path.join(wd, "metrics.jsonl"))


def test_second_ctrl_c_during_training_exits_130_at_once(lm_data_dir, tmp_path):
  wd = str(tmp_path / "wd")
  status, seconds, after = signal_when(micro_cli(wd, lm_data_dir, steps=100_000), "step 5/",
                                       [signal.SIGINT, signal.SIGINT])
  print(f"two Ctrl-C during training: exit {status} after {seconds:.2f}s: {after}")
  assert status == interrupts.EXIT_INTERRUPTED
  assert after[-1] == ("second SIGINT: stopping at once without saving, exit status 130; the last complete "
                       "checkpoint is intact")
  assert not any("Traceback" in line for line in after)
