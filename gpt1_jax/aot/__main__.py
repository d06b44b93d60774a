"""``python -m gpt1_jax.aot``: the command line of :mod:`gpt1_jax.aot.cli` (usage: ``--help``)."""

if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module
  # never clashes with another entry point's flags.
  from absl import app, flags

  import gpt1_jax.aot
  from gpt1_jax import errors
  from gpt1_jax.aot import cli

  __doc__ = gpt1_jax.aot.__doc__
  cli.define_flags()
  flags.adopt_module_key_flags(cli)
  app.run(errors.cli(errors.absl_main(cli.run)), flags_parser=errors.parse_flags)
