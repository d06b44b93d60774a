"""Evaluation during training: the compiled eval step, one pass over the eval data, the best checkpoint.

Pretraining reports held-out loss and perplexity; fine-tuning adds the task's metrics, writes
GLUE-style prediction files (each row carries its example's own id) and keeps the weights of the
best evaluation under ``WORKDIR/best``.
"""

from __future__ import annotations

import logging
import math
import os

import jax
import numpy as np

from gpt1_jax import checkpoint as ckpt_lib
from gpt1_jax import sharding
from gpt1_jax.train import TaskObjective, eval_step


def compile_eval(objective, abstract_params, params_shardings, abstract_batch: dict, eval_batch: int, mesh, rules):
  """The eval step compiled for ``eval_batch`` rows of the train batch's shapes (+ ``example_mask``,
  and ``example_index`` for tasks)."""
  batch = {k: jax.ShapeDtypeStruct((eval_batch,) + v.shape[1:], v.dtype, sharding=v.sharding)
           for k, v in abstract_batch.items()}
  batch["example_mask"] = jax.ShapeDtypeStruct((eval_batch,), np.float32,
                                               sharding=sharding.batch_sharding(mesh, rules, 1))
  if isinstance(objective, TaskObjective):
    batch["example_index"] = batch["example_mask"].update(dtype=np.int32)
  shardings = {k: v.sharding for k, v in batch.items()}
  with sharding.activate(mesh, rules):
    return jax.jit(
        lambda p, b: eval_step(p, {k: v for k, v in b.items() if k != "example_index"}, objective=objective),
        in_shardings=(params_shardings, shardings), out_shardings=sharding.replicated(mesh)).lower(
            abstract_params, batch).compile()


def evaluate(compiled, params, job, mesh, rules, eval_batch: int, workdir: str) -> dict:
  """One pass over ``job.eval_batches``: ``eval/loss`` and perplexity or the task's metrics."""
  rows = sharding.host_rows(mesh, rules, eval_batch)
  sums = {}
  preds, idx, mask = [], [], []
  for local in job.eval_batches(rows):
    batch = sharding.global_batch(local, mesh, rules, eval_batch)
    out = jax.device_get(compiled(params, batch))
    for k, v in out.items():
      if k.endswith("_sum") or k == "count":
        sums[k] = sums.get(k, 0.0) + float(v)
    if job.task is not None:
      preds.append(np.asarray(out["predictions"]))
      idx.append(np.asarray(jax.device_get(_gather_replicated(batch["example_index"]))))
      mask.append(np.asarray(jax.device_get(_gather_replicated(batch["example_mask"]))))
  count = max(sums.get("count", 0.0), 1.0)
  result = {"eval/loss": sums["loss_sum"] / count}
  if job.task is None:
    result["eval/perplexity"] = float(math.exp(min(result["eval/loss"], 50.0)))
    return result
  from gpt1_jax import metrics as task_metrics
  preds, idx, mask = np.concatenate(preds), np.concatenate(idx), np.concatenate(mask) > 0
  order = np.argsort(idx[mask], kind="stable")
  predictions = preds[mask][order]
  if len(predictions) != len(job.eval_labels):
    raise RuntimeError(f"evaluation produced {len(predictions)} predictions for {len(job.eval_labels)} examples")
  scores = task_metrics.compute_metrics(job.task, predictions, job.eval_labels)
  result.update({f"eval/{k}": float(v) for k, v in scores.items()})
  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, "predictions")
    os.makedirs(out_dir, exist_ok=True)
    # The index column is each example's own id (GLUE's index column; Story Cloze's InputStoryid),
    # so a prediction can be traced to its source line whatever order the split was read in.
    task_metrics.write_glue_predictions(job.task, predictions, out_dir, split=job.eval_split,
                                        ids=[e.id or str(i) for i, e in enumerate(job.eval_examples)])
  return result


def _gather_replicated(x):
  """A batch-sharded array -> the full array on every host (small eval vectors only)."""
  from jax.experimental import multihost_utils
  if jax.process_count() == 1:
    return x
  return multihost_utils.process_allgather(x, tiled=True)


def keep_best(workdir: str, job, ev: dict, best: dict, step: int, model_cfg, params) -> dict:
  """Saves the weights to ``WORKDIR/best`` when the task's main metric improves; returns the best so far."""
  from gpt1_jax import metrics as task_metrics
  key = f"eval/{task_metrics.main_metric(job.task)}"
  value = ev.get(key)
  if value is not None and value > best["value"]:
    best = {"value": value, "step": step}
    ckpt_lib.save_params(os.path.join(workdir, "best"), model_cfg, {"transformer": params["transformer"],
                                                                     "head": params["head"]},
                         extra_meta={"step": step, "metric": key, "value": value, "task": job.task.name})
    logging.info("new best %s = %.4f at step %d (saved to %s/best)", key, value, step, workdir)
  return best
