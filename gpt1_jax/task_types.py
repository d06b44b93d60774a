"""The five kinds of fine-tuning task (paper section 3.3), and everything a kind decides.

A task's *type* fixes how many transformed sequences an example becomes, how the head reads
their ``_classify_`` states, how wide the head is, what the labels are and how predictions come
out of the head's outputs. Those choices live here, once; the model (``GPT1ForTask``), the
objective (``train.TaskObjective``), the input transformations, the metrics and the export read
them from the type instead of testing its name.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class TaskType:
  """``pooling``: how the ``[K, D]`` ``_classify_`` states of an example reach the head:
  ``first`` (the one sequence), ``sum`` (both orderings of a sentence pair, summed) or ``each``
  (one score per multiple-choice candidate)."""

  name: str
  pooling: str
  regression: bool = False
  sequences: Optional[int] = None  # K; None: one per candidate (multiple choice)

  def head_width(self, num_labels: int) -> int:
    """Outputs of the linear head: one score per candidate or a regression value, else a logit per class."""
    return 1 if self.pooling == "each" or self.regression else num_labels

  def num_labels(self, labels) -> int:
    """``num_labels`` of a task with class names ``labels`` (1: a candidate index or a value)."""
    return 1 if self.pooling == "each" or self.regression else len(labels)

  @property
  def label_dtype(self):
    return np.float32 if self.regression else np.int32

  @property
  def missing_label(self):
    """The label of an unlabelled example (a GLUE test row): NaN or -1."""
    return np.nan if self.regression else -1

  def predict(self, outputs, xp=np):
    """Head outputs -> predictions: the value (regression) or the argmax over classes / candidates.
    ``xp``: ``numpy`` or ``jax.numpy``."""
    return outputs if self.regression else xp.argmax(outputs, axis=-1)


TYPES = {t.name: t for t in (
    TaskType("classification", "first", sequences=1),
    TaskType("entailment", "first", sequences=1),
    TaskType("similarity", "sum", sequences=2),
    TaskType("multiple_choice", "each"),
    TaskType("regression", "sum", regression=True, sequences=2),
)}
NAMES = tuple(TYPES)


def get(name: str) -> TaskType:
  if name not in TYPES:
    raise ValueError(f"task type {name!r}, expected one of {NAMES}")
  return TYPES[name]
