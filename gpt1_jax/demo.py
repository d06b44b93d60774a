"""The default job: GPT-1's recipe end to end on a laptop-sized budget.

  python -m gpt1_jax.demo [--workdir=workdirs/demo] [--seeds=0,1,2] [--budget=STEPS]

1. tokenise the shipped unlabelled corpus: 20,000 IMDb movie reviews (``data/imdb``,
   Maas et al. 2011), in-domain text for sentiment with no SST-2 dev sentence in it;
2. pretrain ``configs/pretrain.py:tiny`` on it for ``--budget`` steps, then print text
   sampled from it;
3. fine-tune on 1,000 labelled SST-2 examples, once from the pretrained weights and once from
   random initialisation, for each seed, and print dev accuracy (872 examples) side by side:
   the paper's claim that pretraining helps;
4. probe what pretraining put into the model (``--probe``): linear models on words alone, on
   words plus the pretrained token embeddings, and on words plus count-based vectors of the
   corpus (what the corpus holds with no optimisation budget in the way; :mod:`gpt1_jax.probe`).

Every stage resumes if interrupted (run the same command again). The tiny config's schedule
is constant after warmup, so the model pretrained for ``--budget=N`` steps is exactly the
checkpoint at step N of a longer run: ``python -m gpt1_jax.transfer`` measures the whole
curve the budget is picked from (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import logging
import os
import time

from absl import app, flags

from gpt1_jax import checkpoint, extras, generate, loop, probe, project, report, transfer
from gpt1_jax.data import prepare
from gpt1_jax.project import load_config
from gpt1_jax.tokenizer import GPT1Tokenizer
from gpt1_jax.workdir import RunDir

FLAGS = flags.FLAGS

LOG_NAME = "demo.log"  # in the workdir: every log record of the run
CORPUS = project.path("data", "imdb", "unlabelled.txt.xz", must_exist=False)
TASK_DIR = project.path("data", "sst2", must_exist=False)
# Measured on the reference machine (2 cores, BENCHMARKS.md): what the ETA printed up front assumes.
STEPS_PER_SECOND = 7.5
FIXED_MINUTES = 5.0  # tokenising, six fine-tuning runs, the probes


def samples(workdir: str) -> list[str]:
  tok = GPT1Tokenizer()
  cfg, params = checkpoint.load_params(workdir)
  prompts = ["this movie is", "i thought the", "the acting was", "what a"]
  ids = [[tok.start_id] + tok.encode(p) for p in prompts]
  out = generate.generate(cfg, params, ids, max_new_tokens=12, top_k=20, temperature=0.8, seed=0)
  greedy = generate.generate(cfg, params, ids[:1], max_new_tokens=12, greedy=True)
  lines = [f"  [top-k 20] {p} -> {tok.decode(o)}" for p, o in zip(prompts, out)]
  lines.append(f"  [greedy]   {prompts[0]} -> {tok.decode(greedy[0])}")
  return lines


def main(argv):
  del argv
  # Before anything else: the demo tokenises (ftfy, spaCy), fine-tunes through tf.data and probes
  # with scikit-learn, and a missing one would otherwise stop it minutes in.
  extras.check(("ftfy", "spacy", "tensorflow", "sklearn"), "demo", "the demo")
  t0 = time.perf_counter()
  root = os.path.abspath(FLAGS.workdir)
  # The console holds the stages and the results; the details (every record of ours, Orbax's,
  # JAX's and TensorFlow's, library warnings) go to the log, for when something needs explaining.
  log = report.log_to_file(os.path.join(root, LOG_NAME))
  data_dir = os.path.join(root, "data")
  pre = load_config("pretrain", "tiny")
  pre.data.dir = data_dir
  if FLAGS.budget:
    pre.train.num_steps = FLAGS.budget
  steps = int(pre.train.num_steps)
  seeds = [int(s) for s in FLAGS.seeds]
  say(f"gpt1_jax demo: {steps:,} pretraining steps, {len(seeds)} seeds; about "
      f"{steps / STEPS_PER_SECOND / 60 + FIXED_MINUTES * len(seeds) / 3:.0f} min on 2 CPU cores "
      f"(less if resumed); full log: {log}")

  say(f"== 1/4 tokenising {os.path.relpath(CORPUS, project.root())} -> {data_dir}")
  manifest = prepare.prepare(data_dir, inputs=[CORPUS], doc_split="line", num_shards=4, progress=report.interactive())
  say(f"   {manifest['splits']['train']['tokens']:,} training tokens in "
      f"{manifest['splits']['train']['documents']:,} reviews")

  say(f"== 2/4 pretraining configs/pretrain.py:tiny for {steps:,} steps "
      f"({steps * pre.train.batch_size * pre.model.n_ctx / 1e6:.1f}M tokens)")
  pre_dir = os.path.join(root, "pretrain")
  result = loop.train_and_evaluate(pre, pre_dir)
  first = _first_logged_loss(pre_dir)
  sampled = f" (sampled softmax, {pre.train.softmax_samples:,} candidates)" if pre.train.softmax_samples else ""
  say(f"   train loss{sampled} {first:.3f} -> {result['train/loss']:.3f}; held-out perplexity (full softmax) "
      f"{result.get('eval/perplexity', float('nan')):.1f} after {result['step']} steps")
  say("\n".join(samples(pre_dir)))

  say("== 3/4 fine-tuning configs/finetune.py:sst2_tiny on 1,000 labelled SST-2 sentences, dev = 872")
  rows = []
  for seed in seeds:
    accs = {}
    for init in ("pretrained", "random"):
      accs[init] = transfer.finetune(os.path.join(root, f"sst2_{init}_seed{seed}"),
                                     pre_dir if init == "pretrained" else "none", seed, TASK_DIR,
                                     epochs=FLAGS.finetune_epochs)
      say(f"   seed {seed} {init:10s}: dev accuracy {accs[init]:.3f}")
    rows.append((seed, accs["pretrained"], accs["random"]))
  gaps = [100 * (a - b) for _, a, b in rows]
  spread = (sum((g - sum(gaps) / len(gaps))**2 for g in gaps) / max(1, len(gaps) - 1))**0.5
  summary = {
      "pretrain": {
          k: v for k, v in result.items() if not k.startswith("perf/")
      },
      "finetune": [{
          "seed": s,
          "pretrained": a,
          "random": b
      } for s, a, b in rows],
      "gap_points": {
          "mean": sum(gaps) / len(gaps),
          "std": spread,
          "min": min(gaps),
          "max": max(gaps)
      }
  }
  if FLAGS.probe:
    say("== 4/4 probe: logistic regression on the 1,000 labelled sentences (C by 5-fold CV on them), "
        "SST-2 dev accuracy (about two minutes)")
    summary["probe"] = probe.run(TASK_DIR, data_dir=data_dir, params=checkpoint.load_params(pre_dir)[1])
  summary["seconds"] = time.perf_counter() - t0
  with open(os.path.join(root, "demo_summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  say(results_table(summary))
  say(f"done in {summary['seconds'] / 60:.1f} min; results in {root}/demo_summary.json, full log in {log}")


def say(text: str):
  """The demo's own console lines (stdout, flushed: stages show as they happen in a file too), also
  in the log, so that the log reads on its own."""
  print(text, flush=True)
  logging.info("%s", text)


def results_table(summary: dict) -> str:
  """The results at the end, in one place: pretraining, SST-2 dev accuracy per seed, the probes."""
  pre = summary["pretrain"]
  lines = [
      f"== results: {pre['step']:,} pretraining steps, held-out perplexity "
      f"{pre.get('eval/perplexity', float('nan')):.1f}",
      "   SST-2 dev accuracy | from pretraining | from random init | gap (points)"
  ]
  for row in summary["finetune"]:
    a, b = row["pretrained"], row["random"]
    lines.append(f"   seed {row['seed']:<13d} | {a:16.3f} | {b:16.3f} | {100 * (a - b):+.1f}")
  n = len(summary["finetune"])
  gap = summary["gap_points"]
  lines.append(f"   mean {'':13s} | {sum(r['pretrained'] for r in summary['finetune']) / n:16.3f} | "
               f"{sum(r['random'] for r in summary['finetune']) / n:16.3f} | {gap['mean']:+.1f} "
               f"(std {gap['std']:.1f} over seeds; min {gap['min']:+.1f}, max {gap['max']:+.1f})")
  if "probe" in summary:
    lines.append("   linear probe, SST-2 dev accuracy:")
    lines += [f"   {name:52s} {acc:.3f}" for name, acc in summary["probe"].items()]
  return "\n".join(lines)


def _first_logged_loss(workdir):
  return next((row["train/loss"] for row in RunDir(workdir).metrics() if "train/loss" in row), float("nan"))


def define_flags():
  """The CLI's flags, defined only when run as a program: importing the module must not claim flag names such as ``workdir`` that ``gpt1_jax.main`` also defines."""
  flags.DEFINE_string("workdir", "workdirs/demo", "Where data, checkpoints and metrics go.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Fine-tuning seeds (pretrained vs random init for each).")
  flags.DEFINE_integer(
      "budget", 0, "Pretraining steps (0: the tiny config's 6,000, the smallest budget on the measured "
      "curve that beats random init on every seed on SST-2 and on held-back IMDb reviews; "
      "see BENCHMARKS.md).", lower_bound=0)
  flags.DEFINE_float("finetune_epochs", 0.0, "Override the fine-tuning epochs (0: keep).", lower_bound=0.0)
  flags.DEFINE_bool(
      "probe", True, "Finish with linear probes: the pretrained token embeddings and the corpus's "
      "count-based vectors (about two minutes).")


if __name__ == "__main__":
  from gpt1_jax import errors
  define_flags()
  app.run(errors.cli(main))
