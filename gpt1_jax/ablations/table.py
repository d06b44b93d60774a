"""The table: each cell is the final evaluation a run logged (:func:`final_eval`), collected into
``ablations.json`` and drawn as Table 5 in ``ablations.md`` and as bars in ``ablations.png``; and the
paper's own Table 5, for the comparison.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from gpt1_jax import checkpoint, extras
from gpt1_jax.ablations.grid import Grid, lstm_units_of, run_dir
from gpt1_jax.workdir import RunDir

# Table 5's metric per task (the paper's tables report F1 for MRPC/QQP and Pearson for STS-B);
# accuracy for the rest.
TABLE_METRIC = {"cola": "mcc", "mrpc": "f1", "qqp": "f1", "stsb": "pearson"}
METRIC_NAMES = {"mcc": "mc", "accuracy": "acc", "f1": "F1", "pearson": "pc"}

# Table 5 of the paper (x100), for the comparison in BENCHMARKS.md.
PAPER_TABLE5 = {
    "columns": ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"),
    "full": (74.7, (45.4, 91.3, 82.3, 82.0, 70.3, 81.8, 88.1, 56.0)),
    "no_pretraining": (59.9, (18.9, 84.0, 79.4, 30.9, 65.5, 75.7, 71.2, 53.8)),
    "no_aux_lm": (75.0, (47.9, 92.0, 84.9, 83.2, 69.8, 81.1, 86.9, 54.4)),
    "lstm": (69.1, (30.3, 90.5, 83.2, 71.8, 68.1, 73.7, 81.1, 54.6)),
}


def final_eval(workdir: str) -> dict:
  """The last evaluation a run logged in its ``metrics.jsonl`` (what every cell of the table shows)."""
  last = {}
  for row in RunDir(workdir).metrics():
    if any(k.startswith("eval/") for k in row):
      last = row
  if not last:
    raise RuntimeError(f"{workdir}/metrics.jsonl has no evaluation")
  return last


def table_metric(task: str) -> str:
  return TABLE_METRIC.get(task, "accuracy")


def collect(grid: Grid, sources: dict, steps: dict) -> dict:
  cells = {}
  for arm in grid.arms:
    row = {}
    for task in grid.tasks:
      values = [100 * final_eval(run_dir(grid, task, arm.name, s))[f"eval/{table_metric(task)}"] for s in grid.seeds]
      row[task] = {"values": values, "mean": float(np.mean(values)), "std": _std(values)}
    per_seed = [float(np.mean([row[t]["values"][i] for t in grid.tasks])) for i in range(len(grid.seeds))]
    row["average"] = {"values": per_seed, "mean": float(np.mean(per_seed)), "std": _std(per_seed)}
    cells[arm.name] = row
  seconds = {}
  for task in grid.tasks:
    for arm in grid.arms:
      for s in grid.seeds:
        with open(os.path.join(run_dir(grid, task, arm.name, s), "result.json")) as f:
          seconds[f"{task}/{arm.name}/seed{s}"] = json.load(f)["seconds"]
  return {
      "tasks": list(grid.tasks),
      "metrics": {
          t: table_metric(t) for t in grid.tasks
      },
      "arms": [dataclasses.asdict(a) for a in grid.arms],
      "seeds": list(grid.seeds),
      "recipe": grid.recipe,
      "quick": grid.quick,
      "weights": {
          w: {
              "source": sources[w],
              "step": steps[w]
          } for w in sources
      },
      "lstm_units": lstm_units_of(grid),
      "task_dirs": {
          t: os.path.abspath(d) for t, d in grid.task_dirs.items()
      },
      "set": list(grid.finetune_set),
      "pretrain_set": list(grid.pretrain_set),
      "cells": cells,
      "run_seconds": seconds,
      "run_seconds_total": float(sum(seconds.values()))
  }


def _std(values) -> float:
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def table(record: dict) -> str:
  """Table 5's layout: one row per arm, the average then one column per task (metric in the header),
  each cell mean ± standard deviation over seeds, x100."""
  tasks = record["tasks"]
  head = ["Method", "Avg. Score"] + [f"{_TASK_LABELS.get(t, t)} ({METRIC_NAMES[record['metrics'][t]]})" for t in tasks]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  labels = {a["name"]: a["label"] for a in record["arms"]}
  for arm, row in record["cells"].items():
    cells = [_cell(row["average"])] + [_cell(row[t]) for t in tasks]
    lines.append(f"| {labels[arm]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


_TASK_LABELS = {
    "cola": "CoLA",
    "sst2": "SST2",
    "mrpc": "MRPC",
    "stsb": "STSB",
    "rte": "RTE",
    "qqp": "QQP",
    "mnli": "MNLI",
    "qnli": "QNLI",
    "story_cloze": "Story Cloze"
}


def _cell(c: dict) -> str:
  return f"{c['mean']:.1f} ± {c['std']:.1f}"


def write(record: dict, out: str):
  checkpoint.write_json(os.path.join(out, "ablations.json"), record)
  n = len(record["seeds"])
  with open(os.path.join(out, "ablations.md"), "w") as f:
    f.write(
        table(record) + f"\n\nmean ± sample standard deviation over {n} seed(s) "
        f"({', '.join(map(str, record['seeds']))}), x100; the average is over tasks, per seed.\n")
  matplotlib = extras.require("matplotlib", "experiments", "plotting")
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  tasks, arms = record["tasks"] + ["average"], list(record["cells"])
  labels = {a["name"]: a["label"] for a in record["arms"]}
  fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(tasks)), 4))
  width = 0.8 / len(arms)
  x = np.arange(len(tasks))
  for i, arm in enumerate(arms):
    cells = [record["cells"][arm][t] for t in tasks]
    ax.bar(x + (i - (len(arms) - 1) / 2) * width, [c["mean"] for c in cells], width, yerr=[c["std"] for c in cells],
           capsize=2, label=labels[arm])
    for j, c in enumerate(cells):  # every seed, so a spread of three is visible as three points
      ax.plot(np.full(len(c["values"]), x[j] + (i - (len(arms) - 1) / 2) * width), c["values"], "k.", ms=3)
  ax.set_xticks(x, [
      f"{_TASK_LABELS.get(t, t)}\n({METRIC_NAMES[record['metrics'][t]]})" if t != "average" else "average"
      for t in tasks
  ])
  ax.axhline(0, color="gray", lw=0.5)
  ax.set(ylabel="dev score x100", title=f"Table 5 in miniature ({n} seeds; bars: mean, whiskers: std)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "ablations.png"), dpi=120)
  plt.close(fig)
