"""Building and running a suite of zero-shot heuristics: which tasks, their data, their results."""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import numpy as np

from gpt1_jax import project, weights
from gpt1_jax.data.tasks import TASKS, get_task, load_split
from gpt1_jax.model import ModelConfig
from gpt1_jax.zeroshot.heuristics import (WINOGRAD, Acceptability, MultipleChoice, Sentiment, Winograd, read_winograd)
from gpt1_jax.zeroshot.scoring import Scorer

# The tasks whose default data is a sample shipped in the checkout's data/<task> (data/README.md),
# not in the package: where that folder is missing, an installed package must say so rather than
# silently read different data (tensorflow-datasets' full splits). The other tasks default to tfds.
SHIPPED_DATA = ("sst2", "cola")


def supported_tasks() -> list[str]:
  return ["sst2", "cola"] + [n for n, t in TASKS.items() if t.kind.multiple_choice] + [WINOGRAD]


def default_source(task: str) -> str:
  """``data/<task>`` of the checkout if present (as the fine-tuning configs), else tensorflow-datasets;
  a ValueError for a task whose shipped sample is missing (an installed package with no checkout)."""
  if task == WINOGRAD:
    raise ValueError("winograd needs a JSONL file: --source=winograd=PATH (see python -m gpt1_jax.zeroshot --help)")
  local = project.path("data", task, must_exist=False)  # $GPT1_JAX_HOME, else the clone holding the package
  if os.path.isdir(local):
    return local
  if task in SHIPPED_DATA:
    raise ValueError(f"{task}: its default data, data/{task}, ships with the gpt1_jax checkout, not with the "
                     f"package, and {local} is not there: pass --source={task}=PATH (source= in Python; a folder "
                     "or file in the official format, or 'tfds'), or set GPT1_JAX_HOME=/path/to/checkout")
  return "tfds"


def build(task: str, tokenizer, *, source: Optional[str] = None, split: str = "validation", max_examples: int = 0,
          cola_threshold: Optional[float] = None, fit_threshold_on: Optional[str] = None,
          winograd_scoring: str = "partial"):
  """The heuristic of ``task`` with its data read and tokenised, ready to ``evaluate(scorer)``."""
  if task not in supported_tasks():
    raise ValueError(f"no zero-shot heuristic for {task!r}; supported: {', '.join(supported_tasks())}")
  if cola_threshold is not None and fit_threshold_on:
    raise ValueError("give a CoLA threshold or a split to fit it on, not both")
  source = source or default_source(task)
  if task == WINOGRAD:
    return Winograd(
        read_winograd(source)[:max_examples or None], tokenizer, scoring=winograd_scoring,
        split=os.path.basename(source))
  t = get_task(task)
  data = load_split(t, split, source)
  data.examples = data.examples[:max_examples or None]
  if task == "sst2":
    h = Sentiment(data, tokenizer)
  elif task == "cola":
    # The whole fitting split: the threshold is one number, cheap to fit well.
    fit = load_split(t, fit_threshold_on, source) if fit_threshold_on else None
    h = Acceptability(data, tokenizer, threshold=cola_threshold, fit_data=fit)
  elif t.kind.multiple_choice:
    h = MultipleChoice(data, tokenizer)
  else:
    raise AssertionError(task)
  # What identifies each example in its source (file:line), for --predictions_out.
  h.example_sources = [e.source for e in data.examples]
  h.example_ids = [e.id for e in data.examples]
  return h


def write_predictions(results: dict[str, dict], heuristics: Sequence, path: str) -> None:
  """One JSON object per example: task, split, position, id and source, label, prediction, scores."""
  with open(path + ".tmp", "w") as f:
    for h in heuristics:
      r = results[h.name]
      n = len(r["labels"])
      ids = getattr(h, "example_ids", None) or [str(i) for i in range(n)]
      sources = getattr(h, "example_sources", None) or [""] * n
      for i in range(n):
        score = np.asarray(r["scores"][i], np.float64)
        row = {
            "task": h.name,
            "split": h.split,
            "position": i,
            "id": ids[i],
            "source": sources[i],
            "label": int(r["labels"][i]),
            "prediction": int(r["predictions"][i]),
            "scores": [None if not np.isfinite(v) else float(v) for v in np.atleast_1d(score)]
        }
        f.write(json.dumps(row) + "\n")
  os.replace(path + ".tmp", path)


def evaluate(scorer: Scorer, heuristics: Sequence) -> dict[str, dict]:
  """``{task: result}``; a result holds the metrics, ``score`` (the main one), and per-example
  ``scores``, ``predictions`` and ``labels``."""
  return {h.name: h.evaluate(scorer) for h in heuristics}


def summary(result: dict) -> str:
  """One line: the main score, then the other scalars (other metrics, counts, CoLA's threshold)."""
  skip = ("task", "split", "metric", "score")
  scalars = {k: v for k, v in result.items() if isinstance(v, (int, float, str)) and k not in skip}
  rest = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in scalars.items())
  return f"{result['task']} ({result['split']}): {result['metric']} {result['score']:.4f} ({rest})"


def load_model(checkpoint: Optional[str] = None, *, step: Optional[int] = None, from_hf: Optional[str] = None,
               from_openai: Optional[str] = None) -> tuple[ModelConfig, Any]:
  if sum(x is not None for x in (checkpoint, from_hf, from_openai)) != 1:
    raise ValueError("give exactly one of checkpoint, from_hf, from_openai")
  return weights.load(checkpoint or (f"hf:{from_hf}" if from_hf else f"openai:{from_openai}"), step=step)
