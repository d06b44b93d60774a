"""Metrics out: ``metrics.jsonl``, TensorBoard events and progress. Process 0 only.

Progress is a tqdm bar (ETA, steps/s, tokens/s) where a person watches: process 0 with stderr on
a terminal (:func:`interactive`). Elsewhere (a file, a pipe, a scheduler's or another host's log)
it is a plain log line per logged step. A program that owns its console (the demo) sends every
log record to a file with :func:`log_to_file`; its runs then print a line at each quarter away
from a terminal, and nothing else of theirs reaches the console.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
from typing import Sequence

import jax

from gpt1_jax.data.store import is_url
from gpt1_jax.workdir import RunDir


class _QuietLibraries:
  """Drops records below ``below`` logged from inside ``libraries`` (by source path); the rest pass."""

  def __init__(self, below: int, libraries: Sequence[str]):
    self.below = below
    self.paths = tuple(f"/{lib.strip('/')}/" for lib in libraries)

  def filter(self, record):
    path = record.pathname.replace("\\", "/")
    if record.exc_info and "/orbax/" in path and not os.environ.get("GPT1_JAX_TRACEBACK"):
      # Orbax logs a failed save from each of its threads, traceback and all (four tracebacks,
      # ~400 lines, for one full disk); checkpoint.Checkpoints raises the failure in the main
      # thread, where the CLI reports it in one line (or with its traceback if it is a bug).
      return False
    if record.levelno >= self.below:
      return True
    return not any(p in path for p in self.paths)


def quiet_library_logs(below: int = logging.WARNING, libraries: Sequence[str] = ("orbax", "tensorflow", "jax/_src")):
  """Filters the absl handler: by default, INFO chatter from Orbax/TF/JAX internals goes (each save
  logs dozens of lines) and their warnings pass; ``below``/``libraries`` narrow or widen that."""
  from absl import logging as absl_logging
  absl_logging.get_absl_handler().addFilter(_QuietLibraries(below, libraries))


def interactive() -> bool:
  """Progress bars or log lines: bars only for process 0 writing to a terminal."""
  return sys.stderr.isatty() and jax.process_index() == 0


_log_file = None  # set by log_to_file: the program owns the console, the records go here


def log_to_file(path: str) -> str:
  """Every logging record from here on (INFO and up, from every library: Orbax, JAX, TensorFlow)
  and every Python warning goes to ``path`` (appended, one plain line each) and none to the
  console, which is left to the program's own lines and progress bars; returns ``path``."""
  global _log_file
  from absl import logging as absl_logging
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  handler = logging.FileHandler(path)
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d] %(message)s"))
  root = logging.getLogger()
  root.removeHandler(absl_logging.get_absl_handler())
  root.addHandler(handler)
  if root.level > logging.INFO or root.level == logging.NOTSET:
    root.setLevel(logging.INFO)
  logging.captureWarnings(True)
  _log_file = os.path.abspath(path)
  return _log_file


class _LocalEventFile:
  """A TensorBoard event file in a local directory, written by TensorBoard's own ``RecordWriter``.

  TensorBoard's ``EventFileWriter`` opens its file through ``tensorboard.compat.tf``, which imports
  all of TensorFlow wherever it is installed (the ``tasks`` extra): seconds of start-up, hundreds of
  MB and TensorFlow's C++ notices on the console of a pretraining run that never uses it, for one
  ``makedirs`` and one ``open``. Same file name and first event as ``EventFileWriter``; written
  synchronously, a few hundred bytes per logged step.
  """

  def __init__(self, logdir: str):
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.0"
    self._records = RecordWriter(open(os.path.join(logdir, name), "wb"))
    self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
    self.flush()

  def add_event(self, event):
    self._records.write(event.SerializeToString())

  def flush(self):
    self._records.flush()

  def close(self):
    self._records.close()


