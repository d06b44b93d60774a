"""Zero-shot behaviours of the pretrained LM (Section 5, "Zero-shot Behaviors"; Figure 2 right).

The paper asks whether pretraining alone teaches the model the tasks it is
later fine-tuned on, by reading task answers off the language model with no
task training at all. The heuristics, on the same task registry and data
sources as fine-tuning (``data/tasks.py``), with ``[s]`` = ``_start_``:

* **SST-2**: ``[s] sentence very`` -> the LM's next-token log-probabilities of
  ``negative`` and ``positive`` (the label names, single tokens); the more
  probable one is the prediction. Metric: accuracy.
* **CoLA**: the average token log-probability of ``[s] sentence``; a sentence
  is predicted acceptable iff its score is >= a threshold. The threshold is
  ``--cola_threshold`` if given, else fitted on the train split to maximise
  MCC (``--fit_threshold_on=train``), else, by default, **the median score of
  the evaluated split itself** (half the sentences predicted acceptable; MCC
  then measures only how well the scores rank the sentences). Metric: MCC.
* **RACE, Story Cloze** (and any multiple-choice task of the registry): per
  candidate, the average token log-probability of the answer tokens given
  ``[s] document question`` (Story Cloze: ``[s] story``); the highest wins.
  RACE's cloze-style questions keep their blank as written. Metric: accuracy.
  The generic form is :meth:`Scorer.score_candidates`. (Story Cloze's ``dev``
  is the fine-tuning held-out fifth, 374 stories; ``--split=test`` scores the
  1,871 test stories.)
* **Winograd-style pronoun resolution** (DPRD / WSC / WinoGrande; not in the
  task registry): each candidate replaces the blank and the candidate under
  which the rest of the sentence after the substitution is more probable
  (average token log-probability, as the paper and Trinh & Le 2018's
  "partial" scoring) wins; ``--winograd_scoring=full`` scores the whole
  substituted sentence instead. Input: a local JSONL file in WinoGrande's
  format, one problem a line::

      {"sentence": "The trophy does not fit in the suitcase because _ is too big.",
       "option1": "the trophy", "option2": "the suitcase", "answer": 1}

  ``sentence`` holds exactly one ``_`` (the pronoun to resolve), ``answer`` is
  1 or 2 (an int or WinoGrande's string; absent: unlabelled). Metric: accuracy.

Scoring is batched and jitted: sequences are right-padded to buckets of 32
positions (at most ``n_ctx``), sorted by length, and run in fixed-size
batches, so XLA compiles once per (batch, bucket) shape and checkpoints of
one run share the compiled functions. A sequence longer than ``n_ctx`` loses
context tokens from its front (after the leading ``_start_``), never the
answer being scored. Right padding is exact: causal attention never lets a
real token see the padding after it.

    python -m gpt1_jax.zeroshot --checkpoint=workdirs/pretrain --task=sst2 --source=data/sst2
    python -m gpt1_jax.zeroshot --from_hf=/path/to/openai-gpt --task=cola --fit_threshold_on=train
    python -m gpt1_jax.zeroshot --checkpoint=DIR --task=winograd --source=wsc.jsonl
    python -m gpt1_jax.zeroshot --run=workdirs/pretrain --tasks=sst2,cola --curve_out=/tmp/curve

The last form evaluates every checkpoint step of a pretraining run and writes
``zeroshot_curve.json`` (step -> task -> score), prints a markdown table, and
plots ``zeroshot_curve.png`` (score vs pretraining step, one line per task,
chance levels dashed): the paper's Figure 2 (right) for your run, in raw
scores where the paper normalises each task between chance and the state of
the art. Steps
already in the JSON with the same settings are not evaluated again, so the
command can follow a run that is still training.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt1_jax import metrics as metrics_lib
from gpt1_jax import weights
from gpt1_jax.data.tasks import TASKS, get_task, load_split
from gpt1_jax.model import GPT1LM, ModelConfig, gather_positions, map_position_chunks

log = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = 32  # sequence lengths are padded to a multiple of this (one compilation per bucket)
WINOGRAD = "winograd"
WINOGRAD_SCORING = ("partial", "full")
CURVE_JSON, CURVE_PNG = "zeroshot_curve.json", "zeroshot_curve.png"

# Incremented each time a scoring function is traced (tests pin "one compilation per shape").
TRACE_COUNT = 0


# ----------------------------------------------------------------------------
# Jitted scoring: token log-probabilities of a padded batch.

def _hidden(config: ModelConfig, params, ids, mask):
  return GPT1LM(config).apply({"params": params}, ids, mask, method=lambda m, i, a: m.transformer(i, a))


def _logits(config: ModelConfig, params, hidden):
  logits = GPT1LM(config).apply({"params": params}, hidden, method=lambda m, h: m.transformer.logits(h))
  return logits.astype(jnp.float32)


def _chunk_len(t: int) -> int:
  return next(c for c in range(min(BUCKET, t), 0, -1) if t % c == 0)


@functools.partial(jax.jit, static_argnames="config")
def _token_logprobs(params, ids, mask, *, config: ModelConfig):
  """``[B, T]``: entry ``t`` is ``log p(ids[t] | ids[:t])`` (0 at ``t = 0``; garbage at padding)."""
  global TRACE_COUNT
  TRACE_COUNT += 1
  b, t = ids.shape
  hidden = _hidden(config, params, ids, mask)
  following = jnp.pad(ids[:, 1:], ((0, 0), (0, 1)))
  c = _chunk_len(t)

  # The LM head runs on chunks of positions (model.map_position_chunks).
  def chunk(args):
    h, y = args
    logits = _logits(config, params, h)
    return jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)

  lp = map_position_chunks(lambda h, y: chunk((h, y)), c, hidden, following).swapaxes(0, 1).reshape(b, t)
  return jnp.pad(lp[:, :-1], ((0, 0), (1, 0)))


@functools.partial(jax.jit, static_argnames="config")
def _next_token_logprobs(params, ids, mask, last, query, *, config: ModelConfig):
  """``[B, C]``: ``log p(query[c] | ids[:last + 1])`` per row."""
  global TRACE_COUNT
  TRACE_COUNT += 1
  hidden = _hidden(config, params, ids, mask)
  logits = _logits(config, params, gather_positions(hidden, last))
  return jax.nn.log_softmax(logits, axis=-1)[:, query]


def fit_context(prefix: Sequence[int], target: Sequence[int], n_ctx: int) -> tuple[list[int], int]:
  """``(ids, start)``: ``prefix + target`` in at most ``n_ctx`` tokens, ``ids[start:]`` the (kept) target.

  Too long a sequence loses prefix tokens from its front, after the first
  (``_start_``), so the tokens nearest the answer survive; the target is cut
  (from its end) only if it does not fit beside the first token alone.
  """
  prefix, target = list(prefix), list(target)
  if not prefix:
    raise ValueError("a scored sequence needs at least one prefix token (use _start_)")
  excess = len(prefix) + len(target) - n_ctx
  if excess > 0:
    drop = min(excess, len(prefix) - 1)
    prefix = prefix[:1] + prefix[1 + drop:]
    target = target[:len(target) - (excess - drop)]
  return prefix + target, len(prefix)


class Scorer:
  """A language model's log-probabilities of token sequences, batched by length bucket.

  ``dtype`` overrides the compute dtype of the checkpoint's config (float32 by
  default: bfloat16's 8-bit mantissa is coarse enough to flip near ties
  between candidates).
  """

  def __init__(self, config: ModelConfig, params, *, batch_size: int = 32, dtype: Optional[str] = "float32",
               tokenizer=None, progress: bool = True):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    changes: dict[str, Any] = {"remat": "none"}
    if dtype:
      changes["dtype"] = dtype
    if config.attention == "cudnn" and jax.default_backend() != "gpu":
      changes["attention"] = "xla"
    self.config = config.replace(**changes)
    self.params = weights.lm_params(self.config, params)
    self.batch_size = batch_size
    self.progress = progress
    self._tokenizer = tokenizer

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      from gpt1_jax.tokenizer import GPT1Tokenizer
      self._tokenizer = GPT1Tokenizer()
    return self._tokenizer

  def _batches(self, lengths: Sequence[int], desc: str):
    """``(rows, padded_length)`` per batch: longest first, each bucket in full batches."""
    n_ctx = self.config.n_ctx
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: dict[int, list[int]] = {}
    for i in order:
      groups.setdefault(min(-(-lengths[i] // BUCKET) * BUCKET, n_ctx), []).append(i)
    batches = [(rows[k:k + self.batch_size], length) for length, rows in groups.items()
               for k in range(0, len(rows), self.batch_size)]
    from tqdm.auto import tqdm
    return tqdm(batches, desc=desc, unit="batch", disable=not self.progress or not batches, leave=False)

  def _arrays(self, seqs: Sequence[Sequence[int]], rows: Sequence[int], length: int):
    # Short batches are filled with empty rows: one shape per bucket, not one per remainder.
    ids = np.zeros((self.batch_size, length), np.int32)
    mask = np.zeros((self.batch_size, length), np.int32)
    for r, i in enumerate(rows):
      ids[r, :len(seqs[i])] = seqs[i]
      mask[r, :len(seqs[i])] = 1
    return jnp.asarray(ids), jnp.asarray(mask)

  def token_logprobs(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], desc: str = "scoring"
                     ) -> list[np.ndarray]:
    """``log p(target_j | prefix, target_<j)`` per target token, for each ``(prefix, target)`` pair.

    Sequences longer than ``n_ctx`` are cut by :func:`fit_context`; an array
    is then shorter than its target only if the target alone did not fit.
    """
    layouts = [fit_context(p, t, self.config.n_ctx) for p, t in pairs]
    cut = sum(len(ids) - start < len(t) for (ids, start), (_, t) in zip(layouts, pairs))
    if cut:
      log.warning("%d scored span(s) longer than the context of %d tokens lost their ends", cut,
                  self.config.n_ctx)
    seqs = [ids for ids, _ in layouts]
    out: list[Optional[np.ndarray]] = [None] * len(seqs)
    for rows, length in self._batches([len(s) for s in seqs], desc):
      ids, mask = self._arrays(seqs, rows, length)
      lp = np.asarray(_token_logprobs(self.params, ids, mask, config=self.config))
      for r, i in enumerate(rows):
        out[i] = lp[r, layouts[i][1]:len(seqs[i])].astype(np.float64)
    return out

  def mean_logprobs(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], desc: str = "scoring"
                    ) -> np.ndarray:
    """The average token log-probability of each pair's target (``-inf`` for an empty target)."""
    return np.array([lp.mean() if lp.size else -np.inf for lp in self.token_logprobs(pairs, desc)])

  def next_token_logprobs(self, prefixes: Sequence[Sequence[int]], token_ids: Sequence[int],
                          desc: str = "scoring") -> np.ndarray:
    """``[N, C]``: the log-probability of each of ``token_ids`` right after each prefix."""
    seqs = [fit_context(p, (), self.config.n_ctx)[0] for p in prefixes]
    query = jnp.asarray(np.asarray(token_ids, np.int32))
    out = np.zeros((len(seqs), len(token_ids)), np.float64)
    for rows, length in self._batches([len(s) for s in seqs], desc):
      ids, mask = self._arrays(seqs, rows, length)
      last = np.zeros(self.batch_size, np.int32)
      last[:len(rows)] = [len(seqs[i]) - 1 for i in rows]
      lp = np.asarray(_next_token_logprobs(self.params, ids, mask, jnp.asarray(last), query, config=self.config))
      out[rows] = lp[:len(rows)]
    return out

  def candidate_scores(self, prefixes: Sequence[Sequence[int]], candidates: Sequence[Sequence[Sequence[int]]],
                       desc: str = "scoring") -> list[np.ndarray]:
    """Per example, the average token log-probability of each candidate's tokens given its prefix."""
    pairs = [(p, c) for p, cands in zip(prefixes, candidates) for c in cands]
    flat = self.mean_logprobs(pairs, desc)
    out, k = [], 0
    for cands in candidates:
      out.append(flat[k:k + len(cands)])
      k += len(cands)
    return out

  def score_candidates(self, context: str, candidates: Sequence[str]) -> np.ndarray:
    """The zero-shot multiple-choice score of each candidate: its average token log-probability
    given ``_start_ context``; ``argmax`` is the prediction."""
    tok = self.tokenizer
    ids = tok.encode_batch([context, *candidates])
    return self.candidate_scores([[tok.start_id] + ids[0]], [ids[1:]], desc="candidates")[0]


