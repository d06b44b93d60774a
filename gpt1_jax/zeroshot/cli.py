"""The command line, ``python -m gpt1_jax.zeroshot`` (usage: the package docstring).

Flags are defined by ``define_flags()`` only when run as a program, so
importing this module never clashes with another entry point's flags.
"""

from __future__ import annotations

import logging
from typing import Sequence

from gpt1_jax import report
from gpt1_jax.tokenizer import GPT1Tokenizer
from gpt1_jax.zeroshot.curve import curve
from gpt1_jax.zeroshot.heuristics import WINOGRAD_SCORING
from gpt1_jax.zeroshot.scoring import Scorer
from gpt1_jax.zeroshot.suite import build, evaluate, load_model, summary, supported_tasks, write_predictions


def parse_sources(values: Sequence[str], tasks: Sequence[str]) -> dict:
  out = {}
  for value in values or ():
    name, sep, path = value.partition("=")
    if sep and name in supported_tasks():
      out[name] = path
    elif len(tasks) == 1:
      out[tasks[0]] = value
    else:
      raise ValueError(f"--source={value!r}: with several tasks write --source=TASK=PATH")
  unknown = set(out) - set(tasks)
  if unknown:
    raise ValueError(f"--source given for task(s) not evaluated: {sorted(unknown)}")
  return out


def define_flags():
  from absl import flags
  flags.DEFINE_string("checkpoint", None, "Weights checkpoint, training run's workdir or its checkpoints/ dir.")
  flags.DEFINE_integer("step", None, "Checkpoint step for --checkpoint (default: the latest).")
  flags.DEFINE_string("from_hf", None, "A saved Hugging Face OpenAI-GPT model (directory or weights file).")
  flags.DEFINE_string("from_openai", None, "OpenAI's release directory (params_shapes.json, params_*.npy).")
  flags.DEFINE_string("run", None, "A pretraining workdir: evaluate every checkpoint step (the curve).")
  flags.DEFINE_string("task", None, f"One task: {', '.join(supported_tasks())}.")
  flags.DEFINE_list("tasks", [], "Several tasks, comma-separated (with --task: both).")
  flags.DEFINE_multi_string(
      "source", [], "Data source: a folder / file / 'tfds' for the one task, or TASK=SOURCE "
      "(repeat). Default: data/<task> of the repo if present, else tfds.")
  flags.DEFINE_string("split", "dev", "Split to evaluate (dev = validation).")
  flags.DEFINE_integer("max_examples", 0, "Evaluate the first N examples only (0: all).")
  flags.DEFINE_integer("batch_size", 32, "Sequences per scoring batch.")
  flags.DEFINE_string("dtype", "float32", "Compute dtype (overrides the checkpoint's; '' keeps it).")
  flags.DEFINE_float("cola_threshold", None, "CoLA: score threshold (default: the median score of the split).")
  flags.DEFINE_enum("fit_threshold_on", None, ["train"], "CoLA: fit the threshold (max MCC) on this split.")
  flags.DEFINE_enum("winograd_scoring", "partial", list(WINOGRAD_SCORING),
                    "Winograd: score the words after the blank (partial, the paper's) or the whole sentence.")
  flags.DEFINE_string("curve_out", None, "With --run: where zeroshot_curve.json/.png go (default: the run dir).")
  flags.DEFINE_bool("progress", True, "Show progress bars.")
  flags.DEFINE_string(
      "predictions_out", None, "Write one JSON line per example (id, source line, label, prediction, "
      "scores) to this file, so results can be audited.")


def main(argv):
  from absl import app, flags
  from absl import logging as absl_logging
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  F = flags.FLAGS
  if not F["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  # Orbax warns on every read-only checkpoint open; only its errors matter here.
  report.quiet_library_logs(below=logging.ERROR, libraries=("orbax",))
  tasks = list(dict.fromkeys(([F.task] if F.task else []) + list(F.tasks)))
  if not tasks:
    raise app.UsageError("give --task=NAME or --tasks=A,B")
  if F.cola_threshold is not None and F.fit_threshold_on:
    raise app.UsageError("--cola_threshold and --fit_threshold_on exclude each other")
  options = dict(cola_threshold=F.cola_threshold, fit_threshold_on=F.fit_threshold_on,
                 winograd_scoring=F.winograd_scoring)
  sources = parse_sources(F.source, tasks)
  if F.run:
    if F.checkpoint or F.from_hf or F.from_openai:
      raise app.UsageError("--run evaluates a run's checkpoints: drop --checkpoint/--from_hf/--from_openai")
    curve(F.run, tasks, out_dir=F.curve_out, sources=sources, split=F.split, max_examples=F.max_examples,
          batch_size=F.batch_size, dtype=F.dtype or None, progress=F.progress, **options)
    return
  if sum(bool(x) for x in (F.checkpoint, F.from_hf, F.from_openai)) != 1:
    raise app.UsageError("give one of --checkpoint, --from_hf, --from_openai (or --run for a curve)")
  tokenizer = GPT1Tokenizer()
  heuristics = [
      build(t, tokenizer, source=sources.get(t), split=F.split, max_examples=F.max_examples, **options) for t in tasks
  ]
  config, params = load_model(F.checkpoint or None, step=F.step, from_hf=F.from_hf or None, from_openai=F.from_openai or
                              None)
  scorer = Scorer(config, params, batch_size=F.batch_size, dtype=F.dtype or None, tokenizer=tokenizer,
                  progress=F.progress)
  results = evaluate(scorer, heuristics)
  for result in results.values():
    print(summary(result), flush=True)
  if F.predictions_out:
    write_predictions(results, heuristics, F.predictions_out)
    print(f"per-example predictions: {F.predictions_out}", flush=True)
