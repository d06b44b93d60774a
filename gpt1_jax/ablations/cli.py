"""The command line, ``python -m gpt1_jax.ablations`` (usage: the package docstring).

Flags are defined by ``define_flags()`` only when run as a program, so importing this module
never clashes with another entry point's flags.
"""

from __future__ import annotations

from absl import flags

from gpt1_jax.ablations.grid import (DEFAULT_TASKS, RECIPES, Grid, left_out_message, task_dirs_with_defaults,
                                     tasks_with_data)
from gpt1_jax.ablations.run import run_grid
from gpt1_jax.ablations.table import table
from gpt1_jax.report import quiet_library_logs


def grid_from_flags(f) -> tuple[Grid, tuple]:
  """The grid the flags describe, and the default tasks left out of it for want of data."""
  tasks = tuple(f.tasks)
  given = {}
  for item in f.task_dirs:
    task, eq, d = item.partition("=")
    if not eq or not task or not d:
      raise ValueError(f"--task_dirs: {item!r}: expected TASK=DIR")
    given[task] = d
  dirs = task_dirs_with_defaults(tasks, given)
  left_out = ()
  if not f["tasks"].present:
    tasks, left_out = tasks_with_data(tasks, dirs)
  try:
    seeds = tuple(int(s) for s in f.seeds)
  except ValueError:
    raise ValueError(f"--seeds={','.join(f.seeds)}: expected integers") from None
  if f.quick and not f["seeds"].present:
    seeds = (0,)
  return Grid(out=f.out, tasks=tasks, task_dirs=dirs, seeds=seeds, recipe=f.recipe, transformer=f.transformer,
              lstm=f.lstm, pretrain_data=f.pretrain_data, lstm_units=f.lstm_units, finetune_set=tuple(f.set),
              pretrain_set=tuple(f.pretrain_set), quick=f.quick, keep_weights=f.keep_weights), left_out


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  quiet_library_logs()
  if flags.FLAGS.distributed:
    import jax
    jax.distributed.initialize()  # auto-detects Cloud TPU / SLURM, as gpt1_jax.main --distributed
  grid, left_out = grid_from_flags(flags.FLAGS)
  if left_out:  # said first, and again under the table, where a long run's reader looks
    print(left_out_message(left_out), flush=True)
  record = run_grid(grid, log=lambda m: print(m, flush=True))
  print(table(record))
  print(f"wrote {grid.out}/ablations.{{json,md,png}}")
  if left_out:
    print(left_out_message(left_out))


def define_flags():
  flags.DEFINE_string("out", None, "Output directory: runs, frozen weights, the table (resumes).", required=True)
  flags.DEFINE_list(
      "tasks", list(DEFAULT_TASKS), "Tasks (columns of the table). Unset: those of the default "
      "list with data here (the others are named, with how to add them); set: exactly these.")
  flags.DEFINE_list(
      "task_dirs", [], "TASK=DIR for tasks the project does not ship (MRPC, Story Cloze) or "
      "other copies; shipped tasks default to data/TASK.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Fine-tuning seeds (--quick: 0).")
  flags.DEFINE_string(
      "transformer", "", "Pretrained transformer (a run, weights dir, openai:DIR or hf:PATH); "
      "empty: pretrain one on --pretrain_data.")
  flags.DEFINE_string("lstm", "", "Pretrained LSTM run or weights; empty: pretrain one like the transformer.")
  flags.DEFINE_string("pretrain_data", "", "Token store to pretrain on when --transformer is not given.")
  flags.DEFINE_integer("lstm_units", 0, "LSTM width when pretraining it (0: 256 for tiny, 2048 for paper).")
  flags.DEFINE_enum("recipe", "tiny", RECIPES, "tiny: configs/*:tiny sized for 2 CPU cores; paper: GPT-1's.")
  flags.DEFINE_list("set", [], "KEY=VALUE or TASK:KEY=VALUE overrides of the fine-tuning configs.")
  flags.DEFINE_list("pretrain_set", [], "KEY=VALUE overrides of the pretraining configs.")
  flags.DEFINE_bool("quick", False, "A smoke test: micro models pretrained on the fly, 3 steps per run, 1 seed.")
  flags.DEFINE_bool(
      "distributed", False, "Multi-host: jax.distributed.initialize() first; every host runs the "
      "same command, --out on a filesystem all hosts share.")
  flags.DEFINE_bool("keep_weights", False, "Keep each run's checkpoints/ and best/ (removed once it finished).")
