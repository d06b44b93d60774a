"""``python -m gpt1_jax.convert``: import weights into a checkpoint (``--from=hf|openai``) or export one
(``--to=hf``); the flags, their checks and ``main``."""

from __future__ import annotations

import json
import os
import re
import sys

from gpt1_jax.convert.hf_dir import (DEFAULT_MAX_SHARD_BYTES, HF_RECORD_KEY, from_hf_pretrained, hf_architecture,
                                     task_of, write_hf)
from gpt1_jax import errors
from gpt1_jax.checkpoint import load_params, save_params
from gpt1_jax.convert.mapping import ConversionError
from gpt1_jax.convert.openai import from_openai_release


def _parse_size(text: str) -> int:
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
  if not m:
    raise ValueError("expected a size such as 500MB, 2GB or 1000000")
  unit = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9}[m.group(2)]
  return int(float(m.group(1)) * unit)


def _format_size(n: int) -> str:
  """What :func:`_parse_size` reads back: ``5GB`` for 5 * 10**9."""
  for unit, size in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
    if n and n % size == 0:
      return f"{n // size}{unit}"
  return str(n)


def check_out_dir(out: str, flag: str = "--out") -> None:
  """Refuses (one line, before any work) to write into a directory that already holds something."""
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    kind = "directory" if os.path.isdir(out) else "file"
    raise SystemExit(f"error: {flag}={out}: a non-empty {kind} is already there; choose a new path "
                     f"(nothing was written)")


PROG = "python -m gpt1_jax.convert"


def define_flags(flag_values=None) -> None:
  """The command's flags, on ``flag_values`` (default absl's global ``FLAGS``)."""
  from absl import flags

  class SizeParser(flags.ArgumentParser):
    """``500MB``, ``2GB``, ``30KB``, ``1000000`` (bytes; K/M/G are powers of 1000)."""
    syntactic_help = "a size such as 500MB, 2GB or 1000000"

    def parse(self, argument):
      return argument if isinstance(argument, int) else _parse_size(argument)

    def flag_type(self):
      return "size"

  class SizeSerializer(flags.ArgumentSerializer):

    def serialize(self, value):
      return _format_size(value)

  fv = dict(flag_values=flags.FLAGS if flag_values is None else flag_values)
  flags.DEFINE_enum("from", None, ["hf", "openai"], "Import weights into a checkpoint (one of --from, --to).", **fv)
  flags.DEFINE_enum("to", None, ["hf"], "Export a checkpoint.", **fv)
  flags.DEFINE_string("hf_path", None, "--from=hf: saved Hugging Face directory, or a .safetensors / .bin file.", **fv)
  flags.DEFINE_string("openai_dir", None, "--from=openai: directory with params_shapes.json and params_*.npy.", **fv)
  flags.DEFINE_string("checkpoint", None, "--to=hf: a gpt1_jax weights checkpoint, training workdir or best/.", **fv)
  flags.DEFINE_string("out", None, "--from: checkpoint directory to write; --to=hf: the Hugging Face directory "
                      "to write.", required=True, **fv)
  flags.DEFINE_integer("n_head", None, "Default: config.json's, else 12.", **fv)
  flags.DEFINE_integer("seed", 0, "Seeds the appended special-token rows.", **fv)
  flags.DEFINE_bool("drop_head", False, "--to=hf: export a fine-tuned checkpoint's body as OpenAIGPTLMHeadModel, "
                    "without its head.", **fv)
  flags.DEFINE(SizeParser(), "max_shard_size", DEFAULT_MAX_SHARD_BYTES, "--to=hf: split the weights into files of "
               "at most this size (bytes; 500MB, 2GB: powers of 1000).", serializer=SizeSerializer(), **fv)


def _run(F, argv=(PROG,)) -> None:
  """The command, on parsed flags ``F``; ``argv``: what ``app.run`` leaves (positional arguments)."""
  errors.no_arguments(argv)
  source, target = F["from"].value, F.to
  if source is not None and target is not None:
    raise SystemExit("error: --from and --to exclude each other")
  if source is None and target is None:
    raise SystemExit("error: give one of --from=hf|openai (import), --to=hf (export)")
  check_out_dir(F.out)

  if target == "hf":
    if not F.checkpoint:
      raise SystemExit("error: --to=hf needs --checkpoint")
    if not os.path.isdir(F.checkpoint):
      raise SystemExit(f"error: --checkpoint={F.checkpoint}: no such directory")
    config, params, meta = load_params(F.checkpoint, with_meta=True)
    try:
      task = None if F.drop_head else task_of(meta, params, os.path.abspath(F.checkpoint))
      clf_pdrop = float(((meta.get("config") or {}).get("task") or {}).get("clf_pdrop", 0.1))
      files = write_hf(F.out, config, params, task=task, clf_pdrop=clf_pdrop, max_shard_bytes=F.max_shard_size,
                       record={"source": os.path.abspath(F.checkpoint)})
    except ConversionError as e:
      raise SystemExit(f"error: {e}") from None
    print(
        f"wrote {hf_architecture(task)} ({config.num_params():,} parameters) to {os.path.abspath(F.out)}: "
        f"{', '.join(files)}", file=sys.stderr)
    return

  extra = {}
  if source == "hf":
    if not F.hf_path:
      raise SystemExit("error: --from=hf needs --hf_path")
    if not os.path.exists(F.hf_path):
      raise SystemExit(f"error: --hf_path={F.hf_path}: no such file or directory")
    config, params = from_hf_pretrained(F.hf_path, n_head=F.n_head, seed=F.seed, task=None)
    origin = os.path.abspath(F.hf_path)
    config_json = os.path.join(F.hf_path, "config.json")
    if os.path.isfile(config_json):
      with open(config_json) as f:
        task_name = (json.load(f).get(HF_RECORD_KEY) or {}).get("task")
      if task_name and "head" in params:
        extra["task"] = task_name  # what gpt1_jax.export and --to=hf read back
  else:
    if not F.openai_dir:
      raise SystemExit("error: --from=openai needs --openai_dir")
    config, params = from_openai_release(F.openai_dir, n_head=F.n_head or 12, seed=F.seed)
    origin = os.path.abspath(F.openai_dir)

  save_params(F.out, config, params, extra_meta={
      "converted_from": source,
      "source": origin,
      "special_rows_seed": F.seed,
      **extra
  })
  print(
      f"wrote {config.num_params():,} parameters ({config.n_layer} layers, d={config.n_embd}, "
      f"vocab {config.vocab_size}) to {os.path.abspath(F.out)}", file=sys.stderr)


def main(argv=None) -> None:
  """``python -m gpt1_jax.convert ARGS`` from Python: ``main(["--to=hf", "--checkpoint=DIR", "--out=HF_DIR"])``.

  ``argv``: the flags, as on the command line (default ``sys.argv[1:]``), parsed into a ``FlagValues``
  of their own. Mistakes raise ``SystemExit("error: ...")`` before anything is written.
  """
  _run(*errors.parse_own_flags(define_flags, PROG, argv))


def program(before_run=lambda: None) -> None:
  """``python -m gpt1_jax.convert``. Flags are defined only here, so importing the package never clashes
  with another entry point's flags; ``before_run`` runs once they are (``__main__`` adopts them for
  ``--help`` there)."""
  from absl import app

  define_flags()
  before_run()
  app.run(errors.cli(errors.absl_main(_run)), flags_parser=errors.parse_flags_help_ok)
