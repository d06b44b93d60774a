"""Task-specific input transformations (Section 3.3, Figure 1 right) into fixed-shape arrays.

With ``s`` = ``_start_``, ``d`` = ``_delimiter_``, ``c`` = ``_classify_``,
each example becomes K token sequences:

* classification: ``s text c`` (K = 1);
* entailment: ``s premise d hypothesis c`` (K = 1);
* similarity and regression: ``s a d b c`` and ``s b d a c`` (K = 2; the model
  sums the two ``c`` states, as the pair has no inherent order);
* multiple choice: ``s context question d answer_k c`` per candidate
  (K = the task's ``num_choices``; ``choice_mask`` marks the real ones).

:func:`encode_examples` returns ``input_ids``/``attention_mask`` ``int32 [N, K, T]``,
``cls_index int32 [N, K]`` (where each ``c`` actually is), ``choice_mask
float32 [N, K]``, ``label`` (``int32 [N]``, -1 if unlabelled; ``float32 [N]``
for regression, NaN if unlabelled) and ``example_index int32 [N]`` (the
position in the input list, to map predictions back to ``Example.id``).
Sequences are right-padded with ``pad_id`` and ``attention_mask`` 0. The rows
of absent candidates (an example with fewer than K) are all padding with
``cls_index`` 0 and ``choice_mask`` 0: the trainer must mask their logits.

Truncation. T (``max_len``, at most the model's ``n_ctx``) bounds every
sequence. The special tokens are never dropped (``c`` is always the last real
token), so the text budget is ``B = T - 2`` (classification) or ``T - 3``.
The released GPT-1 code cut every segment to a fixed share of the context;
here a sequence is trimmed only when it does not fit, and only as much as
needed:

1. The *answer side* (an entailment hypothesis, a multiple-choice answer) is
   kept whole unless it alone would take more than half the budget while the
   other side needs the rest; then it keeps ``max(B - len(other), B // 2)``
   tokens, cut from its end.
2. The other side is cut to what remains: a classification text and an
   entailment premise lose tokens from their end; a similarity pair is
   trimmed balanced, one token at a time from the longer text, from its end
   (BERT's ``truncate_seq_pair``), *before* the two orderings are built so they
   hold the same tokens; a multiple-choice context (``context question``
   concatenated) loses tokens from its *front*, so the question and the end of
   the passage, nearest the answer, survive. Every candidate of an example
   gets the same context, trimmed for the longest answer.

Tokenisation goes through ``tokenizer.encode_batch`` once per field with
identical texts memoised (RACE repeats each article for every question).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from gpt1_jax.data import pipeline, tf
from gpt1_jax.data import tasks
from gpt1_jax.data.tasks import Example, Task

DEFAULT_CAP = 512  # GPT-1's n_ctx


class MemoTokenizer:
  """Wraps a tokenizer (``GPT1Tokenizer`` API) so each distinct text is encoded once."""

  def __init__(self, tokenizer):
    self.base = tokenizer
    self.cache: dict[str, list[int]] = {}

  def __getattr__(self, name):  # start_id, delimiter_id, classify_id, pad_id, vocab_size, decode...
    return getattr(self.base, name)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    new = list(dict.fromkeys(t for t in texts if t not in self.cache))
    if new:
      for text, ids in zip(new, self.base.encode_batch(new)):
        self.cache[text] = [int(i) for i in ids]
    return [self.cache[t] for t in texts]

  def encode(self, text: str) -> list[int]:
    return self.encode_batch([text])[0]


def memoized(tokenizer) -> MemoTokenizer:
  """The tokenizer behind a memo (itself if it already is one): share it between calls to skip re-encoding."""
  return tokenizer if isinstance(tokenizer, MemoTokenizer) else MemoTokenizer(tokenizer)


def _tokenize(task: Task, examples: Sequence[Example], tok: MemoTokenizer):
  """Per example: the token ids of each text field, and of each candidate (or None)."""
  fields = [tok.encode_batch([ex.texts[i] for ex in examples]) for i in range(len(task.fields))]
  texts = list(zip(*fields)) if fields else [()] * len(examples)
  if not task.kind.multiple_choice:
    return texts, [None] * len(examples)
  flat = tok.encode_batch([c for ex in examples for c in ex.choices])
  choices, at = [], 0
  for ex in examples:
    choices.append(flat[at:at + len(ex.choices)])
    at += len(ex.choices)
  return texts, choices


def _check_example(task: Task, i: int, ex: Example):
  if len(ex.texts) != len(task.fields):
    raise ValueError(f"example {i} ({ex.source}): {len(ex.texts)} texts, task {task.name} has fields {task.fields}")
  if task.kind.multiple_choice != (ex.choices is not None):
    raise ValueError(f"example {i} ({ex.source}): choices are required exactly for multiple-choice tasks")
  if ex.choices is not None and not 0 < len(ex.choices) <= task.num_choices:
    raise ValueError(f"example {i} ({ex.source}): {len(ex.choices)} candidates; "
                     f"{task.name} allows 1..{task.num_choices}")


def _balanced(a: list, b: list, budget: int) -> tuple[list, list]:
  """Trim the longer of two texts one token at a time (from the end) until both fit in ``budget``."""
  la, lb = len(a), len(b)
  if la + lb > budget:
    short = min(la, lb)
    if short <= budget // 2:
      la, lb = (budget - lb, lb) if la > lb else (la, budget - la)
    else:  # both cut to half; on a tie the second text gives way first, so the first keeps the odd token
      la, lb = budget - budget // 2, budget // 2
  return a[:la], b[:lb]


def _answer_cap(answer_len: int, other_len: int, budget: int) -> int:
  """Rule 1 of the module docstring: the answer side stays whole unless it would starve the other side."""
  return min(answer_len, max(budget - other_len, budget // 2))


# The layouts of ``task_types.TaskType.layout``: ``(texts, choices, max_len, s, d, c)`` -> the
# example's sequences; ``max_len=None``: no truncation. A pair's text budget is ``max_len - 3``.


def _single(texts, choices, max_len, s, d, c):
  (text,) = texts
  if max_len is not None:
    text = text[:max_len - 2]
  return [[s] + text + [c]]


def _pair(texts, choices, max_len, s, d, c):
  premise, hypothesis = texts
  if max_len is not None and len(premise) + len(hypothesis) > max_len - 3:
    hypothesis = hypothesis[:_answer_cap(len(hypothesis), len(premise), max_len - 3)]
    premise = premise[:max_len - 3 - len(hypothesis)]
  return [[s] + premise + [d] + hypothesis + [c]]


def _both_orders(texts, choices, max_len, s, d, c):
  a, b = texts
  if max_len is not None:
    a, b = _balanced(a, b, max_len - 3)
  return [[s] + a + [d] + b + [c], [s] + b + [d] + a + [c]]


def _candidates(texts, choices, max_len, s, d, c):
  context = [t for part in texts for t in part]  # the paper's [z; q]
  longest = max(len(a) for a in choices)
  if max_len is not None and len(context) + longest > max_len - 3:
    cap = _answer_cap(longest, len(context), max_len - 3)
    choices = [a[:cap] for a in choices]
    keep = max_len - 3 - min(longest, cap)
    context = context[max(0, len(context) - keep):]
  return [[s] + context + [d] + a + [c] for a in choices]


_LAYOUTS = {"single": _single, "pair": _pair, "both_orders": _both_orders, "candidates": _candidates}


def transform(task: Task, texts: tuple, choices: Optional[Sequence[list]], max_len: Optional[int], s: int, d: int,
              c: int) -> list[list[int]]:
  """The K (or fewer, for multiple choice) token sequences of one example, in its type's layout;
  ``max_len=None``: no truncation."""
  return _LAYOUTS[task.kind.layout](texts, choices, max_len, s, d, c)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _longest(task: Task, texts, choices, tok) -> int:
  s, d, c = tok.start_id, tok.delimiter_id, tok.classify_id
  return max((len(q) for t, ch in zip(texts, choices) for q in transform(task, t, ch, None, s, d, c)), default=1)


def fit_length(task: Task, tokenizer, *example_lists: Sequence[Example], cap: int = DEFAULT_CAP,
               multiple: int = 8) -> int:
  """The smallest multiple of ``multiple`` that holds every untruncated sequence of the given lists, at most ``cap``.

  Pass every split that will share one shape (as the original code sized
  ``n_ctx`` over train, validation and test). Pass a :func:`memoized`
  tokenizer to reuse its encodings in :func:`encode_examples`.
  """
  task = tasks.resolve(task)  # a name still works for callers written before Task objects
  tok = memoized(tokenizer)
  longest = max((_longest(task, *_tokenize(task, ex, tok), tok) for ex in example_lists if len(ex)), default=1)
  return min(cap, _round_up(longest, multiple))


def truncation(task: Task, examples: Sequence[Example], tokenizer, max_len: int) -> dict:
  """How many of ``examples`` lose tokens at ``max_len``, and how many they lose (the longest input's excess).

  Returns ``{"examples", "truncated", "mean_tokens_cut", "max_tokens_cut"}``.
  """
  task = tasks.resolve(task)  # a name still works for callers written before Task objects
  tok = memoized(tokenizer)
  texts, choices = _tokenize(task, list(examples), tok)
  s, d, c = tok.start_id, tok.delimiter_id, tok.classify_id
  cut = np.array([
      max(len(q) for q in transform(task, t, ch, None, s, d, c)) - max_len for t, ch in zip(texts, choices)
  ], np.int64).clip(min=0)
  hit = cut[cut > 0]
  return {
      "examples": len(cut),
      "truncated": int(hit.size),
      "mean_tokens_cut": float(hit.mean()) if hit.size else 0.0,
      "max_tokens_cut": int(hit.max()) if hit.size else 0
  }


def encode_examples(task: Task, examples: Sequence[Example], tokenizer,
                    max_len: Optional[int] = None) -> dict[str, np.ndarray]:
  """Examples -> the model's fixed-shape inputs (see the module docstring); T = ``max_len``.

  ``max_len=None`` uses :func:`fit_length` over these examples (cap 512).
  """
  task = tasks.resolve(task)  # a name still works for callers written before Task objects
  examples = list(examples)
  for i, ex in enumerate(examples):
    _check_example(task, i, ex)
  tok = memoized(tokenizer)
  texts, choices = _tokenize(task, examples, tok)
  if max_len is None:
    max_len = min(DEFAULT_CAP, _round_up(_longest(task, texts, choices, tok), 8))
  minimum = task.kind.min_length
  if max_len < minimum:
    raise ValueError(f"max_len={max_len} is too short for {task.type} inputs (at least {minimum})")
  s, d, c, pad = tok.start_id, tok.delimiter_id, tok.classify_id, tok.pad_id
  n, k = len(examples), task.num_sequences
  input_ids = np.full((n, k, max_len), pad, np.int32)
  attention_mask = np.zeros((n, k, max_len), np.int32)
  cls_index = np.zeros((n, k), np.int32)
  choice_mask = np.zeros((n, k), np.float32)
  for i in range(n):
    for j, seq in enumerate(transform(task, texts[i], choices[i], max_len, s, d, c)):
      input_ids[i, j, :len(seq)] = seq
      attention_mask[i, j, :len(seq)] = 1
      cls_index[i, j] = len(seq) - 1 - seq[::-1].index(c)  # the last _classify_: the final real token
      choice_mask[i, j] = 1.0
  kind = task.kind
  label = np.array([kind.missing_label if ex.label is None else ex.label for ex in examples], kind.label_dtype)
  return {
      "input_ids": input_ids,
      "attention_mask": attention_mask,
      "cls_index": cls_index,
      "choice_mask": choice_mask,
      "label": label.reshape(n),
      "example_index": np.arange(n, dtype=np.int32)
  }


# ----------------------------------------------------------------------------
# tf.data: the data position is the global step (pipeline.py).

# What a train step reads of ``encode_examples``' arrays; evaluation also reads ``example_index``
# (to put predictions back in example order).
TRAIN_KEYS = ("input_ids", "attention_mask", "cls_index", "choice_mask", "label")
EVAL_KEYS = TRAIN_KEYS + ("example_index",)


def task_train_dataset(arrays: dict[str, np.ndarray], rows: pipeline.Rows, *, seed: int, start_step: int = 0,
                       shuffle: bool = True) -> tf.data.Dataset:
  """Endless shuffled batches of encoded examples for steps ``start_step, ...`` (this host's rows):
  the ``TRAIN_KEYS`` of ``arrays``."""
  return pipeline.train_dataset(pipeline.gather_fetch({k: arrays[k] for k in TRAIN_KEYS}), len(arrays["label"]), rows,
                                seed=seed, start_step=start_step, shuffle=shuffle)


def task_eval_dataset(arrays: dict[str, np.ndarray], rows: pipeline.Rows) -> tf.data.Dataset:
  """One ordered pass (the ``EVAL_KEYS``); padded rows of the last batch carry ``example_mask == 0``."""
  return pipeline.eval_dataset(pipeline.gather_fetch({k: arrays[k] for k in EVAL_KEYS}), len(arrays["label"]), rows)
