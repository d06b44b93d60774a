"""The zero-shot heuristics of Section 5, one class per kind of task.

Each tokenises its data once (``__init__``) and scores it with any model
(``evaluate(scorer)``), so a pretraining curve re-tokenises nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Optional, Sequence

import numpy as np

from gpt1_jax import metrics as metrics_lib
from gpt1_jax.zeroshot.scoring import Scorer

WINOGRAD = "winograd"
WINOGRAD_SCORING = ("partial", "full")


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
  unique = list(dict.fromkeys(texts))
  table = dict(zip(unique, tokenizer.encode_batch(unique)))
  return [list(table[t]) for t in texts]


def _labels(examples) -> np.ndarray:
  return np.array([-1 if e.label is None else int(e.label) for e in examples], np.int64)


def _result(h, metrics: dict, **arrays) -> dict:
  return {
      "task": h.name,
      "split": h.split,
      "metric": h.metric,
      "score": metrics.get(h.metric, math.nan),
      **metrics,
      **arrays
  }


class Sentiment:
  """SST-2: ``[s] sentence very`` -> next-token probabilities of the label words."""

  chance = 0.5

  def __init__(self, data, tokenizer):
    self.task, self.split, self.name = data.task, data.split, data.task.name
    self.metric = metrics_lib.main_metric(self.task)
    words = _encode(tokenizer, list(self.task.labels))  # ("negative", "positive"): class order
    if any(len(w) != 1 for w in words):
      raise ValueError(f"{self.name}: label words {self.task.labels} are not single tokens: {words}")
    self.word_ids = [w[0] for w in words]
    very = _encode(tokenizer, ["very"])[0]
    self.prefixes = [[tokenizer.start_id] + ids + very for ids in _encode(tokenizer, [e.texts[0] for e in data])]
    self.labels = _labels(data)

  def evaluate(self, scorer: Scorer) -> dict:
    scores = scorer.next_token_logprobs(self.prefixes, self.word_ids, desc=self.name)
    return _result(self, metrics_lib.compute_metrics(self.task, scores, self.labels), scores=scores,
                   predictions=scores.argmax(-1), labels=self.labels)


def fit_threshold(scores, labels) -> float:
  """The threshold ``t`` maximising the MCC of ``scores >= t`` against ``labels`` (1 = positive).

  Candidates lie midway between consecutive distinct scores, above the
  highest (nothing positive) and at the lowest (everything positive); of
  equally good ones the highest is returned.
  """
  s = np.asarray(scores, np.float64)
  y = np.asarray(labels) == 1
  order = np.argsort(-s, kind="stable")
  s, y = s[order], y[order]
  n = s.size
  k = np.arange(n + 1)  # predict the top k positive
  tp = np.concatenate([[0], np.cumsum(y)]).astype(np.float64)
  fp = k - tp
  fn, tn = y.sum() - tp, (n - y.sum()) - fp
  den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  mcc = np.where(den > 0, (tp * tn - fp * fn) / np.where(den > 0, den, 1), 0.0)
  valid = np.ones(n + 1, bool)
  valid[1:n] = s[:-1] > s[1:]  # a threshold cannot split tied scores
  best = int(np.argmax(np.where(valid, mcc, -np.inf)))
  if best == 0:
    return float(s[0] + 1.0) if n else 0.0
  if best == n:
    return float(s[-1])
  return float((s[best - 1] + s[best]) / 2)


class Acceptability:
  """CoLA: the average token log-probability of ``[s] sentence``, thresholded."""

  chance = 0.0  # MCC of a random guess

  def __init__(self, data, tokenizer, *, threshold: Optional[float] = None, fit_data=None):
    self.task, self.split, self.name = data.task, data.split, data.task.name
    self.metric = metrics_lib.main_metric(self.task)
    self.threshold = threshold
    start = tokenizer.start_id
    self.pairs = [([start], ids) for ids in _encode(tokenizer, [e.texts[0] for e in data])]
    self.labels = _labels(data)
    self.fit_pairs = self.fit_labels = None
    if fit_data is not None:
      self.fit_split = fit_data.split
      self.fit_pairs = [([start], ids) for ids in _encode(tokenizer, [e.texts[0] for e in fit_data])]
      self.fit_labels = _labels(fit_data)

  def evaluate(self, scorer: Scorer) -> dict:
    scores = scorer.mean_logprobs(self.pairs, desc=self.name)
    if self.threshold is not None:
      threshold, origin = float(self.threshold), "given"
    elif self.fit_pairs is not None:
      fit_scores = scorer.mean_logprobs(self.fit_pairs, desc=f"{self.name} ({self.fit_split})")
      threshold, origin = fit_threshold(fit_scores, self.fit_labels), f"fitted on {self.fit_split} (max MCC)"
    else:
      threshold, origin = float(np.median(scores)), f"median score of {self.split}"
    predictions = (scores >= threshold).astype(np.int64)  # class 1 = acceptable
    return _result(self, metrics_lib.compute_metrics(self.task, predictions, self.labels), scores=scores,
                   predictions=predictions, labels=self.labels, threshold=threshold, threshold_from=origin)


class MultipleChoice:
  """RACE, Story Cloze, any multiple-choice task: the average log-probability of each answer given
  ``[s] context`` (the example's texts, e.g. article then question)."""

  def __init__(self, data, tokenizer):
    self.task, self.split, self.name = data.task, data.split, data.task.name
    self.metric = metrics_lib.main_metric(self.task)
    self.chance = 1.0 / self.task.num_choices
    fields = [_encode(tokenizer, [e.texts[f] for e in data]) for f in range(len(self.task.fields))]
    self.prefixes = [[tokenizer.start_id] + [t for field in fields for t in field[i]] for i in range(len(data))]
    flat = _encode(tokenizer, [c for e in data for c in e.choices])
    self.candidates, k = [], 0
    for e in data:
      self.candidates.append(flat[k:k + len(e.choices)])
      k += len(e.choices)
    self.labels = _labels(data)

  def evaluate(self, scorer: Scorer) -> dict:
    per_example = scorer.candidate_scores(self.prefixes, self.candidates, desc=self.name)
    scores = np.full((len(per_example), self.task.num_choices), -np.inf)
    for row, s in zip(scores, per_example):
      row[:len(s)] = s
    return _result(self, metrics_lib.compute_metrics(self.task, scores, self.labels), scores=scores,
                   predictions=scores.argmax(-1), labels=self.labels)


@dataclasses.dataclass(frozen=True)
class WinogradExample:
  sentence: str  # with one "_" where a candidate goes
  options: tuple[str, str]
  label: Optional[int]  # 0 or 1 (the file's answer 1 or 2); None if unlabelled
  source: str = ""


def read_winograd(path: str) -> list[WinogradExample]:
  """WinoGrande-style JSONL: ``sentence`` (one ``_``), ``option1``, ``option2``, ``answer`` (1|2)."""
  out = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON: {e.msg}") from None
      missing = [k for k in ("sentence", "option1", "option2") if k not in record]
      if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")
      sentence = str(record["sentence"])
      if sentence.count("_") != 1:
        raise ValueError(f"{where}: the sentence needs exactly one '_' (the blank), found "
                         f"{sentence.count('_')}: {sentence!r}")
      answer = record.get("answer")
      if answer in (None, ""):
        label = None
      elif str(answer).strip() in ("1", "2"):
        label = int(str(answer).strip()) - 1
      else:
        raise ValueError(f"{where}: answer must be 1 or 2, got {answer!r}")
      out.append(WinogradExample(sentence, (str(record["option1"]), str(record["option2"])), label, where))
  if not out:
    raise ValueError(f"{path}: no problems")
  return out


class Winograd:
  """Pronoun resolution: substitute each candidate for ``_``; score what follows (``partial``) or the
  whole sentence (``full``); the more probable candidate wins."""

  name, metric, chance = WINOGRAD, "accuracy", 0.5

  def __init__(self, examples: Sequence[WinogradExample], tokenizer, *, scoring: str = "partial", split: str = "file"):
    if scoring not in WINOGRAD_SCORING:
      raise ValueError(f"winograd scoring {scoring!r}, expected one of {WINOGRAD_SCORING}")
    self.split = split
    start = tokenizer.start_id
    parts = [e.sentence.split("_", 1) for e in examples]
    befores = _encode(tokenizer, [b + o for (b, _), e in zip(parts, examples) for o in e.options])
    afters = _encode(tokenizer, [a for _, a in parts])
    wholes = _encode(tokenizer, [b + o + a for (b, a), e in zip(parts, examples) for o in e.options])
    self.pairs = []
    for i in range(len(examples)):
      for k in range(2):
        # Partial scoring needs something after the blank; a blank at the very end falls back to full.
        partial = scoring == "partial" and afters[i]
        self.pairs.append(([start] + befores[2 * i + k], afters[i]) if partial else ([start], wholes[2 * i + k]))
    self.labels = np.array([-1 if e.label is None else e.label for e in examples], np.int64)

  def evaluate(self, scorer: Scorer) -> dict:
    scores = scorer.mean_logprobs(self.pairs, desc=self.name).reshape(-1, 2)
    predictions = scores.argmax(-1)
    keep = self.labels >= 0
    metrics = {"accuracy": metrics_lib.accuracy(predictions[keep], self.labels[keep]), "num_examples": int(keep.sum())}
    return _result(self, metrics, scores=scores, predictions=predictions, labels=self.labels)