# ----------------------------------------------------------------------------
# The heuristics. Each tokenises its data once (``__init__``) and scores it
# with any model (``evaluate``), so a pretraining curve re-tokenises nothing.

def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
  unique = list(dict.fromkeys(texts))
  table = dict(zip(unique, tokenizer.encode_batch(unique)))
  return [list(table[t]) for t in texts]


def _labels(examples) -> np.ndarray:
  return np.array([-1 if e.label is None else int(e.label) for e in examples], np.int64)


def _result(h, metrics: dict, **arrays) -> dict:
  return {"task": h.name, "split": h.split, "metric": h.metric, "score": metrics.get(h.metric, math.nan), **metrics,
          **arrays}


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

  def __init__(self, examples: Sequence[WinogradExample], tokenizer, *, scoring: str = "partial",
               split: str = "file"):
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
    metrics = {"accuracy": metrics_lib.accuracy(predictions[keep], self.labels[keep]),
               "num_examples": int(keep.sum())}
    return _result(self, metrics, scores=scores, predictions=predictions, labels=self.labels)


# ----------------------------------------------------------------------------
# Building and running a suite.

def supported_tasks() -> list[str]:
  return ["sst2", "cola"] + [n for n, t in TASKS.items() if t.type == "multiple_choice"] + [WINOGRAD]


