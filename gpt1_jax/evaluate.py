"""Evaluation during training: one evaluator per kind of job, each compiled once and run at eval steps.

An evaluator (big_vision's shape) is a small object with ``compile(setup, batch_size)`` and
``run(params, step, workdir) -> {metric: value}``. ``LMEvaluator`` reports held-out loss and
perplexity (always the full softmax); ``TaskEvaluator`` adds the task's metrics, writes GLUE-style
prediction files (each row carries its example's own id) and keeps the weights of the best
evaluation under ``WORKDIR/best``. The job (``jobs.py``) picks one; the loop only calls it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Callable, Optional

import jax
import numpy as np

from gpt1_jax import checkpoint as ckpt_lib
from gpt1_jax import metrics as task_metrics
from gpt1_jax import sharding
from gpt1_jax.train import eval_step
from gpt1_jax.workdir import RunDir


def compile_eval(objective, setup, eval_batch: int, with_index: bool = False):
  """The eval step compiled for ``eval_batch`` rows of the train batch's shapes, plus ``example_mask``
  (padding rows) and, with ``with_index``, ``example_index`` (each row's example, for predictions)."""
  mesh, rules = setup.mesh, setup.rules
  batch = {
      k: jax.ShapeDtypeStruct((eval_batch,) + v.shape[1:], v.dtype, sharding=v.sharding)
      for k, v in setup.abstract_batch.items()
  }
  batch["example_mask"] = jax.ShapeDtypeStruct((eval_batch,), np.float32,
                                               sharding=sharding.batch_sharding(mesh, rules, 1))
  if with_index:
    batch["example_index"] = batch["example_mask"].update(dtype=np.int32)
  shardings = {k: v.sharding for k, v in batch.items()}
  with sharding.activate(mesh, rules):
    return jax.jit(lambda p, b: eval_step(p, {
        k: v for k, v in b.items() if k != "example_index"
    }, objective=objective), in_shardings=(setup.shardings["params"], shardings),
                   out_shardings=sharding.replicated(mesh)).lower(setup.abstract_state["params"], batch).compile()


@dataclasses.dataclass
class LMEvaluator:
  """Held-out loss and perplexity of a language model over one pass of ``batches``."""

  objective: Any
  batches: Callable  # (Rows) -> iterator over one pass of this host's rows
  compiled: Any = dataclasses.field(default=None, init=False)
  with_index = False  # each row's example index in the batch (tasks: predictions in example order)

  def compile(self, setup, batch_size: int):
    self._setup, self._batch_size = setup, batch_size
    self.compiled = compile_eval(self.objective, setup, batch_size, with_index=self.with_index)

  def _pass(self, params, keep=()):
    """Sums over one pass, and the listed per-row outputs gathered on every host."""
    mesh, rules = self._setup.mesh, self._setup.rules
    rows = sharding.host_rows(mesh, rules, self._batch_size)
    sums, kept = {}, {k: [] for k in keep}
    for local in self.batches(rows):
      batch = sharding.global_batch(local, mesh, rules, self._batch_size)
      out = jax.device_get(self.compiled(params, batch))
      for k, v in out.items():
        if k.endswith("_sum") or k == "count":
          sums[k] = sums.get(k, 0.0) + float(v)
      for k in keep:
        kept[k].append(np.asarray(out[k] if k in out else jax.device_get(_gather_replicated(batch[k]))))
    return sums, {k: np.concatenate(v) for k, v in kept.items() if v}

  def run(self, params, step: int, workdir: str) -> dict:
    del step, workdir
    sums, _ = self._pass(params)
    loss = sums["loss_sum"] / max(sums.get("count", 0.0), 1.0)
    return {"eval/loss": loss, "eval/perplexity": float(math.exp(min(loss, 50.0)))}

  def summary(self) -> dict:
    return {}


@dataclasses.dataclass
class TaskEvaluator(LMEvaluator):
  """A task's dev metrics, its prediction files, and the best weights so far in ``WORKDIR/best``."""

  task: Any = None
  examples: Any = None  # the eval split's Examples, in the order of ``labels``
  labels: Optional[np.ndarray] = None
  split: str = ""
  model_config: Any = None
  best_value: float = dataclasses.field(default=-math.inf, init=False)
  best_step: Optional[int] = dataclasses.field(default=None, init=False)
  with_index = True

  def run(self, params, step: int, workdir: str) -> dict:
    sums, kept = self._pass(params, keep=("predictions", "example_index", "example_mask"))
    result = {"eval/loss": sums["loss_sum"] / max(sums.get("count", 0.0), 1.0)}
    mask = kept["example_mask"] > 0
    predictions = kept["predictions"][mask][np.argsort(kept["example_index"][mask], kind="stable")]
    if len(predictions) != len(self.labels):
      raise RuntimeError(f"evaluation produced {len(predictions)} predictions for {len(self.labels)} examples")
    scores = task_metrics.compute_metrics(self.task, predictions, self.labels)
    result.update({f"eval/{k}": float(v) for k, v in scores.items()})
    if jax.process_index() == 0:
      out_dir = RunDir(workdir).predictions
      os.makedirs(out_dir, exist_ok=True)
      # The index column is each example's own id (GLUE's index column; Story Cloze's InputStoryid),
      # so a prediction can be traced to its source line whatever order the split was read in.
      task_metrics.write_glue_predictions(self.task, predictions, out_dir, split=self.split,
                                          ids=[e.id or str(i) for i, e in enumerate(self.examples)])
    self._keep_best(workdir, result, step, params)
    return result

  def _keep_best(self, workdir: str, ev: dict, step: int, params):
    """Saves the weights to ``WORKDIR/best`` when the task's main metric improves."""
    key = f"eval/{task_metrics.main_metric(self.task)}"
    value = ev.get(key)
    if value is None or value <= self.best_value:
      return
    self.best_value, self.best_step = value, step
    ckpt_lib.save_params(
        RunDir(workdir).best, self.model_config, {
            "transformer": params["transformer"],
            "head": params["head"]
        }, extra_meta={
            "step": step,
            "metric": key,
            "value": value,
            "task": self.task.name
        })
    logging.info("new best %s = %.4f at step %d (saved to %s/best)", key, value, step, workdir)

  def summary(self) -> dict:
    return {"best_step": self.best_step} if self.best_step is not None else {}


def _gather_replicated(x):
  """A batch-sharded array -> the full array on every host (small eval vectors only)."""
  from jax.experimental import multihost_utils
  if jax.process_count() == 1:
    return x
  return multihost_utils.process_allgather(x, tiled=True)
