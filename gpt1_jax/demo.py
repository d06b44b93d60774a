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
import os
import time

from absl import app, flags

from gpt1_jax import extras, project
from gpt1_jax.project import load_config

FLAGS = flags.FLAGS

CORPUS = project.path("data", "imdb", "unlabelled.txt.xz", must_exist=False)
TASK_DIR = project.path("data", "sst2", must_exist=False)
# Measured on the reference machine (2 cores, BENCHMARKS.md): what the ETA printed up front assumes.
STEPS_PER_SECOND = 7.5
FIXED_MINUTES = 5.0  # tokenising, six fine-tuning runs, the probes


def samples(workdir: str) -> list[str]:
  from gpt1_jax import checkpoint, generate
  from gpt1_jax.tokenizer import GPT1Tokenizer
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
  from gpt1_jax.report import quiet_library_logs
  quiet_library_logs()
  from gpt1_jax import loop, probe, transfer
  from gpt1_jax.data import prepare
  t0 = time.perf_counter()
  root = os.path.abspath(FLAGS.workdir)
  data_dir = os.path.join(root, "data")
  pre = load_config("pretrain", "tiny")
  pre.data.dir = data_dir
  if FLAGS.budget:
    pre.train.num_steps = FLAGS.budget
  steps = int(pre.train.num_steps)
  seeds = [int(s) for s in FLAGS.seeds]
  print(f"gpt1_jax demo: {steps:,} pretraining steps, {len(seeds)} seeds; about "
        f"{steps / STEPS_PER_SECOND / 60 + FIXED_MINUTES * len(seeds) / 3:.0f} min on 2 CPU cores "
        f"(less if resumed)", flush=True)

  print(f"== 1/4 tokenising {os.path.relpath(CORPUS, project.root())} -> {data_dir}", flush=True)
  manifest = prepare.prepare(data_dir, inputs=[CORPUS], doc_split="line", num_shards=4, progress=False)
  print(f"   {manifest['splits']['train']['tokens']:,} training tokens in "
        f"{manifest['splits']['train']['documents']:,} reviews", flush=True)

  print(f"== 2/4 pretraining configs/pretrain.py:tiny for {steps:,} steps "
        f"({steps * pre.train.batch_size * pre.model.n_ctx / 1e6:.1f}M tokens)", flush=True)
  pre_dir = os.path.join(root, "pretrain")
  result = loop.train_and_evaluate(pre, pre_dir)
  first = _first_logged_loss(pre_dir)
  sampled = f" (sampled softmax, {pre.train.softmax_samples:,} candidates)" if pre.train.softmax_samples else ""
  print(f"   train loss{sampled} {first:.3f} -> {result['train/loss']:.3f}; held-out perplexity (full softmax) "
        f"{result.get('eval/perplexity', float('nan')):.1f} after {result['step']} steps", flush=True)
  print("\n".join(samples(pre_dir)), flush=True)

  print("== 3/4 fine-tuning configs/finetune.py:sst2_tiny on 1,000 labelled SST-2 sentences, dev = 872",
        flush=True)
  rows = []
  for seed in seeds:
    accs = {}
    for init in ("pretrained", "random"):
      accs[init] = transfer.finetune(os.path.join(root, f"sst2_{init}_seed{seed}"),
                                     pre_dir if init == "pretrained" else "none", seed, TASK_DIR,
                                     epochs=FLAGS.finetune_epochs)
      print(f"   seed {seed} {init:10s}: dev accuracy {accs[init]:.3f}", flush=True)
    rows.append((seed, accs["pretrained"], accs["random"]))
  print("\n   seed | from pretraining | from random init | gap (points)", flush=True)
  for seed, a, b in rows:
    print(f"   {seed:4d} | {a:16.3f} | {b:16.3f} | {100 * (a - b):+.1f}")
  gaps = [100 * (a - b) for _, a, b in rows]
  mean_a = sum(r[1] for r in rows) / len(rows)
  mean_b = sum(r[2] for r in rows) / len(rows)
  spread = (sum((g - sum(gaps) / len(gaps)) ** 2 for g in gaps) / max(1, len(gaps) - 1)) ** 0.5
  print(f"   mean | {mean_a:16.3f} | {mean_b:16.3f} | {sum(gaps) / len(gaps):+.1f} "
        f"(std {spread:.1f} over seeds; min {min(gaps):+.1f}, max {max(gaps):+.1f})", flush=True)
  summary = {"pretrain": {k: v for k, v in result.items() if not k.startswith("perf/")},
             "finetune": [{"seed": s, "pretrained": a, "random": b} for s, a, b in rows],
             "gap_points": {"mean": sum(gaps) / len(gaps), "std": spread, "min": min(gaps), "max": max(gaps)}}
  if FLAGS.probe:
    print("== 4/4 probe: logistic regression on the 1,000 labelled sentences (C by 5-fold CV on them), "
          "SST-2 dev accuracy", flush=True)
    from gpt1_jax import checkpoint
    summary["probe"] = probe.run(TASK_DIR, data_dir=data_dir, params=checkpoint.load_params(pre_dir)[1])
    for name, acc in summary["probe"].items():
      print(f"   {name:52s} {acc:.3f}", flush=True)
  summary["seconds"] = time.perf_counter() - t0
  with open(os.path.join(root, "demo_summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(f"done in {(time.perf_counter() - t0) / 60:.1f} min; summary in {root}/demo_summary.json")


def _first_logged_loss(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      d = json.loads(line)
      if "train/loss" in d:
        return d["train/loss"]
  return float("nan")


def _define_flags():
  """The CLI's flags, defined only when run as a program: importing the module must not claim flag names such as ``workdir`` that ``gpt1_jax.main`` also defines."""
  flags.DEFINE_string("workdir", "workdirs/demo", "Where data, checkpoints and metrics go.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Fine-tuning seeds (pretrained vs random init for each).")
  flags.DEFINE_integer("budget", 0, "Pretraining steps (0: the tiny config's 6,000, the smallest budget on the measured "
                       "curve that beats random init on every seed on SST-2 and on held-back IMDb reviews; "
                       "see BENCHMARKS.md).", lower_bound=0)
  flags.DEFINE_float("finetune_epochs", 0.0, "Override the fine-tuning epochs (0: keep).", lower_bound=0.0)
  flags.DEFINE_bool("probe", True, "Finish with linear probes: the pretrained token embeddings and the corpus's "
                    "count-based vectors (about two minutes).")


if __name__ == "__main__":
  from gpt1_jax import errors
  _define_flags()
  app.run(errors.cli(main))
