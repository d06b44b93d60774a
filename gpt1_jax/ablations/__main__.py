"""``python -m gpt1_jax.ablations``: the command line of :mod:`gpt1_jax.ablations.cli` (usage: ``--help``)."""

from gpt1_jax.ablations import cli
from gpt1_jax.ablations.cli import define_flags, main  # noqa: F401 - importable from here too

if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module
  # never clashes with another entry point's flags.
  from absl import app, flags

  import gpt1_jax.ablations
  from gpt1_jax import errors

  # absl's --help prints the main module's docstring and key flags: the package's usage text, cli's flags.
  __doc__ = gpt1_jax.ablations.__doc__
  define_flags()
  flags.adopt_module_key_flags(cli)
  app.run(errors.cli(main))