def default_source(task: str) -> str:
  """``data/<task>`` of this repository if present (as the fine-tuning configs), else tensorflow-datasets."""
  if task == WINOGRAD:
    raise ValueError("winograd needs a JSONL file: --source=winograd=PATH (see the module docstring)")
  local = os.path.join(REPO, "data", task)
  return local if os.path.isdir(local) else "tfds"


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
    return Winograd(read_winograd(source)[:max_examples or None], tokenizer, scoring=winograd_scoring,
                    split=os.path.basename(source))
  data = load_split(task, split, source)
  data.examples = data.examples[:max_examples or None]
  if task == "sst2":
    h = Sentiment(data, tokenizer)
  elif task == "cola":
    # The whole fitting split: the threshold is one number, cheap to fit well.
    fit = load_split(task, fit_threshold_on, source) if fit_threshold_on else None
    h = Acceptability(data, tokenizer, threshold=cola_threshold, fit_data=fit)
  elif get_task(task).type == "multiple_choice":
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
        row = {"task": h.name, "split": h.split, "position": i, "id": ids[i], "source": sources[i],
               "label": int(r["labels"][i]), "prediction": int(r["predictions"][i]),
               "scores": [None if not np.isfinite(v) else float(v) for v in np.atleast_1d(score)]}
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


