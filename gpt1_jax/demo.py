"""The default job: GPT-1's recipe end to end on a laptop-sized budget.

  python -m gpt1_jax.demo [--workdir=workdirs/demo] [--seeds=0,1,2]

1. tokenise the shipped unlabelled corpus (SST-2's training phrases with the
   labels removed: abundant in-domain unlabelled text, the paper's setting);
2. pretrain ``configs/pretrain.py:tiny`` on it, then print text sampled from it;
3. fine-tune on 1,000 labelled SST-2 examples, once from the pretrained weights
   and once from random initialisation, for each seed, and print dev accuracy
   (872 examples) side by side: the paper's claim that pretraining helps.

Every stage resumes if interrupted (run the same command again).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "workdirs/demo", "Where data, checkpoints and metrics go.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Fine-tuning seeds (pretrained vs random init for each).")
flags.DEFINE_integer("pretrain_steps", 0, "Override the tiny config's pretraining steps (0: keep).")
flags.DEFINE_integer("finetune_epochs", 0, "Override the fine-tuning epochs (0: keep).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str):
  spec = importlib.util.spec_from_file_location(f"_demo_{name}", os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def samples(workdir: str) -> list[str]:
  from gpt1_jax import checkpoint, generate
  from gpt1_jax.tokenizer import GPT1Tokenizer
  tok = GPT1Tokenizer()
  cfg, params = checkpoint.load_params(workdir)
  prompts = ["the movie is", "it 's a", "this film", "the acting"]
  ids = [[tok.start_id] + tok.encode(p) for p in prompts]
  out = generate.generate(cfg, params, ids, max_new_tokens=12, top_k=20, temperature=0.8, seed=0)
  greedy = generate.generate(cfg, params, ids[:1], max_new_tokens=12, greedy=True)
  lines = [f"  [top-k 20] {p} -> {tok.decode(o)}" for p, o in zip(prompts, out)]
  lines.append(f"  [greedy]   {prompts[0]} -> {tok.decode(greedy[0])}")
  return lines


def main(argv):
  del argv
  from gpt1_jax.report import quiet_library_logs
  quiet_library_logs()
  from gpt1_jax import loop
  from gpt1_jax.data import prepare
  t0 = time.perf_counter()
  root = os.path.abspath(FLAGS.workdir)
  data_dir = os.path.join(root, "data")
  print(f"== 1/3 tokenising data/sst2/unlabelled.txt -> {data_dir}", flush=True)
  manifest = prepare.prepare(data_dir, inputs=[os.path.join(REPO, "data", "sst2", "unlabelled.txt")],
                             doc_split="line", num_shards=4, progress=False)
  print(f"   {manifest['splits']['train']['tokens']:,} training tokens in "
        f"{manifest['splits']['train']['documents']:,} phrases", flush=True)

  print("== 2/3 pretraining configs/pretrain.py:tiny", flush=True)
  pre = load_config("pretrain", "tiny")
  pre.data.dir = data_dir
  if FLAGS.pretrain_steps:
    pre.train.num_steps = FLAGS.pretrain_steps
  pre_dir = os.path.join(root, "pretrain")
  result = loop.train_and_evaluate(pre, pre_dir)
  first = _first_logged_loss(pre_dir)
  print(f"   train loss {first:.3f} -> {result['train/loss']:.3f}; held-out perplexity "
        f"{result.get('eval/perplexity', float('nan')):.1f} after {result['step']} steps", flush=True)
  print("\n".join(samples(pre_dir)), flush=True)

  print("== 3/3 fine-tuning on 1,000 labelled SST-2 sentences, dev = 872", flush=True)
  rows = []
  for seed in [int(s) for s in FLAGS.seeds]:
    accs = {}
    for init in ("pretrained", "random"):
      ft = load_config("finetune", "sst2_tiny")
      ft.task.source = os.path.join(REPO, "data", "sst2")
      ft.seed = seed
      ft.init["from"] = pre_dir if init == "pretrained" else "none"
      if FLAGS.finetune_epochs:
        ft.train.num_epochs = float(FLAGS.finetune_epochs)
      res = loop.train_and_evaluate(ft, os.path.join(root, f"sst2_{init}_seed{seed}"))
      accs[init] = res["eval/accuracy"]
      print(f"   seed {seed} {init:10s}: dev accuracy {accs[init]:.3f}", flush=True)
    rows.append((seed, accs["pretrained"], accs["random"]))
  print("\n   seed | from pretraining | from random init", flush=True)
  for seed, a, b in rows:
    print(f"   {seed:4d} | {a:16.3f} | {b:16.3f}")
  mean_a = sum(r[1] for r in rows) / len(rows)
  mean_b = sum(r[2] for r in rows) / len(rows)
  print(f"   mean | {mean_a:16.3f} | {mean_b:16.3f}   ({100 * (mean_a - mean_b):+.1f} points from pretraining)")
  summary = {"pretrain": {k: v for k, v in result.items() if not k.startswith("perf/")},
             "finetune": [{"seed": s, "pretrained": a, "random": b} for s, a, b in rows],
             "seconds": time.perf_counter() - t0}
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


if __name__ == "__main__":
  app.run(main)
