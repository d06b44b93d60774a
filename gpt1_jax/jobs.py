"""Jobs: what differs between pretraining and fine-tuning, as values the loop runs.

A ``Job`` is the objective, the step count, the batch's schema (``batch.BatchSpec``), the data
(train batches from any step, eval batches) and what a checkpoint records about the data.
``lm_job`` reads a prepared token store (``data/lm.py``); ``task_job`` reads a task's files,
applies the paper's input transformations and builds the pipelines through
``data/transforms.py``, the same functions the tests check. ``shapes_job`` is the job as the
config alone decides it, with no data: what ``gpt1_jax.aot`` compiles for a TPU slice.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Callable, Optional

import numpy as np

from gpt1_jax.batch import BatchSpec
from gpt1_jax.config import Run
from gpt1_jax.data import lm, pipeline, tasks, transforms
from gpt1_jax.evaluate import LMEvaluator, TaskEvaluator
from gpt1_jax.sampled_softmax import unigram_proposal
from gpt1_jax.tokenizer import GPT1Tokenizer
from gpt1_jax.train import LMObjective, TaskObjective


@dataclasses.dataclass
class Job:
  objective: Any
  num_steps: int
  seq_len: int
  batch_spec: BatchSpec  # what one row of a train or eval batch is
  tokens_per_example: int
  train_batches: Optional[Callable]  # (Rows, start_step) -> iterator of this host's rows (dicts of NumPy arrays)
  evaluator: Optional[Any]  # evaluate.LMEvaluator / TaskEvaluator, or None: no evaluation
  data_state: dict


def make(run: Run) -> Job:
  return lm_job(run) if run.task.is_lm else task_job(run)


def shapes_job(run: Run) -> Job:
  """The job's objective, step count and batch shapes from the config alone: no data is read.

  Pretraining's windows are ``data.seq_len or model.n_ctx``, exactly what ``lm_job`` compiles;
  its sampled softmax gets a uniform proposal of the same shape (a constant of the program, so the
  compiled step is the same but for its values). A task's sequence length is its upper bound,
  ``task.max_len or model.n_ctx`` (``task_job`` fits it to the data, never longer), and its
  epoch-based step count is unknown (the schedule's length changes no shape). Eval batches exist
  when the real job would evaluate: fine-tuning always, pretraining when ``eval.every_steps``.
  """
  model_cfg = run.model
  if run.task.is_lm:
    n_ctx = run.max_seq_len
    proposal = None
    if run.train.softmax_samples:
      proposal = np.full(model_cfg.vocab_size, -np.log(model_cfg.vocab_size), np.float32)
    objective = lm_objective(run, proposal)
    return Job(objective=objective, num_steps=run.train.num_steps, seq_len=n_ctx,
               batch_spec=objective.batch_spec(n_ctx), tokens_per_example=n_ctx, train_batches=None,
               evaluator=LMEvaluator(objective, no_data) if run.eval.every_steps else None, data_state={})
  task = tasks.get_task(run.task.name)
  seq_len = run.max_seq_len
  objective = task_objective(run, task)
  num_seqs = task.num_sequences
  return Job(objective=objective, num_steps=max(run.train.num_steps, 1), seq_len=seq_len,
             batch_spec=objective.batch_spec(num_seqs, seq_len), tokens_per_example=num_seqs * seq_len,
             train_batches=None, evaluator=TaskEvaluator(objective, no_data, task=task,
                                                         model_config=model_cfg), data_state={})


def no_data(rows):
  """The eval batches of a job built from the config alone: none (it is compiled, never run)."""
  del rows
  return iter(())


def lm_objective(run: Run, proposal) -> LMObjective:
  return LMObjective(run.model, loss_chunk=run.train.lm_loss_chunk, softmax_samples=run.train.softmax_samples,
                     proposal=proposal)


def task_objective(run: Run, task) -> TaskObjective:
  return TaskObjective(run.model, task.type, task.num_labels, lm_coef=run.task.lm_coef, clf_pdrop=run.task.clf_pdrop)


def lm_job(run: Run) -> Job:
  model_cfg = run.model
  fingerprint = GPT1Tokenizer().fingerprint if run.data.check_tokenizer else None
  n_ctx = run.max_seq_len
  if not run.data.dir:
    raise ValueError("data.dir is empty: point it at the output of `python -m gpt1_jax.data.prepare`")
  manifest = lm.load_manifest(run.data.dir, fingerprint)
  train = lm.LMData.load(run.data.dir, "train", n_ctx, manifest=manifest)
  # Named at start: a config's default data.dir (the tiny one's workdirs/demo/data) is easy to miss.
  logging.info("pretraining data: %s (%d tokens, %d windows of %d)",
               os.path.abspath(run.data.dir) if "://" not in run.data.dir else run.data.dir, train.num_tokens,
               train.num_windows, n_ctx)
  valid = None
  if run.eval.every_steps and manifest["splits"].get("valid", {}).get("tokens", 0):
    valid = lm.LMData.load(run.data.dir, "valid", n_ctx, manifest=manifest)
  elif run.eval.every_steps:
    logging.warning(
        "eval.every_steps=%d but %s has no held-out ('valid') split: there will be no evaluation. "
        "Prepare the data with --valid_fraction > 0, or set eval.every_steps=0 to silence this", run.eval.every_steps,
        run.data.dir)
  proposal = None
  if run.train.softmax_samples:  # the corpus's own unigram: the proposal closest to the model early on
    proposal = unigram_proposal(train.unigram_counts(model_cfg.vocab_size))
  objective = lm_objective(run, proposal)
  return Job(objective=objective, num_steps=run.train.num_steps, seq_len=n_ctx, batch_spec=objective.batch_spec(n_ctx),
             tokens_per_example=n_ctx,
             train_batches=lambda rows, start: train.train_batches(rows, seed=run.seed, start_step=start),
             evaluator=LMEvaluator(objective, valid.eval_batches) if valid is not None else None,
             data_state=train.data_state(run.train.batch_size, run.seed))


def task_job(run: Run) -> Job:
  tc, model_cfg = run.task, run.model
  if run.train.num_steps < 0:  # before reading any data; 0 is the documented "use epochs"
    raise ValueError(f"train.num_steps={run.train.num_steps} is negative: give a positive step count, "
                     f"or 0 to train for train.num_epochs={run.train.num_epochs}")
  task = tasks.get_task(tc.name)
  tok = transforms.memoized(GPT1Tokenizer())
  train_ex = tasks.load_split(task, tc.train_split, tc.source, skip_malformed=tc.skip_malformed).examples
  eval_ex = tasks.load_split(task, tc.eval_split, tc.source, skip_malformed=tc.skip_malformed).examples
  if tc.max_train_examples:
    train_ex = train_ex[:tc.max_train_examples]
  cap = run.max_seq_len
  seq_len = transforms.fit_length(task, tok, train_ex, eval_ex, cap=cap)
  for split, examples in ((tc.train_split, train_ex), (tc.eval_split, eval_ex)):
    t = transforms.truncation(task, examples, tok, seq_len)
    if t["truncated"]:
      logging.warning(
          "%s %s: %d of %d examples are longer than %d tokens and were truncated (by %.1f tokens on "
          "average, at most %d); raise task.max_len (up to model.n_ctx=%d) to keep more", task.name, split,
          t["truncated"], t["examples"], seq_len, t["mean_tokens_cut"], t["max_tokens_cut"], model_cfg.n_ctx)
  train_arr = transforms.encode_examples(task, train_ex, tok, seq_len)
  eval_arr = transforms.encode_examples(task, eval_ex, tok, seq_len)
  n, gb = len(train_ex), run.train.batch_size
  num_steps = run.train.num_steps or math.ceil(run.train.num_epochs * n / gb)
  num_seqs = train_arr["input_ids"].shape[1]
  objective = task_objective(run, task)
  return Job(
      objective=objective, num_steps=num_steps, seq_len=seq_len, batch_spec=objective.batch_spec(num_seqs, seq_len),
      tokens_per_example=num_seqs * seq_len, train_batches=lambda rows, start: transforms.task_train_dataset(
          train_arr, rows, seed=run.seed, start_step=start).as_numpy_iterator(),
      evaluator=TaskEvaluator(objective, lambda rows: transforms.task_eval_dataset(eval_arr, rows).as_numpy_iterator(),
                              task=task, examples=eval_ex, labels=eval_arr["label"], split=tc.eval_split,
                              model_config=model_cfg), data_state={
                                  **pipeline.state_dict(n, gb, run.seed), "task": task.name
                              })
