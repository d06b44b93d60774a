"""Command-line errors: a user's mistake ends the command with one ``error:`` line, a bug keeps its traceback.

A user error is an exception the project raises on purpose, with a message
that already names what and where: ``ValueError`` / ``OSError`` /
``RuntimeError`` / ``MemoryError`` / ``ImportError`` (a missing optional dependency, named
with its install command) and their subclasses (``CheckpointError``, ``WorkdirError``...)
whose innermost frame is our own code or a config file.
The same types raised inside JAX, Flax or Orbax are bugs (ours or theirs) and
keep the traceback, as does everything else. ``GPT1_JAX_TRACEBACK=1`` shows
the traceback of every error.
"""

from __future__ import annotations

import ast
import functools
import os
import sys

_OURS = (os.path.dirname(os.path.abspath(__file__)),
         os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
_USER_TYPES = (ValueError, OSError, RuntimeError, MemoryError, ImportError)


def is_user_error(e: BaseException) -> bool:
  if not isinstance(e, _USER_TYPES) or os.environ.get("GPT1_JAX_TRACEBACK"):
    return False
  tb = e.__traceback__
  if tb is None:
    return False
  while tb.tb_next is not None:
    tb = tb.tb_next
  return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_OURS)


def exit_with(message: str, code: int = 1):
  line = f"error: {message}"
  # The error line is the last thing the user sees: background threads of libraries still winding
  # down at exit, writing to the stream a few writes per line, would otherwise bury it or split it
  # mid-line. So the stream is silenced first and the line written after, in one write to the saved
  # descriptor, which nothing else holds. GPT1_JAX_TRACEBACK=1 keeps what they print. Only a
  # command's own process: code calling main() in-process (a test, a notebook) keeps its stream.
  if not os.environ.get("GPT1_JAX_TRACEBACK") and sys.stderr is sys.__stderr__:
    try:
      fd = sys.stderr.fileno()
      saved = os.dup(fd)
      devnull = os.open(os.devnull, os.O_WRONLY)
      os.dup2(devnull, fd)
      os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no descriptor behind the stream: nothing to guard
      pass
    else:
      data = f"{line}\n".encode("utf-8", "replace")
      while data:
        data = data[os.write(saved, data):]
      os.close(saved)
      sys.exit(code)
  print(line, file=sys.stderr, flush=True)
  sys.exit(code)


def _is_closed_loop_echo(unraisable) -> bool:
  """TensorStore's writes still in flight when a failed checkpoint save made Orbax close its event
  loop finish later on TensorStore's threads, and reporting each to the closed loop raises this,
  which nobody can catch; the failed save itself is reported by the checkpoint code."""
  e = unraisable.exc_value
  return unraisable.object is None and type(e) is RuntimeError and str(e) == "Event loop is closed"


def _quiet_closed_loop_echoes():
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_closed_loop_echo(unraisable):
      previous(unraisable)

  sys.unraisablehook = hook