# ----------------------------------------------------------------------------
# Pretraining curve (Figure 2 right).

def checkpoint_steps(run_dir: str) -> list[int]:
  """The complete checkpoint steps of a run (read-only: never touches a run that is still saving)."""
  import orbax.checkpoint as ocp
  directory = os.path.abspath(run_dir)
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    directory = os.path.join(directory, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoints under {run_dir}")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


def markdown_table(scores: dict, tasks: Sequence[str], metrics: dict) -> str:
  head = "| step | " + " | ".join(f"{t} ({metrics[t]})" for t in tasks) + " |"
  rule = "|---:|" + "---:|" * len(tasks)
  rows = [f"| {step} | " + " | ".join(_fmt(scores[step].get(t)) for t in tasks) + " |"
          for step in sorted(scores, key=int)]
  return "\n".join([head, rule, *rows])


def _fmt(v) -> str:
  return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def plot_curve(scores: dict, tasks: Sequence[str], metrics: dict, chance: dict, path: str) -> str:
  import matplotlib
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


def curve(run_dir: str, tasks: Sequence[str], *, out_dir: Optional[str] = None,
          sources: Optional[dict] = None, split: str = "validation", max_examples: int = 0,
          batch_size: int = 32, dtype: Optional[str] = "float32", steps: Optional[Sequence[int]] = None,
          tokenizer=None, progress: bool = True, **options) -> dict:
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
  from gpt1_jax.checkpoint import load_params, write_json
  if not tasks:
    raise ValueError("no tasks")
  tasks = list(tasks)
  out_dir = os.path.abspath(out_dir or run_dir)
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, CURVE_JSON)
  sources = {t: (sources or {}).get(t) or default_source(t) for t in tasks}
  sources = {t: s if s == "tfds" or s.startswith("tfds:") else os.path.abspath(s) for t, s in sources.items()}
  if tokenizer is None:
    from gpt1_jax.tokenizer import GPT1Tokenizer
    tokenizer = GPT1Tokenizer()
  heuristics = [build(t, tokenizer, source=sources[t], split=split, max_examples=max_examples, **options)
                for t in tasks]
  steps = sorted(checkpoint_steps(run_dir) if steps is None else steps)
  settings = json.loads(json.dumps({"run": os.path.abspath(run_dir), "split": split, "max_examples": max_examples,
                                    "dtype": dtype, "options": dict(sorted(options.items()))}))
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
  return {"steps": steps, "tasks": tasks, "scores": table_scores, "metric": {t: doc["metric"][t] for t in tasks},
          "chance": {t: doc["chance"][t] for t in tasks}, "markdown": table, "json": json_path, "png": png}


