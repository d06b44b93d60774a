"""The workdir: its layout (``RunDir``), checked before any work, and owned by one run at a time.

``RunDir(path)`` is the one statement of a run directory's layout: its paths (``checkpoints``,
``metrics_file``, ``config_file``, ``best``, ``predictions``, ``tensorboard``), its recorded
config (``config()``), its logged metrics (``metrics()``, ``latest()``) and its complete
checkpoint steps (``steps()``). The loop writes through it and every tool that reads a finished
run (transfer, zero-shot curve, ablations, demo, benchmarks) reads through it.

``check(workdir)`` finds every problem with the directory layout (a file where
a directory must be, no write permission) before data is read or a step is
compiled, so a run never trains for hours and then fails at its first save.

``Lock(workdir)`` is an exclusive ``flock`` on ``WORKDIR/.lock``, held by
process 0 for the whole run. The kernel releases it when its owner exits in any
way (``kill -9`` included), so a lock left by a dead run is never "stale": the
next run simply gets it, and says whose it was. While held, the file names the
owner (host, pid, start time, command) so a refused run can say who is there.
Released, it is left empty: ``.lock`` is never unlinked, because unlinking a
lock file lets two later runs lock two different inodes at once. The one
exception is a run that fails before writing anything (a refused config, bad
data): leaving ``with Lock(...)`` on an exception, it removes what it added (the
lock file, empty directories, the workdir itself if it created it).

Where it holds: local disks, and NFS v4 (Linux maps ``flock`` to NFS byte-range
locks). It does not on object stores (``gs://``, ``s3://``), which have no
locks: there the run logs a warning and the user must not share workdirs.

``prepare`` locks its ``--output`` with the same class (``Lock(output, what="output",
advice=..., multihost=False)``), which imports no JAX then.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import logging
import os
import shutil
import socket
import sys

from gpt1_jax.data.store import is_url  # a URL workdir (gs://...): no locks, no layout check

LOCK_NAME = ".lock"


@dataclasses.dataclass(frozen=True)
class RunDir:
  """A run directory: where each thing a run writes lives, and the readers of a finished run."""

  path: str

  CHECKPOINTS = "checkpoints"
  METRICS = "metrics.jsonl"  # one JSON object per line: a log step's row, or an evaluation's
  CONFIG = "config.json"  # config.Run.to_dict(), written once the run is accepted
  BEST = "best"  # fine-tuning: the weights of the best evaluation
  PREDICTIONS = "predictions"  # fine-tuning: GLUE-style prediction files of the last evaluation
  TENSORBOARD = "tensorboard"
  CORRUPT = "corrupt_checkpoints"

  def join(self, name: str) -> str:
    return os.path.join(self.path, name)

  @property
  def checkpoints(self) -> str:
    return self.join(self.CHECKPOINTS)

  @property
  def metrics_file(self) -> str:
    return self.join(self.METRICS)

  @property
  def config_file(self) -> str:
    return self.join(self.CONFIG)

  @property
  def best(self) -> str:
    return self.join(self.BEST)

  @property
  def predictions(self) -> str:
    return self.join(self.PREDICTIONS)

  @property
  def tensorboard(self) -> str:
    return self.join(self.TENSORBOARD)

  def config(self):
    """The run's recorded config as a ``config.Run`` (older records included)."""
    from gpt1_jax import config as config_lib  # imports JAX (the model); Lock's users (prepare) must not
    return config_lib.load(self.path)

  def metrics(self) -> list[dict]:
    """Every row of ``metrics.jsonl`` in order ([] before the first log); a torn last line (the
    process died writing it) is left out, as the run that resumes rewrites it."""
    if not os.path.exists(self.metrics_file):
      return []
    with open(self.metrics_file) as f:
      lines = f.read().splitlines()
    rows = []
    for i, line in enumerate(lines):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        if i == len(lines) - 1:
          break
        raise ValueError(f"{self.metrics_file}: line {i + 1} is not JSON") from None
    return rows

  def latest(self, up_to_step: int | None = None) -> dict:
    """The latest value of every metric logged up to ``up_to_step`` (what a finished run reports)."""
    out = {}
    for row in self.metrics():
      if up_to_step is None or row["step"] <= up_to_step:
        out.update(row)
    return out

  def steps(self) -> list[int]:
    """The run's complete (committed) checkpoint steps, read without opening or changing anything."""
    if not os.path.isdir(self.checkpoints):
      raise FileNotFoundError(f"{self.path}: no {self.CHECKPOINTS}/ directory (not a training run)")
    from gpt1_jax import checkpoint  # Orbax and JAX: only for the readers that need the steps
    return checkpoint.complete_steps(self.checkpoints)


# Entries the run writes, and the type each must have if it already exists.
_LAYOUT = {
    RunDir.CHECKPOINTS: "dir",
    RunDir.BEST: "dir",
    RunDir.PREDICTIONS: "dir",
    RunDir.TENSORBOARD: "dir",
    RunDir.CORRUPT: "dir",
    RunDir.METRICS: "file",
    RunDir.CONFIG: "file",
    LOCK_NAME: "file"
}


class WorkdirError(RuntimeError):
  pass