def cli(main):
  """Wraps a command's ``main``: user errors become ``error: MESSAGE`` and exit status 1.

  In the command's own process it also drops the closed-event-loop echoes of a failed checkpoint
  save (dozens of identical tracebacks, by timing, around the one error line that says what failed);
  ``GPT1_JAX_TRACEBACK=1`` keeps them.
  """

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    if not os.environ.get("GPT1_JAX_TRACEBACK") and sys.stderr is sys.__stderr__:
      _quiet_closed_loop_echoes()
    try:
      return main(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a user error
      if is_user_error(e):
        exit_with(str(e))
      raise

  return wrapped


def _config_key_message(e: Exception, argv: list[str]) -> str | None:
  """ml_collections' "no such key" for an override flag -> ``--config.a.b=...: no key 'b'; did you mean ...``."""
  text = str(e)
  try:  # ml_collections wraps a repr of the KeyError's text in an AttributeError
    text = ast.literal_eval(text) if text[:1] in "'\"" else text
  except (ValueError, SyntaxError):
    pass
  first, _, rest = text.partition("\n")
  key = first.strip("'\" ")
  if not key or "Did you mean" not in rest and not isinstance(e, (KeyError, AttributeError)):
    return None
  flag = next((a for a in argv if a.startswith("--config.") and key in a.split("=")[0].split(".")), None)
  if flag is None:
    return None
  hint = rest.strip()
  hint = f"; {hint[0].lower()}{hint[1:]}" if hint else ""
  return f"{flag.split('=')[0]}: the config has no key {key!r}{hint}"


def parse_flags(argv: list[str], help_status: int | None = None) -> list[str]:
  """absl ``flags_parser`` that reports bad flags and misspelt ``--config.*`` keys as one ``error:`` line.

  ``help_status``: the exit status after ``--help`` / ``--helpfull`` have printed the usage (absl's
  is 1; :func:`parse_flags_help_ok` gives 0, as the commands that once used argparse always did).
  """
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except SystemExit:  # only absl's help flags exit while parsing: errors raise flags.Error
    if help_status is None:
      raise
    sys.exit(help_status)
  except flags.Error as e:
    # config_flags puts the config file's own traceback in the message: its last line is the reason.
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    exit_with(lines[-1] if len(lines) > 1 and lines[-1].startswith(("ValueError", "KeyError", "AttributeError",
                                                                    "FileNotFoundError")) else str(e))
  except (AttributeError, KeyError) as e:
    message = _config_key_message(e, argv)
    if message is None:
      raise
    exit_with(message)


def parse_flags_help_ok(argv: list[str]) -> list[str]:
  """:func:`parse_flags` for the commands that once used argparse (generate, convert, export): ``-h`` is
  ``--help``, and the help exits with status 0, as before."""
  end = argv.index("--") if "--" in argv else len(argv)
  argv = [argv[0], *("--help" if a == "-h" else a for a in argv[1:end]), *argv[end:]]
  return parse_flags(argv, help_status=0)


_HELP_ARGS = ("-h", "--help", "-help", "--helpshort", "-helpshort", "--helpfull", "-helpfull", "-?")


def parse_own_flags(define_flags, prog: str, argv=None):
  """A command's flags for its ``main(argv)`` called from Python (tests, notebooks, other code).

  ``define_flags(flag_values)`` defines them on a ``FlagValues`` of their own, never on absl's global
  ``FLAGS`` (where another command's flags of the same name may live), parsed from ``argv``: the
  arguments after the program name, ``sys.argv[1:]`` by default, with the same syntax as on the
  command line. Returns ``(flag_values, leftover)``, ``leftover`` being ``[prog, *positional args]``
  as ``app.run`` passes to ``main``. A bad, unknown or missing flag raises ``SystemExit("error: ...")``
  (one line, exit status 1); ``--help`` prints the flags and raises ``SystemExit(0)``.
  """
  from absl import flags
  fv = flags.FlagValues()
  define_flags(fv)
  args = list(sys.argv[1:] if argv is None else argv)
  if any(a in _HELP_ARGS for a in args[:args.index("--") if "--" in args else len(args)]):
    print(f"usage: {prog} [flags]\n\nflags:\n{fv.get_help(include_special_flags=False)}")
    raise SystemExit(0)
  try:
    leftover = fv([prog, *args])
  except flags.Error as e:
    raise SystemExit(f"error: {e}") from None
  return fv, leftover


def absl_main(run):
  """``app.run``'s ``main`` for a command whose work is ``run(flag_values, argv)`` on absl's ``FLAGS``.

  Logs at WARNING and above unless ``--verbosity`` is given: ``app.run`` turns absl's INFO on, and
  Orbax logs a dozen INFO lines per checkpoint it opens.
  """

  @functools.wraps(run)
  def main(argv):
    from absl import flags
    from absl import logging as absl_logging
    if not flags.FLAGS["verbosity"].present:
      absl_logging.set_verbosity(absl_logging.WARNING)
    return run(flags.FLAGS, argv)

  return main


def no_arguments(argv) -> None:
  """Refuses positional arguments (``app.run`` passes them to ``main`` after the program name)."""
  if len(argv) > 1:
    raise SystemExit(f"error: unexpected arguments: {' '.join(argv[1:])} (every option is a --flag)")
