"""``python -m gpt1_jax.convert``: the command line of :mod:`gpt1_jax.convert.cli` (usage: ``--help``)."""

if __name__ == "__main__":
  from absl import flags

  import gpt1_jax.convert
  from gpt1_jax.convert import cli

  # absl's --help prints the main module's docstring and key flags: the package's usage text, cli's flags.
  __doc__ = gpt1_jax.convert.__doc__
  cli.program(before_run=lambda: flags.adopt_module_key_flags(cli))