def _tensorboard_writer(logdir: str):
  """An event writer for ``logdir`` (the ``tensorboard`` package; no TensorFlow needed), or None
  with a one-line notice where the package is missing. A URL goes through TensorBoard's
  ``EventFileWriter`` and its filesystems (TensorFlow's where installed, else fsspec's)."""
  try:
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
  except ImportError as e:
    logging.getLogger(__name__).warning(
        "TensorBoard output off: the tensorboard package is not importable (%s); "
        "metrics.jsonl has every logged value", e)
    return None
  return EventFileWriter(logdir) if is_url(logdir) else _LocalEventFile(logdir)


class MetricWriter:
  """One JSON object per logged step in ``workdir/metrics.jsonl`` plus TensorBoard scalars.

  On resume, lines for steps after the restored checkpoint are dropped first:
  they were written by the interrupted run and will be written again, so the
  file ends up exactly as an uninterrupted run's.
  """

  def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    rd = RunDir(workdir)
    self.path = rd.metrics_file
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._truncate_after(resume_step)
    if tensorboard:
      self._tb = _tensorboard_writer(rd.tensorboard)

  def _truncate_after(self, step: int):
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    kept = []
    for line in lines:
      try:
        if json.loads(line)["step"] <= step:
          kept.append(line)
      except (json.JSONDecodeError, KeyError):
        continue  # a line cut by a crash mid-write
    if len(kept) != len(lines):
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(kept)
      os.replace(tmp, self.path)

  def write(self, step: int, scalars: dict):
    if not self.active:
      return
    clean = {k: (float(v) if not isinstance(v, (int, str)) else v) for k, v in scalars.items()}
    # Standard JSON has no NaN or Infinity: a non-finite value is written as null, so every
    # line parses with any JSON reader (jq, pandas, JavaScript), not only Python's.
    row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in clean.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **row}, sort_keys=True, allow_nan=False) + "\n")
    if self._tb is not None:
      from tensorboard.compat.proto import event_pb2, summary_pb2
      values = [
          summary_pb2.Summary.Value(tag=k, simple_value=v)
          for k, v in clean.items()
          if isinstance(v, (int, float)) and math.isfinite(v)
      ]
      self._tb.add_event(
          event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)))
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


class Progress:
  """A run's progress: a tqdm bar on a terminal, else a log line per logged step (see the module
  docstring); under :func:`log_to_file`, also a console line at each quarter once ``QUIET_S`` passed."""

  QUIET_S = 30.0  # a short run (a fine-tuning run of the demo) prints only its result

  def __init__(self, total_steps: int, start_step: int, desc: str = ""):
    self.total, self.start, self.desc = total_steps, start_step, desc
    self.t0 = self.last_print = time.perf_counter()
    self.quarter = 4 * start_step // max(total_steps, 1)
    self.bar = None
    if interactive():
      from tqdm import tqdm
      self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, desc=desc or None)

  def update(self, step: int, scalars: dict):
    if jax.process_index() != 0:
      return
    done = step - self.start
    elapsed = time.perf_counter() - self.t0
    eta = elapsed / max(done, 1) * (self.total - step)
    parts = [f"step {step}/{self.total}"]
    for key, fmt in (("train/loss", "loss {:.4f}"), ("train/lr", "lr {:.3g}"), ("train/grad_norm", "gnorm {:.3f}"),
                     ("perf/tokens_per_sec", "{:,.0f} tok/s"), ("perf/mfu", "MFU {:.1%}")):
      if key in scalars and scalars[key] is not None and math.isfinite(scalars[key]):
        parts.append(fmt.format(scalars[key]))
    if self.bar is not None:  # the bar shows the step, steps/s and the time left itself
      self.bar.n = step
      self.bar.set_postfix_str(" | ".join(parts[1:]))
      self.bar.refresh()
    parts.append(f"ETA {eta / 60:.1f} min")
    line = " | ".join(parts)
    if self.bar is None or _log_file:
      logging.info("%s%s", f"{self.desc}: " if self.desc else "", line)
    quarter = 4 * step // max(self.total, 1)
    if self.bar is None and _log_file and quarter > self.quarter:
      self.quarter = quarter
      now = time.perf_counter()
      if quarter < 4 and now - self.last_print >= self.QUIET_S:
        self.last_print = now
        print(f"   {self.desc + ': ' if self.desc else ''}{line}", flush=True)

  def close(self):
    if self.bar is not None:
      self.bar.close()