def check(workdir: str) -> None:
  """Raises ``WorkdirError`` naming the first entry of ``workdir`` that a run could not write."""
  if is_url(workdir):
    return
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir={workdir} is a file, not a directory")
  parent = workdir
  while not os.path.exists(parent):  # the nearest existing ancestor is where makedirs will write
    parent = os.path.dirname(os.path.abspath(parent))
  if not os.access(parent, os.W_OK | os.X_OK):
    raise WorkdirError(f"--workdir={workdir}: no permission to write in {parent}")
  for name, kind in _LAYOUT.items():
    path = os.path.join(workdir, name)
    if not os.path.lexists(path):
      continue
    if kind == "dir" and not os.path.isdir(path):
      raise WorkdirError(f"{path} exists but is not a directory (the run writes its {name} there): move it away")
    if kind == "file" and not os.path.isfile(path):
      raise WorkdirError(f"{path} exists but is not a regular file (the run writes it): move it away")
    if not os.access(path, os.W_OK):
      raise WorkdirError(f"{path} is not writable")


def _owner_text(text: str) -> str:
  try:
    o = json.loads(text)
    return f"pid {o['pid']} on host {o['host']}, started {o['started']} ({o['command']})"
  except (ValueError, KeyError, TypeError):
    return "an unknown run (the lock file does not say who)"


_WORKDIR_ADVICE = ("Two runs in one workdir would overwrite each other's checkpoints and metrics: wait for it to "
                   "finish, stop it, or use another --workdir")


class Lock:
  """``with Lock(workdir):`` -- exclusive ownership of ``workdir`` by this job's process 0.

  Every process of a multi-host job learns process 0's outcome, so all of them
  refuse together instead of the others waiting in a collective forever.
  ``multihost=False`` locks from this process alone, without importing JAX (a tool
  such as ``prepare`` must not start a backend); ``what`` and ``advice`` word the refusal.
  """

  def __init__(self, workdir: str, *, what: str = "workdir", advice: str = _WORKDIR_ADVICE, multihost: bool = True):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self.what, self.advice, self.multihost = what, advice, multihost
    self._fd = None
    self._created = []  # directories _acquire made, outermost first
    self._entries_before = set()

  def __enter__(self):
    error = self._acquire_on_process_0() if self.multihost else self._acquire()
    if error:
      self._release()
      raise WorkdirError(error)
    return self

  def _acquire_on_process_0(self) -> str:
    import jax  # here, not at the top: the multihost=False lock must not pay for importing JAX
    error = self._acquire() if jax.process_index() == 0 else ""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      failed = multihost_utils.broadcast_one_to_all(bool(error))
      if failed and not error:
        error = f"process 0 could not lock {self.path}; see its log"
    return error

  def _acquire(self) -> str:
    if is_url(self.workdir):
      logging.warning(
          "%s is on an object store, which has no locks: nothing stops a second run from using "
          "this %s at the same time", self.workdir, self.what)
      return ""
    missing, path = [], os.path.abspath(self.workdir)
    while not os.path.exists(path):
      missing.insert(0, path)
      path = os.path.dirname(path)
    self._entries_before = set() if missing else set(os.listdir(self.workdir))
    os.makedirs(self.workdir, exist_ok=True)
    self._created = missing
    # No O_TRUNC: the file's text is the current owner's, to be read if we lose.
    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      with open(self.path) as f:
        owner = _owner_text(f.read())
      return f"{self.workdir} is in use by another run: {owner}. {self.advice}"
    previous = os.pread(self._fd, 1 << 16, 0).decode("utf-8", "replace").strip()
    if previous:
      logging.warning("%s: the previous run there (%s) ended without releasing the %s (killed?); taking it "
                      "over", self.workdir, _owner_text(previous), self.what)
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv)[:500]
    }
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, json.dumps(me).encode(), 0)
    os.fsync(self._fd)
    return ""

  def _release(self):
    if self._fd is None:
      return
    try:
      if fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB) is None:  # still ours: leave it empty
        os.ftruncate(self._fd, 0)
    except OSError:
      pass  # never ours
    finally:
      os.close(self._fd)  # closing drops the flock
      self._fd = None

  def _remove_traces(self):
    """After a failed run: removes what it added, if all it added is the lock file and empty directories.

    Anything with content (a checkpoint, ``metrics.jsonl``, ``config.json``) means the run was accepted:
    then everything stays. The lock file goes while still locked; a run that opened it in that instant
    could lock the unlinked inode (the race in the module docstring), accepted for a refusal.
    """

    def empty(path):
      return os.path.isdir(path) and not os.path.islink(path) and all(
          empty(os.path.join(path, n)) for n in os.listdir(path))

    added = set(os.listdir(self.workdir)) - self._entries_before
    if any(n != LOCK_NAME and not empty(os.path.join(self.workdir, n)) for n in added):
      return
    for name in added:
      path = os.path.join(self.workdir, name)
      if name == LOCK_NAME:
        os.unlink(path)
      else:
        shutil.rmtree(path)
    for path in reversed(self._created):
      if not os.listdir(path):
        os.rmdir(path)

  def __exit__(self, exc_type, *exc):
    if exc_type is not None and self._fd is not None:
      try:
        self._remove_traces()
      except OSError as e:  # never mask the run's own error
        logging.warning("could not remove what the failed run added to %s: %s", self.workdir, e)
    self._release()
