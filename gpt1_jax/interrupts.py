"""Ctrl-C and SIGTERM at the command line, from the first line of ``main`` to the end of training.

Before the first training step there is nothing to save: SIGINT or SIGTERM ends the command at once
with one line and status 75 (``EXIT_PREEMPTED``, "rerun the same command"), also while the main
thread is inside XLA's compiler, where Python runs no handler until the call returns. From the first
step the loop's own handler takes over (finish the step, save, exit 75), and a second Ctrl-C exits
130 (the shell's status for SIGINT) at once, without saving and without a traceback.

The main thread's handlers only keep Python from raising ``KeyboardInterrupt`` (or dying, for
SIGTERM); the exits are made by a watcher thread that the C-level handler wakes through
``signal.set_wakeup_fd``, whatever the main thread is doing. A library caller (a notebook, a test)
never installs this: it keeps its ``KeyboardInterrupt``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again": the job can be restarted as is
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process killed by Ctrl-C

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_active = None


def watching() -> bool:
  """Whether the command-line watcher handles a second Ctrl-C (else the loop raises KeyboardInterrupt)."""
  return _active is not None


class Watch:
  """``with Watch():`` around a command's work; the main thread's handlers may be replaced inside
  (the loop's during training), and are restored on exit."""

  def __init__(self):
    self._received = 0
    self._exiting = threading.Lock()

  def __enter__(self):
    global _active
    self._read, self._write = os.pipe()
    os.set_blocking(self._write, False)
    self._old_fd = signal.set_wakeup_fd(self._write)
    self._old = {s: signal.signal(s, self._startup) for s in _SIGNALS}
    threading.Thread(target=self._watch, name="interrupts", daemon=True).start()
    _active = self
    return self

  def __exit__(self, *exc):
    global _active
    _active = None
    for s, old in self._old.items():
      signal.signal(s, old)
    signal.set_wakeup_fd(self._old_fd)
    os.close(self._write)  # the watcher reads EOF and ends

  def _startup(self, signum, frame):
    pass  # the watcher acts; this only replaces Python's KeyboardInterrupt and SIGTERM's default

  def _watch(self):
    while True:
      data = os.read(self._read, 64)
      if not data:
        os.close(self._read)
        return
      for signum in data:
        self._on(signum)

  def _on(self, signum: int):
    name = signal.Signals(signum).name
    if signal.getsignal(signum) == self._startup:  # no step yet: the loop has not taken over
      self._exit(
          EXIT_PREEMPTED, f"interrupted by {name} before the first training step: nothing to save; "
          f"exiting with status {EXIT_PREEMPTED} (rerun the same command)")
    self._received += 1
    if signum == signal.SIGINT and self._received > 1:
      self._exit(
          EXIT_INTERRUPTED, f"second {name}: stopping at once without saving, exit status "
          f"{EXIT_INTERRUPTED}; the last complete checkpoint is intact")

  def _exit(self, status: int, line: str):
    with self._exiting:  # one line, even if two signals race
      sys.stderr.write(line + "\n")
      sys.stderr.flush()
      # Not sys.exit: this is not the main thread, and the main thread may be inside XLA for minutes.
      # The kernel drops the workdir's flock; Orbax's atomic commits make a half-written save harmless.
      os._exit(status)