# ----------------------------------------------------------------------------
# Command line.

def _parse_sources(values: Sequence[str], tasks: Sequence[str]) -> dict:
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


class _QuietOrbax(logging.Filter):
  """Orbax warns on every read-only checkpoint open; only its errors matter here."""

  def filter(self, record):
    return record.levelno >= logging.ERROR or "/orbax/" not in record.pathname.replace("\\", "/")


def _define_flags():
  from absl import flags
  flags.DEFINE_string("checkpoint", None, "Weights checkpoint, training run's workdir or its checkpoints/ dir.")
  flags.DEFINE_integer("step", None, "Checkpoint step for --checkpoint (default: the latest).")
  flags.DEFINE_string("from_hf", None, "A saved Hugging Face OpenAI-GPT model (directory or weights file).")
  flags.DEFINE_string("from_openai", None, "OpenAI's release directory (params_shapes.json, params_*.npy).")
  flags.DEFINE_string("run", None, "A pretraining workdir: evaluate every checkpoint step (the curve).")
  flags.DEFINE_string("task", None, f"One task: {', '.join(supported_tasks())}.")
  flags.DEFINE_list("tasks", [], "Several tasks, comma-separated (with --task: both).")
  flags.DEFINE_multi_string("source", [], "Data source: a folder / file / 'tfds' for the one task, or TASK=SOURCE "
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
  flags.DEFINE_string("predictions_out", None, "Write one JSON line per example (id, source line, label, prediction, "
                      "scores) to this file, so results can be audited.")


def main(argv):
  from absl import app, flags
  from absl import logging as absl_logging
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  F = flags.FLAGS
  if not F["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  absl_logging.get_absl_handler().addFilter(_QuietOrbax())
  tasks = list(dict.fromkeys(([F.task] if F.task else []) + list(F.tasks)))
  if not tasks:
    raise app.UsageError("give --task=NAME or --tasks=A,B")
  if F.cola_threshold is not None and F.fit_threshold_on:
    raise app.UsageError("--cola_threshold and --fit_threshold_on exclude each other")
  options = dict(cola_threshold=F.cola_threshold, fit_threshold_on=F.fit_threshold_on,
                 winograd_scoring=F.winograd_scoring)
  sources = _parse_sources(F.source, tasks)
  if F.run:
    if F.checkpoint or F.from_hf or F.from_openai:
      raise app.UsageError("--run evaluates a run's checkpoints: drop --checkpoint/--from_hf/--from_openai")
    curve(F.run, tasks, out_dir=F.curve_out, sources=sources, split=F.split, max_examples=F.max_examples,
          batch_size=F.batch_size, dtype=F.dtype or None, progress=F.progress, **options)
    return
  if sum(bool(x) for x in (F.checkpoint, F.from_hf, F.from_openai)) != 1:
    raise app.UsageError("give one of --checkpoint, --from_hf, --from_openai (or --run for a curve)")
  from gpt1_jax.tokenizer import GPT1Tokenizer
  tokenizer = GPT1Tokenizer()
  heuristics = [build(t, tokenizer, source=sources.get(t), split=F.split, max_examples=F.max_examples, **options)
                for t in tasks]
  config, params = load_model(F.checkpoint or None, step=F.step, from_hf=F.from_hf or None,
                              from_openai=F.from_openai or None)
  scorer = Scorer(config, params, batch_size=F.batch_size, dtype=F.dtype or None, tokenizer=tokenizer,
                  progress=F.progress)
  results = evaluate(scorer, heuristics)
  for result in results.values():
    print(summary(result), flush=True)
  if F.predictions_out:
    write_predictions(results, heuristics, F.predictions_out)
    print(f"per-example predictions: {F.predictions_out}", flush=True)


if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module
  # never clashes with another entry point's flags.
  from absl import app

  from gpt1_jax import errors
  _define_flags()
  app.run(errors.cli(main), flags_parser=errors.parse_flags)
