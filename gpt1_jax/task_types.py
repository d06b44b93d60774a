"""The five kinds of fine-tuning task (paper section 3.3), and everything a kind decides.

A task's *type* fixes how an example is laid out as token sequences and how many it becomes,
how the head reads their ``_classify_`` states, how wide the head is, what the labels are and how
predictions come out of the head's outputs. Those choices live here, once; the model
(``GPT1ForTask``), the objective (``train.TaskObjective``), the input transformations, the readers,
the metrics, the export and the Hugging Face conversion read them from the type instead of testing
its name, so a new type is one more row of :data:`TYPES`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class TaskType:
  """``layout``: the input transformation of Section 3.3 (``data/transforms.py``), with ``s``,
  ``d``, ``c`` the start, delimiter and classify tokens: ``single`` (``s text c``), ``pair``
  (``s premise d hypothesis c``, the order given), ``both_orders`` (``s a d b c`` and ``s b d a c``:
  the pair has no inherent order) or ``candidates`` (``s context d answer c`` per candidate).

  ``pooling``: how the ``[K, D]`` ``_classify_`` states of an example reach the head:
  ``first`` (the one sequence), ``sum`` (both orderings of a sentence pair, summed) or ``each``
  (one score per multiple-choice candidate)."""

  name: str
  layout: str
  pooling: str
  regression: bool = False
  sequences: Optional[int] = None  # K; None: one per candidate (multiple choice)

  @property
  def multiple_choice(self) -> bool:
    """One score per candidate: examples carry candidates (``Example.choices``), tasks a ``num_choices``."""
    return self.pooling == "each"

  @property
  def min_length(self) -> int:
    """The shortest sequence length an example fits in: the special tokens and one text token a side."""
    return 3 if self.layout == "single" else 5

  def output_description(self, num_sequences: int, num_labels: int) -> str:
    """What the head returns for a batch (the export's signature)."""
    if self.multiple_choice:
      return f"one score per candidate [batch, {num_sequences}], float32"
    return "[batch] float32" if self.regression else f"[batch, {num_labels}] float32 logits"

  def mask_absent(self, logits, present, xp=np):
    """Multiple choice: the candidates that are not there (``present`` false: an example with fewer
    than K, or an all-padding row) get no probability; other types' logits pass unchanged.

    Float32's lowest value rather than ``-inf``, so an example with no candidate at all (eval
    padding) still has a finite loss. Training (``choice_mask``) and the export (an all-zero
    attention mask) both mask here. ``xp``: ``numpy`` or ``jax.numpy``.
    """
    return xp.where(present, logits, xp.finfo(xp.float32).min) if self.multiple_choice else logits

  def head_width(self, num_labels: int) -> int:
    """Outputs of the linear head: one score per candidate or a regression value, else a logit per class."""
    return 1 if self.multiple_choice or self.regression else num_labels

  def num_labels(self, labels) -> int:
    """``num_labels`` of a task with class names ``labels`` (1: a candidate index or a value)."""
    return 1 if self.multiple_choice or self.regression else len(labels)

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


TYPES = {
    t.name: t for t in (
        TaskType("classification", "single", "first", sequences=1),
        TaskType("entailment", "pair", "first", sequences=1),
        TaskType("similarity", "both_orders", "sum", sequences=2),
        TaskType("multiple_choice", "candidates", "each"),
        TaskType("regression", "both_orders", "sum", regression=True, sequences=2),
    )
}
NAMES = tuple(TYPES)


def get(name: str) -> TaskType:
  if name not in TYPES:
    raise ValueError(f"task type {name!r}, expected one of {NAMES}")
  return TYPES[name]
