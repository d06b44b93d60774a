"""Jitted scoring: a language model's token log-probabilities of padded, bucketed batches.

Sequences are right-padded to buckets of ``BUCKET`` positions (at most
``n_ctx``), sorted by length, and run in fixed-size batches, so XLA compiles
once per (batch, bucket) shape and checkpoints of one run share the compiled
functions. Right padding is exact: causal attention never lets a real token
see the padding after it.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt1_jax import weights
from gpt1_jax.model import gather_positions, GPT1LM, map_position_chunks, ModelConfig
from gpt1_jax.tokenizer import GPT1Tokenizer

log = logging.getLogger(__name__)

BUCKET = 32  # sequence lengths are padded to a multiple of this (one compilation per bucket)


def _hidden(config: ModelConfig, params, ids, mask):
  return GPT1LM(config).apply({"params": params}, ids, mask, method=GPT1LM.hidden)


def _logits(config: ModelConfig, params, hidden):
  return GPT1LM(config).apply({"params": params}, hidden, method=GPT1LM.project).astype(jnp.float32)


def _chunk_len(t: int) -> int:
  return next(c for c in range(min(BUCKET, t), 0, -1) if t % c == 0)


@functools.partial(jax.jit, static_argnames="config")
def _token_logprobs(params, ids, mask, *, config: ModelConfig):
  """``[B, T]``: entry ``t`` is ``log p(ids[t] | ids[:t])`` (0 at ``t = 0``; garbage at padding)."""
  b, t = ids.shape
  hidden = _hidden(config, params, ids, mask)
  following = jnp.pad(ids[:, 1:], ((0, 0), (0, 1)))

  # The tied output layer runs on chunks of positions, so only one chunk's logits exist at a time.
  def chunk(h, y):
    logits = _logits(config, params, h)
    return jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)

  lp = map_position_chunks(chunk, _chunk_len(t), hidden, following).swapaxes(0, 1).reshape(b, t)
  return jnp.pad(lp[:, :-1], ((0, 0), (1, 0)))


@functools.partial(jax.jit, static_argnames="config")
def _next_token_logprobs(params, ids, mask, last, query, *, config: ModelConfig):
  """``[B, C]``: ``log p(query[c] | ids[:last + 1])`` per row."""
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
      self._tokenizer = GPT1Tokenizer()
    return self._tokenizer

  def _batches(self, lengths: Sequence[int], desc: str):
    """``(rows, padded_length)`` per batch: longest first, each bucket in full batches."""
    n_ctx = self.config.n_ctx
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: dict[int, list[int]] = {}
    for i in order:
      groups.setdefault(min(-(-lengths[i] // BUCKET) * BUCKET, n_ctx), []).append(i)
    batches = [(rows[k:k + self.batch_size], length)
               for length, rows in groups.items()
               for k in range(0, len(rows), self.batch_size)]
    from tqdm.auto import tqdm
    # disable=None: tqdm's own test, a bar only on a terminal (a log file gets no carriage returns)
    return tqdm(batches, desc=desc, unit="batch", disable=None if self.progress and batches else True, leave=False)

  def _arrays(self, seqs: Sequence[Sequence[int]], rows: Sequence[int], length: int):
    # Short batches are filled with empty rows: one shape per bucket, not one per remainder.
    ids = np.zeros((self.batch_size, length), np.int32)
    mask = np.zeros((self.batch_size, length), np.int32)
    for r, i in enumerate(rows):
      ids[r, :len(seqs[i])] = seqs[i]
      mask[r, :len(seqs[i])] = 1
    return jnp.asarray(ids), jnp.asarray(mask)

  def token_logprobs(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                     desc: str = "scoring") -> list[np.ndarray]:
    """``log p(target_j | prefix, target_<j)`` per target token, for each ``(prefix, target)`` pair.

    Sequences longer than ``n_ctx`` are cut by :func:`fit_context`; an array
    is then shorter than its target only if the target alone did not fit.
    """
    layouts = [fit_context(p, t, self.config.n_ctx) for p, t in pairs]
    cut = sum(len(ids) - start < len(t) for (ids, start), (_, t) in zip(layouts, pairs))
    if cut:
      log.warning("%d scored span(s) longer than the context of %d tokens lost their ends", cut, self.config.n_ctx)
    seqs = [ids for ids, _ in layouts]
    out: list[Optional[np.ndarray]] = [None] * len(seqs)
    for rows, length in self._batches([len(s) for s in seqs], desc):
      ids, mask = self._arrays(seqs, rows, length)
      lp = np.asarray(_token_logprobs(self.params, ids, mask, config=self.config))
      for r, i in enumerate(rows):
        out[i] = lp[r, layouts[i][1]:len(seqs[i])].astype(np.float64)
    return out

  def mean_logprobs(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], desc: str = "scoring") -> np.ndarray:
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
