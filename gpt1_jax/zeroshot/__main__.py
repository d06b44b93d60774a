"""``python -m gpt1_jax.zeroshot``: the command line of :mod:`gpt1_jax.zeroshot.cli` (usage: ``--help``)."""

from gpt1_jax.zeroshot import cli
from gpt1_jax.zeroshot.cli import define_flags, parse_sources, main  # noqa: F401 - importable from here too

if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module
  # never clashes with another entry point's flags.
  from absl import app, flags

  import gpt1_jax.zeroshot
  from gpt1_jax import errors

  # absl's --help prints the main module's docstring and key flags: the package's usage text, cli's flags.
  __doc__ = gpt1_jax.zeroshot.__doc__
  define_flags()
  flags.adopt_module_key_flags(cli)
  app.run(errors.cli(main), flags_parser=errors.parse_flags)
