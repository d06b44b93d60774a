"""The paper's Table 5 in miniature: every task under the four ablation arms, several seeds, one command.

  python -m gpt1_jax.ablations --transformer=workdirs/demo/pretrain --out=workdirs/ablations \\
      --task_dirs=mrpc=../shared/data/MRPC,story_cloze=../shared/data/StoryCloze

The arms are the rows of Table 5 (Radford et al. 2018, Section 5 "Ablation studies"):

* ``full``: the pretrained transformer, fine-tuned with the auxiliary LM objective, L3 = L2 + 0.5 L1;
* ``no_pretraining``: the same transformer shape from random initialisation, lambda = 0.5;
* ``no_aux_lm``: the pretrained transformer, lambda = 0 (L2 alone);
* ``lstm``: a single-layer LSTM pretrained on the same data for the same steps, lambda = 0.5.

Without ``--tasks`` the grid runs every task of Table 5 whose data is here (``data/TASK`` of the
checkout, or ``--task_dirs``) and names the ones it left out: MRPC and Story Cloze cannot be
shipped, so a fresh clone runs four tasks. An explicit ``--tasks`` runs exactly those or refuses.

Every (task, arm, seed) is its own ``train_and_evaluate`` run in ``OUT/runs/TASK/ARM/seedS``; a run
that finished has ``result.json`` there and is never rerun, an interrupted one resumes from its
checkpoint, so an interrupted grid continues where it stopped. Each cell is the metric of the
final evaluation that the run logged in its ``metrics.jsonl`` (Table 5's metrics: Matthews
correlation for CoLA, F1 for MRPC and QQP, Pearson for STS-B, accuracy elsewhere), as mean and
sample standard deviation over seeds; the average column averages the tasks per seed first.
Writes ``OUT/ablations.json``, ``OUT/ablations.md`` and ``OUT/ablations.png``.

Pretrained weights: ``--transformer`` and ``--lstm`` take anything ``init.weights`` reads (a run's
workdir, a weights directory, ``openai:DIR``, ``hf:PATH``); the latest checkpoint is frozen into
``OUT/weights/`` before the first run, so a pretraining run that goes on does not change the
grid under it. Without ``--transformer`` the grid pretrains ``configs/pretrain.py:<recipe>`` on
``--pretrain_data`` in ``OUT/pretrain/transformer``; without ``--lstm`` it pretrains the LSTM in
``OUT/pretrain/lstm`` with the transformer run's own data, seed, batch, schedule and step count
(from its ``config.json``), only ``model.architecture=lstm`` and ``model.lstm_units`` changed.
Both pretraining runs resume.

``--recipe=tiny`` (the default) fine-tunes with ``configs/finetune.py:<task>_tiny`` sized by
:data:`TINY_SIZES` to fit 2 CPU cores; ``--recipe=paper`` with ``configs/finetune.py:<task>`` (the
paper's hyperparameters, every training example), pretraining ``configs/pretrain.py:gpt1`` and a
2,048-unit LSTM. ``--set=KEY=VALUE`` (or ``TASK:KEY=VALUE``) overrides any key of every (or one
task's) fine-tuning config, ``--pretrain_set`` of the pretraining configs: that is how the same
command runs on a GPU or a pod (``model.dtype=bfloat16``, ``mesh.fsdp=-1``...). Every input is
checked before anything trains: unknown tasks or keys, missing task files, unreadable or
mismatched checkpoints end the command with one ``error:`` line.

The package: ``grid`` (the arms, :class:`Grid`, the recipes' sizes, the input checks and weight
freezing, every run's config), ``run`` (pretraining and the runs, resumably), ``table`` (each
cell from a run's log, ``ablations.json/.md/.png``, the paper's Table 5), ``cli`` (the flags and
``main``; ``__main__`` runs it).
"""

from gpt1_jax.ablations.cli import define_flags, grid_from_flags, main  # noqa: F401 - re-exported
from gpt1_jax.ablations.grid import (ARM_NAMES, ARMS, DEFAULT_TASKS, LSTM_UNITS, QUICK_CORPUS_REVIEWS, QUICK_FINETUNE,
                                     QUICK_LSTM_UNITS, QUICK_PRETRAIN, RECIPES, TINY_SIZES, Arm, Grid, assign,
                                     check_inputs, finetune_config, left_out_message, parse_assignments,
                                     pretrain_config, run_dir, task_dirs_with_defaults, tasks_with_data)
from gpt1_jax.ablations.run import pretrain, run_grid, run_once
from gpt1_jax.ablations.table import (METRIC_NAMES, PAPER_TABLE5, TABLE_METRIC, collect, final_eval, table,
                                      table_metric, write)

__all__ = [
    "ARMS", "ARM_NAMES", "DEFAULT_TASKS", "LSTM_UNITS", "METRIC_NAMES", "PAPER_TABLE5", "QUICK_CORPUS_REVIEWS",
    "QUICK_FINETUNE", "QUICK_LSTM_UNITS", "QUICK_PRETRAIN", "RECIPES", "TABLE_METRIC", "TINY_SIZES", "Arm", "Grid",
    "assign", "check_inputs", "collect", "final_eval", "finetune_config", "grid_from_flags", "left_out_message", "main",
    "parse_assignments", "pretrain", "pretrain_config", "run_dir", "run_grid", "run_once", "table", "table_metric",
    "task_dirs_with_defaults", "tasks_with_data", "write"
]
