"""Task metrics of the fine-tuning evaluations (Tables 2-4), and GLUE submission files.

Task metrics only (the LM's loss and perplexity live with the trainer). All
functions take host NumPy arrays and return Python floats; each equals its
scikit-learn / SciPy counterpart (pinned down by the tests) without needing
either at run time.

Main metric, for best-checkpoint selection, follows the GLUE leaderboard:
Matthews correlation for CoLA, the mean of accuracy and F1 for MRPC and QQP
(``acc_and_f1``), the mean of Pearson and Spearman correlations for STS-B
(``pearson_spearman``), accuracy everywhere else. (The paper's tables report
F1 for MRPC/QQP and Pearson for STS-B; both are in :func:`compute_metrics`.)
"""

from __future__ import annotations

import math
import os
from typing import Callable, Optional, Sequence

import numpy as np

from gpt1_jax.data import tasks
from gpt1_jax.data.tasks import Task


def _pair(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
  p, y = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
  if p.shape != y.shape:
    raise ValueError(f"{p.size} predictions for {y.size} labels")
  return p, y


def accuracy(predictions, labels) -> float:
  p, y = _pair(predictions, labels)
  return float(np.mean(p == y)) if y.size else math.nan


def matthews_corrcoef(predictions, labels) -> float:
  """Matthews correlation (multi-class form of Gorodkin 2004, as scikit-learn); 0 when undefined."""
  p, y = _pair(predictions, labels)
  classes, codes = np.unique(np.concatenate([y, p]), return_inverse=True)
  k = len(classes)
  confusion = np.zeros((k, k), np.float64)
  np.add.at(confusion, (codes[:y.size], codes[y.size:]), 1.0)
  true_sum, pred_sum = confusion.sum(axis=1), confusion.sum(axis=0)
  n, correct = confusion.sum(), np.trace(confusion)
  cov_yp = correct * n - true_sum @ pred_sum
  cov_pp = n * n - pred_sum @ pred_sum
  cov_yy = n * n - true_sum @ true_sum
  if cov_pp * cov_yy == 0:
    return 0.0
  return float(cov_yp / math.sqrt(cov_yy * cov_pp))


def f1(predictions, labels) -> float:
  """Binary F1 of the positive class 1; 0 when there are no positives at all (scikit-learn's zero_division)."""
  p, y = _pair(predictions, labels)
  tp = float(np.sum((p == 1) & (y == 1)))
  fp = float(np.sum((p == 1) & (y != 1)))
  fn = float(np.sum((p != 1) & (y == 1)))
  return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def pearson(predictions, labels) -> float:
  """Pearson correlation; NaN when either side is constant (as SciPy)."""
  p, y = _pair(predictions, labels)
  p, y = p.astype(np.float64) - p.mean(), y.astype(np.float64) - y.mean()
  denominator = math.sqrt(float(p @ p) * float(y @ y))
  return float(np.clip((p @ y) / denominator, -1.0, 1.0)) if denominator > 0 else math.nan


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks, ties sharing their mean rank (SciPy's ``rankdata(method='average')``)."""
  order = np.argsort(x, kind="mergesort")
  sorted_x = x[order]
  starts = np.concatenate([[0], np.flatnonzero(sorted_x[1:] != sorted_x[:-1]) + 1])
  ends = np.concatenate([starts[1:], [x.size]])
  ranks = np.empty(x.size, np.float64)
  ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
  return ranks


def spearman(predictions, labels) -> float:
  """Spearman rank correlation: Pearson of the average ranks."""
  p, y = _pair(predictions, labels)
  return pearson(_average_ranks(p), _average_ranks(y))


METRICS: dict[str, Callable] = {
    "accuracy": accuracy,
    "mcc": matthews_corrcoef,
    "f1": f1,
    "pearson": pearson,
    "spearman": spearman
}
# Combined scores of the GLUE leaderboard: name -> the metrics averaged.
COMBINED = {"acc_and_f1": ("accuracy", "f1"), "pearson_spearman": ("pearson", "spearman")}


def main_metric(task: Task) -> str:
  """The metric that picks the best checkpoint (higher is better); a key of :func:`compute_metrics`."""
  task = tasks.resolve(task)  # a name still works for callers written before Task objects
  metrics = set(task.metrics)
  for name, parts in COMBINED.items():
    if metrics == set(parts):
      return name
  return "mcc" if "mcc" in metrics else task.metrics[0]


def predictions_from_outputs(task: Task, outputs) -> np.ndarray:
  """Head outputs -> predictions: argmax of logits ``[N, C]`` (or ``[N, K]`` candidates); regression as is."""
  task = tasks.resolve(task)  # a name still works for callers written before Task objects
  outputs = np.asarray(outputs)
  if task.kind.regression:
    return outputs.reshape(-1).astype(np.float64)
  return task.kind.predict(outputs) if outputs.ndim == 2 else outputs.reshape(-1)  # logits, or ids already


def compute_metrics(task: Task, predictions, labels, mask: Optional[Sequence] = None) -> dict:
  """``{metric: value}`` for the task's metrics plus its main metric.

  ``predictions`` are class ids, logits (argmax is taken), or regression
  values. Examples with ``mask == 0`` (eval padding) or without a label (-1,
  NaN) are left out. For multiple choice, mask absent candidates' logits
  (``choice_mask``) before passing them.
  """
  task = tasks.resolve(task)  # a name still works for callers written before Task objects
  p = predictions_from_outputs(task, predictions)
  y = np.asarray(labels).reshape(-1)
  if p.shape != y.shape:
    raise ValueError(f"{p.size} predictions for {y.size} labels")
  keep = ~np.isnan(y) if task.kind.regression else y >= 0
  if mask is not None:
    keep &= np.asarray(mask).reshape(-1) > 0
  p, y = p[keep], y[keep]
  result = {name: METRICS[name](p, y) for name in task.metrics}
  main = main_metric(task)
  if main in COMBINED:
    result[main] = float(np.mean([result[m] for m in COMBINED[main]]))
  result["num_examples"] = int(y.size)
  return result


# ----------------------------------------------------------------------------
# GLUE submission files (https://gluebenchmark.com/submit): ``index\tprediction``.

# task -> (file stem, how a prediction is written): "id" class id, "name" label name, "score" float.
GLUE_FILES = {
    "cola": ("CoLA", "id"),
    "sst2": ("SST-2", "id"),
    "mrpc": ("MRPC", "id"),
    "qqp": ("QQP", "id"),
    "stsb": ("STS-B", "score"),
    "mnli": ("MNLI", "name"),
    "qnli": ("QNLI", "name"),
    "rte": ("RTE", "name")
}
_MNLI_SUFFIX = {
    "test_matched": "-m",
    "validation_matched": "-m",
    "test_mismatched": "-mm",
    "validation_mismatched": "-mm"
}


def glue_filename(task: Task, split: Optional[str] = None) -> str:
  """``SST-2.tsv``, ``MNLI-m.tsv``... (GLUE's names); other tasks get ``<name>.tsv`` (Story Cloze:
  ``ROCStories.tsv``, as the original code)."""
  task = tasks.resolve(task)  # a name still works for callers written before Task objects
  if task.name == "mnli":
    if split not in _MNLI_SUFFIX:
      raise ValueError(f"mnli predictions need split='test_matched' or 'test_mismatched', got {split!r}")
    return f"MNLI{_MNLI_SUFFIX[split]}.tsv"
  if task.name in GLUE_FILES:
    return GLUE_FILES[task.name][0] + ".tsv"
  return "ROCStories.tsv" if task.name == "story_cloze" else f"{task.name}.tsv"


def write_glue_predictions(task: Task, predictions, directory: str, *, split: Optional[str] = None,
                           ids: Optional[Sequence] = None) -> str:
  """Writes ``directory/<GLUE name>.tsv`` and returns its path.

  ``predictions``: class ids, logits or regression values, in example order;
  ``ids``: the ``index`` column (``Example.id``; default ``0..N-1``). Labels
  are written as GLUE expects: 0/1 for CoLA, SST-2, MRPC and QQP; label names
  (``entailment``/``not_entailment``...) for MNLI, QNLI and RTE; a score
  clipped to [0, 5] for STS-B. Other tasks write label names (a score, for regression).
  """
  task = tasks.resolve(task)  # a name still works for callers written before Task objects
  p = predictions_from_outputs(task, predictions)
  ids = list(range(len(p))) if ids is None else list(ids)
  if len(ids) != len(p):
    raise ValueError(f"{len(ids)} ids for {len(p)} predictions")
  style = GLUE_FILES.get(task.name, (None, "score" if task.kind.regression else "name"))[1]
  if style == "score":
    lo, hi = task.label_range
    cells = [f"{v:.3f}" for v in np.clip(p, lo, hi)]
  else:
    values = [int(v) for v in p]
    bad = [v for v in values if not 0 <= v < len(task.labels)]
    if bad:
      raise ValueError(f"{task.name}: predictions {bad[:5]} are not class ids 0..{len(task.labels) - 1}")
    cells = [str(v) if style == "id" else task.labels[v] for v in values]
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, glue_filename(task, split))
  with open(path, "w", encoding="utf-8") as f:
    f.write("index\tprediction\n")
    f.writelines(f"{i}\t{cell}\n" for i, cell in zip(ids, cells))
  return path
