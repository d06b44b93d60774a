"""Running the grid: pretraining what is not given, then every (task, arm, seed) not yet finished,
each resumable, then the table.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import time

from gpt1_jax import checkpoint, loop, project
from gpt1_jax.ablations.table import collect, final_eval, table_metric, write
from gpt1_jax.data import prepare
from gpt1_jax.ablations.grid import (QUICK_CORPUS_REVIEWS, Grid, barrier, is_main, needs_lstm, read_weights,
                                     check_inputs, finetune_config, pretrain_config, run_dir)


def run_once(config, workdir: str, log=print) -> dict:
  """``train_and_evaluate`` unless ``workdir/result.json`` says it finished; returns that record."""
  done = os.path.join(workdir, "result.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  t0 = time.perf_counter()
  metrics = loop.train_and_evaluate(config, workdir)
  record = {
      "seconds": time.perf_counter() - t0,
      "step": int(metrics["step"]),
      "metrics": {
          k: v for k, v in metrics.items() if k.startswith("eval/")
      }
  }
  if is_main():
    checkpoint.write_json(done, record)
  barrier(f"ablations: finished {workdir}")
  return record


def _quick_corpus(grid: Grid, log) -> str:
  """--quick without --pretrain_data: the first reviews of the shipped IMDb corpus, tokenised."""
  root = os.path.join(os.path.abspath(grid.out), "pretrain")
  data = os.path.join(root, "data")
  if not os.path.exists(os.path.join(data, "manifest.json")) and is_main():
    os.makedirs(root, exist_ok=True)
    text = os.path.join(root, "corpus.txt")
    with lzma.open(project.path("data", "imdb", "unlabelled.txt.xz"), "rt") as f, open(text, "w") as g:
      for _ in range(QUICK_CORPUS_REVIEWS):
        g.write(f.readline())
    log(f"tokenising {QUICK_CORPUS_REVIEWS} shipped IMDb reviews -> {data}")
    prepare.prepare(data, inputs=[text], doc_split="line", num_shards=1, valid_fraction=0.05, workers=1, progress=False)
  barrier("ablations: quick corpus")
  return data


def pretrain(grid: Grid, log=print) -> dict:
  """The weight sources of the grid: given ones as frozen by :func:`check_inputs`, others
  pretrained (resumably) and frozen; returns ``{"transformer": dir, "lstm": dir}``."""
  if grid.quick and not grid.pretrain_data and not (grid.transformer and grid.lstm):
    _quick_corpus(grid, log)
  shape = None
  for which in ("transformer", "lstm") if needs_lstm(grid) else ("transformer",):
    if getattr(grid, which):
      continue
    workdir = os.path.join(os.path.abspath(grid.out), "pretrain", which)
    c = pretrain_config(grid, which, shape)
    log(f"pretraining the {which} ({c.train.num_steps} steps of {c.train.batch_size} x {c.model.n_ctx} tokens"
        f"{', %d LSTM units' % c.model.lstm_units if which == 'lstm' else ''}) in {workdir}")
    r = run_once(c, workdir, log)
    log(f"  {which}: held-out perplexity {r['metrics'].get('eval/perplexity', float('nan')):.1f} "
        f"({r['seconds'] / 60:.1f} min)")
    setattr(grid, which, workdir)
    read_weights(grid, which, workdir)[1]()
    shape = c.model.to_dict()
  return {
      w: os.path.join(grid.out, "weights", w) for w in ("transformer", "lstm") if w == "transformer" or needs_lstm(grid)
  }


def run_grid(grid: Grid, log=print) -> dict:
  """Checks the inputs, pretrains what is missing, runs every (task, arm, seed) not yet finished,
  and writes the table; returns the ``ablations.json`` record."""
  t0 = time.perf_counter()
  grid.out = os.path.abspath(grid.out)
  check_inputs(grid)
  os.makedirs(grid.out, exist_ok=True)
  sources = {"transformer": grid.transformer, "lstm": grid.lstm}
  weights_dirs = pretrain(grid, log)
  models = {w: checkpoint.load_params(d, with_meta=True)[2] for w, d in weights_dirs.items()}
  n = len(grid.tasks) * len(grid.arms) * len(grid.seeds)
  done = 0
  for task in grid.tasks:
    for arm in grid.arms:
      for seed in grid.seeds:
        workdir = run_dir(grid, task, arm.name, seed)
        done += 1
        if os.path.exists(os.path.join(workdir, "result.json")):
          continue
        init = "none" if arm.weights == "none" else weights_dirs[arm.weights]
        model = models["lstm" if arm.weights == "lstm" else "transformer"]["model"]
        r = run_once(finetune_config(grid, task, arm, seed, init, model), workdir, log)
        value = final_eval(workdir)[f"eval/{table_metric(task)}"]
        log(f"[{done}/{n}] {task} {arm.name} seed {seed}: {table_metric(task)} {value:.4f} "
            f"({r['seconds']:.0f} s; {(time.perf_counter() - t0) / 60:.1f} min so far)")
        if not grid.keep_weights and is_main():
          for sub in ("checkpoints", "best"):
            shutil.rmtree(os.path.join(workdir, sub), ignore_errors=True)
  record = collect(grid, {w: models[w].get("source") or sources[w] for w in models},
                   {w: models[w].get("step") for w in models})
  record["seconds_this_invocation"] = time.perf_counter() - t0
  if is_main():
    write(record, grid.out)
  return record
