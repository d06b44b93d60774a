"""Metrics out: ``metrics.jsonl``, TensorBoard events and a progress line. Process 0 only."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Sequence

import jax


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


def quiet_library_logs(below: int = logging.WARNING,
                       libraries: Sequence[str] = ("orbax", "tensorflow", "jax/_src")):
  """Filters the absl handler: by default, INFO chatter from Orbax/TF/JAX internals goes (each save
  logs dozens of lines) and their warnings pass; ``below``/``libraries`` narrow or widen that."""
  from absl import logging as absl_logging
  absl_logging.get_absl_handler().addFilter(_QuietLibraries(below, libraries))


def _tensorboard_writer(logdir: str):
  """TensorBoard's own event writer (the ``tensorboard`` package; no TensorFlow needed), or None
  with a one-line notice where the package is missing."""
  try:
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
  except ImportError as e:
    logging.getLogger(__name__).warning("TensorBoard output off: the tensorboard package is not importable (%s); "
                                        "metrics.jsonl has every logged value", e)
    return None
  return EventFileWriter(logdir)


class MetricWriter:
  """One JSON object per logged step in ``workdir/metrics.jsonl`` plus TensorBoard scalars.

  On resume, lines for steps after the restored checkpoint are dropped first:
  they were written by the interrupted run and will be written again, so the
  file ends up exactly as an uninterrupted run's.
  """

  def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._truncate_after(resume_step)
    if tensorboard:
      self._tb = _tensorboard_writer(os.path.join(workdir, "tensorboard"))

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
      values = [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in clean.items()
                if isinstance(v, (int, float)) and math.isfinite(v)]
      self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                         summary=summary_pb2.Summary(value=values)))
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


class Progress:
  """The periodic progress line (and a tqdm bar when attached to a terminal)."""

  def __init__(self, total_steps: int, start_step: int):
    self.total, self.start = total_steps, start_step
    self.t0 = time.perf_counter()
    self.bar = None
    if jax.process_index() == 0 and sys.stderr.isatty():
      from tqdm import tqdm
      self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

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
    parts.append(f"ETA {eta / 60:.1f} min")
    line = " | ".join(parts)
    if self.bar is not None:
      self.bar.n = step
      self.bar.set_postfix_str(line.split(" | ", 1)[-1])
      self.bar.refresh()
    else:
      logging.info(line)

  def close(self):
    if self.bar is not None:
      self.bar.close()
