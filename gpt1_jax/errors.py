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
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def cli(main):
  """Wraps a command's ``main``: user errors become ``error: MESSAGE`` and exit status 1."""
  @functools.wraps(main)
  def wrapped(*args, **kwargs):
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


def parse_flags(argv: list[str]) -> list[str]:
  """absl ``flags_parser`` that reports bad flags and misspelt ``--config.*`` keys as one ``error:`` line."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
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
