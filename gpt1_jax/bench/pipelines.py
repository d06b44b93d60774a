"""The input-pipeline suite: tokens/s the LM and fine-tuning pipelines deliver, against what the step eats.

Each pipeline is drained as the loop receives it (global device arrays) for about
``pipeline_seconds``; its throughput is then divided by each train shape's consumption.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import jax
import numpy as np

from gpt1_jax import sharding
from gpt1_jax.bench.machine import log
from gpt1_jax.bench.options import Options
from gpt1_jax.bench.train import single_device_mesh
from gpt1_jax.data import lm, pipeline, tasks, transforms
from gpt1_jax.tokenizer import GPT1Tokenizer


def corpus_lines(path: str, limit: int = 0) -> list[str]:
  with open(path, encoding="utf-8") as f:
    lines = [line.rstrip("\n") for line in f if line.strip()]
  return lines[:limit] if limit else lines


def _drain(iterator, seconds: float, min_batches: int = 5, warmup: int = 3, each: Optional[Callable] = None):
  """(batches, seconds) drained from ``iterator`` for about ``seconds`` after ``warmup`` batches."""
  for _ in range(warmup):
    b = next(iterator)
    if each is not None:
      each(b)
  n, t0 = 0, time.perf_counter()
  while n < min_batches or time.perf_counter() - t0 < seconds:
    b = next(iterator)
    if each is not None:
      each(b)
    n += 1
  return n, time.perf_counter() - t0


def _to_device(batch: int):
  mesh, rules = single_device_mesh(), sharding.DEFAULT_RULES
  return lambda b: jax.block_until_ready(sharding.global_batch(b, mesh, rules, batch))


def lm_pipeline(ids: list[list[int]], *, batch: int, seq_len: int, seconds: float) -> dict:
  """Packed LM windows (``LMData``) over a stream built in memory, each document after ``_start_``."""
  start = GPT1Tokenizer().start_id
  stream = np.fromiter((t for doc in ids for t in (start, *doc)), lm.TOKEN_DTYPE)
  data = lm.LMData(stream, seq_len)
  it = data.train_batches(pipeline.Rows(batch), seed=0)
  n, dt = _drain(it, seconds, each=_to_device(batch))
  return {
      "stream_tokens": int(stream.size),
      "windows": data.num_windows,
      "batch": batch,
      "seq_len": seq_len,
      "batches": n,
      "seconds": dt,
      "batches_per_s": n / dt,
      "tokens_per_s": n * batch * seq_len / dt
  }


def task_pipeline(task_dir: str, *, batch: int, max_len: int, seconds: float) -> dict:
  """SST-2 train split -> ``encode_examples`` (cold tokenizer) -> ``pipeline.train_dataset`` batches."""
  task = tasks.get_task("sst2")
  t = time.perf_counter()
  examples = tasks.load_split(task, "train", task_dir).examples
  tok = transforms.memoized(GPT1Tokenizer())
  seq_len = transforms.fit_length(task, tok, examples, cap=max_len)
  arrays = transforms.encode_examples(task, examples, tok, seq_len)
  encode_s = time.perf_counter() - t
  keys = ("input_ids", "attention_mask", "cls_index", "choice_mask", "label")
  n_ex = len(examples)
  ds = pipeline.train_dataset(pipeline.gather_fetch({k: arrays[k] for k in keys}), n_ex, pipeline.Rows(batch), seed=0)
  n, dt = _drain(iter(ds.as_numpy_iterator()), seconds, each=_to_device(batch))
  per_batch = batch * arrays["input_ids"].shape[1] * seq_len
  return {
      "task": "sst2",
      "examples": n_ex,
      "seq_len": seq_len,
      "batch": batch,
      "encode_s": encode_s,
      "encode_examples_per_s": n_ex / encode_s,
      "batches": n,
      "seconds": dt,
      "batches_per_s": n / dt,
      "tokens_per_s": n * per_batch / dt
  }


def pipeline_suite(opts: Options, train_rows: list[dict], ids: Optional[list[list[int]]]) -> dict:
  t = time.perf_counter()
  if ids is None:
    ids = GPT1Tokenizer().encode_batch(corpus_lines(opts.corpus, opts.tokenizer_lines))
  tokenise_s = time.perf_counter() - t
  log("LM pipeline")
  out = {"lm": lm_pipeline(ids, batch=opts.lm_batch, seq_len=opts.lm_seq_len, seconds=opts.pipeline_seconds)}
  out["lm"]["tokenise_corpus_s"] = tokenise_s
  log("fine-tuning pipeline")
  out["task"] = task_pipeline(opts.task_dir, batch=opts.task_batch, max_len=opts.task_max_len,
                              seconds=opts.pipeline_seconds)
  # What the train step eats, per shape, and how many times over each pipeline covers it.
  consumption = {r["shape"]: r["ours"]["tokens_per_s"] for r in train_rows}
  out["consumption_tokens_per_s"] = consumption
  for key in ("lm", "task"):
    out[key]["over_consumption"] = {s: out[key]["tokens_per_s"] / c for s, c in consumption.items()}
  return out
