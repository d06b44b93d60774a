"""The transfer curve: what each stretch of pretraining buys the fine-tuned task.

  python -m gpt1_jax.transfer --pretrain=workdirs/demo/pretrain [--out=DIR] [--seeds=0,1,2] [--task_dir=DIR]

For every checkpoint kept by one pretraining run (``checkpoint.keep_period`` keeps them all),
and for random initialisation as step 0, it reports:

* pretraining tokens seen (step x batch x sequence length);
* held-out perplexity on the run's valid split (computed here, same windows for every step);
* the linear probe of the model's own token embeddings (:mod:`gpt1_jax.probe`): bag of words
  plus the centred sentence-mean embedding, against bag of words alone;
* SST-2 dev accuracy after fine-tuning with the demo's settings (``configs/finetune.py:sst2_tiny``)
  from those weights, per seed, and its gap to fine-tuning from random initialisation.

Writes ``transfer.json``, ``transfer.md`` (a table) and ``transfer.png`` to ``--out``
(default ``PRETRAIN/../transfer``). Every fine-tuning run has its own workdir, so an
interrupted curve resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from gpt1_jax import checkpoint, extras, loop, probe, project
from gpt1_jax import config as config_lib
from gpt1_jax.data import lm
from gpt1_jax.project import load_config  # configs/ loaded by path, as --config does
from gpt1_jax.report import quiet_library_logs
from gpt1_jax.tokenizer import GPT1Tokenizer
from gpt1_jax.train import LMObjective
from gpt1_jax.workdir import RunDir


def checkpoint_steps(pretrain_dir: str) -> list[int]:
  rd = RunDir(pretrain_dir)
  steps = rd.steps()
  if not steps:
    raise FileNotFoundError(f"{rd.checkpoints}: no complete checkpoint")
  return steps


def heldout_perplexity_fn(pretrain_dir: str, max_windows: int = 512):
  """``params -> perplexity`` on the first ``max_windows`` valid windows of the run's data: the
  split is read and the loss compiled once for every checkpoint of the run."""
  import jax
  import jax.numpy as jnp
  run = config_lib.load(pretrain_dir)
  seq_len = run.max_seq_len
  tokens = lm.load_tokens(run.data.dir, "valid")
  n = min(max_windows, (len(tokens) - 1) // seq_len)
  if n < 1:
    raise ValueError(f"{run.data.dir}: valid split has {len(tokens)} tokens, under one window of {seq_len}")
  windows = np.stack([tokens[r * seq_len:r * seq_len + seq_len + 1] for r in range(n)]).astype(np.int32)
  batches = [{
      "inputs": jnp.asarray(w[:, :-1]),
      "targets": jnp.asarray(w[:, 1:]),
      "loss_mask": jnp.ones(w[:, 1:].shape, jnp.float32)
  } for w in np.array_split(windows, -(-n // 64))]
  objective = LMObjective(run.model)
  loss_fn = jax.jit(lambda p, b: objective.loss_sums(p, b, None, True)[:2])

  def perplexity(params) -> float:
    sums = [loss_fn(params, b) for b in batches]
    return float(np.exp(sum(float(s) for s, _ in sums) / sum(float(c) for _, c in sums)))

  return perplexity


def finetune_config(task: str, weights: str, seed: int, source: str, *, model: dict | None = None, epochs: float = 0.0,
                    recipe: str = "tiny"):
  """``configs/finetune.py:<task>_tiny`` (``recipe="paper"``: ``:<task>``) from ``weights`` (``none``:
  random init) on the task files in ``source``, with a pretraining run's ``model`` section when given
  (every arm of a comparison gets the same shape)."""
  ft = load_config("finetune", f"{task}_tiny" if recipe == "tiny" else task)
  if model is not None:
    ft.model.update({k: model[k] for k in ft.model if k in model})
    if recipe == "tiny":
      ft.task.max_len = ft.model.n_ctx
  ft.task.source = source
  ft.seed = seed
  ft.init.weights = weights
  if epochs:
    ft.train.num_epochs = float(epochs)
  return ft


def finetune(workdir: str, weights: str, seed: int, task_dir: str, epochs: float = 0.0,
             model: dict | None = None) -> float:
  """SST-2 dev accuracy of ``configs/finetune.py:sst2_tiny`` (:func:`finetune_config`)."""
  ft = finetune_config("sst2", weights, seed, task_dir, model=model, epochs=epochs)
  return float(loop.train_and_evaluate(ft, workdir)["eval/accuracy"])


def export_step(pretrain_dir: str, step: int, out: str) -> dict:
  """Writes checkpoint ``step``'s weights as a ``save_params`` directory (what ``init.weights`` reads)
  unless it exists; returns the params."""
  cfg, params = checkpoint.load_params(pretrain_dir, step)
  if not os.path.isdir(out):
    checkpoint.save_params(out + ".tmp", cfg, params, extra_meta={"source": pretrain_dir, "step": step})
    os.replace(out + ".tmp", out)
  return params


def curve(pretrain_dir: str, out: str, seeds=(0, 1, 2), task_dir: str | None = None, steps=None, epochs: float = 0.0,
          log=print) -> list[dict]:
  """One row per checkpoint (and step 0 = random init); see the module docstring. ``epochs``
  overrides the fine-tuning epochs (0: the demo's)."""
  task_dir = task_dir or project.path("data", "sst2")
  absent = [n for n in ("train.tsv", "dev.tsv") if not os.path.isfile(os.path.join(task_dir, n))]
  if absent:
    raise FileNotFoundError(f"{task_dir}: no {' or '.join(absent)} (a task directory in SST-2's format: "
                            f"sentence<TAB>label rows under a header)")
  pretrain_dir = os.path.abspath(pretrain_dir)
  available = checkpoint_steps(pretrain_dir)
  steps = available if steps is None else [int(s) for s in steps]
  missing = sorted(set(steps) - set(available))
  if missing:
    raise ValueError(f"{pretrain_dir}: no checkpoint at steps {missing} (has {available})")
  run = config_lib.load(pretrain_dir)
  tokens_per_step = run.train.batch_size * run.max_seq_len
  os.makedirs(out, exist_ok=True)
  v = GPT1Tokenizer().vocab_size
  ids, labels = probe.labelled(task_dir)
  words = {s: probe.bag_of_words(ids[s], v) for s in ids}
  bow = probe.accuracy(words, labels, ids)
  t0 = time.perf_counter()
  model = run.to_dict()["model"]
  random = [finetune(os.path.join(out, f"random_seed{s}"), "none", s, task_dir, epochs, model) for s in seeds]
  log(f"random init: {' '.join(f'{a:.3f}' for a in random)} (bag-of-words probe {bow:.3f})")
  rows = [{
      "step": 0,
      "tokens": 0,
      "perplexity": None,
      "probe_bow": bow,
      "probe_embeddings": None,
      "pretrained": random,
      "random": random,
      "gap": 0.0
  }]
  perplexity = heldout_perplexity_fn(pretrain_dir)
  for step in steps:
    weights = os.path.join(out, f"weights_{step}")
    params = export_step(pretrain_dir, step, weights)
    accs = [finetune(os.path.join(out, f"step{step}_seed{s}"), weights, s, task_dir, epochs, model) for s in seeds]
    row = {
        "step": step,
        "tokens": step * tokens_per_step,
        "perplexity": perplexity(params),
        "probe_bow": bow,
        "probe_embeddings": probe.accuracy(words, labels, ids, probe.centred_embeddings(params, v)),
        "pretrained": accs,
        "random": random,
        "gap": float(np.mean(accs) - np.mean(random))
    }
    rows.append(row)
    log(f"step {step}: {row['tokens'] / 1e6:.2f}M tokens, perplexity {row['perplexity']:.0f}, embedding probe "
        f"{row['probe_embeddings']:.3f}, fine-tuned {' '.join(f'{a:.3f}' for a in accs)} "
        f"(gap {100 * row['gap']:+.1f} points; {(time.perf_counter() - t0) / 60:.1f} min)")
  write(rows, out, pretrain_dir)
  return rows


def table(rows: list[dict]) -> str:
  lines = [
      "| step | tokens seen | held-out ppl | probe: BoW + embeddings (BoW alone) | fine-tuned from pretraining "
      "(seeds) | from random init | gap (points) |", "|---|---|---|---|---|---|---|"
  ]
  for r in rows:
    ppl = f"{r['perplexity']:.0f}" if r["perplexity"] else "-"
    emb = f"{r['probe_embeddings']:.3f} ({r['probe_bow']:.3f})" if r["probe_embeddings"] else f"- ({r['probe_bow']:.3f})"
    pre = " / ".join(f"{a:.3f}" for a in r["pretrained"])
    lines.append(
        f"| {r['step']} | {r['tokens'] / 1e6:.2f}M | {ppl} | {emb} | {pre} (mean {np.mean(r['pretrained']):.3f}) "
        f"| {np.mean(r['random']):.3f} | {100 * r['gap']:+.1f} |")
  return "\n".join(lines)


def write(rows: list[dict], out: str, pretrain_dir: str):
  with open(os.path.join(out, "transfer.json"), "w") as f:
    json.dump({"pretrain": pretrain_dir, "rows": rows}, f, indent=2)
  with open(os.path.join(out, "transfer.md"), "w") as f:
    f.write(table(rows) + "\n")
  matplotlib = extras.require("matplotlib", "experiments", "plotting")
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  tok = [r["tokens"] / 1e6 for r in rows]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  pre = np.array([r["pretrained"] for r in rows])
  ax1.plot(tok, pre.mean(1), "o-", label="fine-tuned from pretraining (mean of seeds)")
  ax1.fill_between(tok, pre.min(1), pre.max(1), alpha=0.2)
  ax1.axhline(np.mean(rows[0]["random"]), color="gray", ls="--", label="fine-tuned from random init")
  emb = [(t, r["probe_embeddings"]) for t, r in zip(tok, rows) if r["probe_embeddings"]]
  ax1.plot([t for t, _ in emb], [a for _, a in emb], "s-", label="probe: bag of words + embeddings")
  ax1.axhline(rows[0]["probe_bow"], color="gray", ls=":", label="probe: bag of words")
  ax1.set(xlabel="pretraining tokens (M)", ylabel="SST-2 dev accuracy", title="transfer")
  ax1.legend(fontsize=7)
  ppl = [(t, r["perplexity"]) for t, r in zip(tok, rows) if r["perplexity"]]
  ax2.plot([t for t, _ in ppl], [p for _, p in ppl], "o-")
  ax2.set(xlabel="pretraining tokens (M)", ylabel="held-out perplexity (IMDB)", title="language model")
  fig.tight_layout()
  fig.savefig(os.path.join(out, "transfer.png"), dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  from absl import flags
  quiet_library_logs()
  f = flags.FLAGS
  out = f.out or os.path.join(os.path.dirname(os.path.abspath(f.pretrain)), "transfer")
  rows = curve(f.pretrain, out, seeds=[int(s) for s in f.seeds], task_dir=f.task_dir or None, steps=f.steps or None,
               log=lambda m: print(m, flush=True))
  print(table(rows))
  print(f"wrote {out}/transfer.{{json,md,png}}")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("pretrain", None, "A pretraining run's workdir (its checkpoints/ are the curve's points).",
                      required=True)
  flags.DEFINE_string("out", "", "Output directory (default: PRETRAIN/../transfer).")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Fine-tuning seeds.")
  flags.DEFINE_list("steps", [], "Checkpoint steps to evaluate (default: all kept).")
  flags.DEFINE_string(
      "task_dir", "", "Labelled sentences in SST-2's format (train.tsv, dev.tsv: sentence, label) "
      "to fine-tune and probe on instead of the shipped SST-2 sample (a held-back check).")
  app.run(main)
