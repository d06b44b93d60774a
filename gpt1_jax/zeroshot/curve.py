"""Zero-shot scores along a pretraining run (Figure 2 right): every checkpoint step, every task.

``curve`` writes ``zeroshot_curve.json`` (step -> task -> score) after each
step, prints a markdown table and plots ``zeroshot_curve.png``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional, Sequence

from gpt1_jax import checkpoint, extras
from gpt1_jax.checkpoint import load_params, write_json
from gpt1_jax.workdir import RunDir
from gpt1_jax.tokenizer import GPT1Tokenizer
from gpt1_jax.zeroshot.scoring import Scorer
from gpt1_jax.zeroshot.suite import build, default_source, evaluate, summary

CURVE_JSON, CURVE_PNG = "zeroshot_curve.json", "zeroshot_curve.png"


def checkpoint_steps(run_dir: str) -> list[int]:
  """The complete checkpoint steps of a run (read-only: never touches a run that is still saving)."""
  rd = RunDir(os.path.abspath(run_dir))
  if not os.path.isdir(rd.checkpoints) and os.path.isdir(rd.path):  # given the checkpoints/ directory itself
    return checkpoint.complete_steps(rd.path)
  return rd.steps()


def markdown_table(scores: dict, tasks: Sequence[str], metrics: dict) -> str:
  head = "| step | " + " | ".join(f"{t} ({metrics[t]})" for t in tasks) + " |"
  rule = "|---:|" + "---:|" * len(tasks)
  rows = [
      f"| {step} | " + " | ".join(_fmt(scores[step].get(t)) for t in tasks) + " |" for step in sorted(scores, key=int)
  ]
  return "\n".join([head, rule, *rows])


def _fmt(v) -> str:
  return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def plot_curve(scores: dict, tasks: Sequence[str], metrics: dict, chance: dict, path: str) -> str:
  matplotlib = extras.require("matplotlib", "experiments", "plotting")
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker  # noqa: F401 - binds matplotlib.ticker
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  steps = sorted(scores, key=int)
  for i, task in enumerate(tasks):
    xs = [int(s) for s in steps if scores[s].get(task) is not None]
    ys = [scores[str(s)][task] for s in xs]
    line, = ax.plot(xs, ys, marker="o", label=f"{task} ({metrics[task]})", color=f"C{i}")
    if task in chance:
      ax.axhline(chance[task], color=line.get_color(), linestyle="--", linewidth=0.8, alpha=0.6)
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_xlabel("pretraining step (updates)")
  ax.set_ylabel("zero-shot score (dashed: chance)")
  ax.set_title("Zero-shot task performance during pretraining (cf. GPT-1 Figure 2, right)")
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def _json_safe(v):
  return None if isinstance(v, float) and not math.isfinite(v) else v


def curve(run_dir: str, tasks: Sequence[str], *, out_dir: Optional[str] = None, sources: Optional[dict] = None,
          split: str = "validation", max_examples: int = 0, batch_size: int = 32, dtype: Optional[str] = "float32",
          steps: Optional[Sequence[int]] = None, tokenizer=None, progress: bool = True, **options) -> dict:
  """Every task's zero-shot score at every checkpoint step of a pretraining run.

  Writes ``out_dir/zeroshot_curve.json`` after each step, so an interrupted
  curve keeps what it has. A score already there is reused when the run,
  split, ``max_examples``, ``dtype``, ``options`` and that task's source are
  the same; other tasks' columns are kept. Then prints a markdown table and
  plots ``out_dir/zeroshot_curve.png``, both for ``tasks``. ``options`` go to
  :func:`build` (``cola_threshold``, ``fit_threshold_on``,
  ``winograd_scoring``). Returns ``steps``, ``tasks``, ``scores`` (step ->
  task -> score), ``metric``, ``chance``, ``markdown``, ``json``, ``png``.
  """
  if not tasks:
    raise ValueError("no tasks")
  tasks = list(tasks)
  out_dir = os.path.abspath(out_dir or run_dir)
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, CURVE_JSON)
  sources = {t: (sources or {}).get(t) or default_source(t) for t in tasks}
  sources = {t: s if s == "tfds" or s.startswith("tfds:") else os.path.abspath(s) for t, s in sources.items()}
  if tokenizer is None:
    tokenizer = GPT1Tokenizer()
  heuristics = [
      build(t, tokenizer, source=sources[t], split=split, max_examples=max_examples, **options) for t in tasks
  ]
  steps = sorted(checkpoint_steps(run_dir) if steps is None else steps)
  settings = json.loads(
      json.dumps({
          "run": os.path.abspath(run_dir),
          "split": split,
          "max_examples": max_examples,
          "dtype": dtype,
          "options": dict(sorted(options.items()))
      }))
  doc = {"settings": settings, "sources": {}, "metric": {}, "chance": {}, "scores": {}}
  if os.path.isfile(json_path):
    with open(json_path) as f:
      previous = json.load(f)
    if previous.get("settings") == settings:
      doc = previous
      for row in doc["scores"].values():
        for t in [t for t in row if t in sources and doc["sources"].get(t) != sources[t]]:
          del row[t]
  doc["sources"].update(sources)
  doc["metric"].update({h.name: h.metric for h in heuristics})
  doc["chance"].update({h.name: h.chance for h in heuristics})
  scores = doc["scores"]
  for step in steps:
    todo = [h for h in heuristics if h.name not in scores.get(str(step), {})]
    if not todo:
      continue
    config, params = load_params(run_dir, step)
    scorer = Scorer(config, params, batch_size=batch_size, dtype=dtype, tokenizer=tokenizer, progress=progress)
    results = evaluate(scorer, todo)
    scores.setdefault(str(step), {}).update({t: _json_safe(float(r["score"])) for t, r in results.items()})
    print(f"step {step}: " + "; ".join(summary(r) for r in results.values()), flush=True)
    write_json(json_path, doc)
  write_json(json_path, doc)
  table_scores = {str(s): {t: scores[str(s)][t] for t in tasks} for s in steps}
  table = markdown_table(table_scores, tasks, doc["metric"])
  print(table, flush=True)
  png = plot_curve(table_scores, tasks, doc["metric"], doc["chance"], os.path.join(out_dir, CURVE_PNG))
  return {
      "steps": steps,
      "tasks": tasks,
      "scores": table_scores,
      "metric": {
          t: doc["metric"][t] for t in tasks
      },
      "chance": {
          t: doc["chance"][t] for t in tasks
      },
      "markdown": table,
      "json": json_path,
      "png": png
  }
