"""The default job: GPT-1's recipe end to end on a laptop-sized budget.

  python -m gpt1_jax.demo [--workdir=workdirs/demo] [--seeds=0,1,2]

1. tokenise the shipped unlabelled corpus (SST-2's training phrases with the
   labels removed: abundant in-domain unlabelled text, the paper's setting);
2. pretrain ``configs/pretrain.py:tiny`` on it, then print text sampled from it;
3. fine-tune on 1,000 labelled SST-2 examples, once from the pretrained weights
   and once from random initialisation, for each seed, and print dev accuracy
   (872 examples) side by side: the paper's claim that pretraining helps;
4. probe what the unlabelled corpus can add to the labels at all (``--probe``):
   linear models on words alone, and on words plus features learnt without
   labels (see :func:`probe`).

Every stage resumes if interrupted (run the same command again).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import warnings

from absl import app, flags, logging

FLAGS = flags.FLAGS

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
  print(f"== 1/4 tokenising data/sst2/unlabelled.txt -> {data_dir}", flush=True)
  corpus = os.path.join(REPO, "data", "sst2", "unlabelled.txt")
  manifest = prepare.prepare(data_dir, inputs=[corpus],
                             doc_split="line", num_shards=4, progress=False)
  print(f"   {manifest['splits']['train']['tokens']:,} training tokens in "
        f"{manifest['splits']['train']['documents']:,} phrases", flush=True)

  print("== 2/4 pretraining configs/pretrain.py:tiny", flush=True)
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

  print("== 3/4 fine-tuning on 1,000 labelled SST-2 sentences, dev = 872", flush=True)
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
             "finetune": [{"seed": s, "pretrained": a, "random": b} for s, a, b in rows]}
  if FLAGS.probe:
    print("== 4/4 what the unlabelled corpus adds to 1,000 labels (logistic regression, C by 5-fold CV on the "
          "labelled sample; SST-2 dev accuracy)", flush=True)
    summary["probe"] = probe(pre_dir, os.path.join(REPO, "data", "sst2"), corpus)
    for name, acc in summary["probe"].items():
      print(f"   {name:52s} {acc:.3f}", flush=True)
  summary["seconds"] = time.perf_counter() - t0
  with open(os.path.join(root, "demo_summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(f"done in {(time.perf_counter() - t0) / 60:.1f} min; summary in {root}/demo_summary.json")


def probe(pretrained_dir: str, task_dir: str, corpus: str, dims: int = 64) -> dict:
  """Dev accuracy of linear models on the labelled sample: words alone, then words plus features
  learnt from the unlabelled corpus without labels.

  * ``bag of words``: one binary feature per GPT-1 token; what fine-tuning from random
    initialisation can at best learn from the sample itself.
  * ``+ pretrained token embeddings``: plus the mean of the pretrained model's (centred) input
    embeddings over the sentence.
  * ``+ PPMI-SVD embeddings of the corpus``: plus the same mean over count-based word vectors
    (positive PMI of co-occurrence within a phrase, rank ``dims``): all the corpus's word
    co-occurrence statistics, with no optimisation budget in the way.

  If the PPMI row does not beat the first, the corpus holds no word-level sentiment signal the
  labels lack, and pretraining on it cannot help through the words; if only the pretrained row
  fails to, the LM has not captured what the corpus holds (BENCHMARKS.md).
  """
  import numpy as np
  import scipy.sparse as sp
  from scipy.sparse.linalg import svds
  from sklearn.linear_model import LogisticRegressionCV
  from gpt1_jax import checkpoint
  from gpt1_jax.data import tasks
  from gpt1_jax.tokenizer import GPT1Tokenizer

  tok = GPT1Tokenizer()
  v = tok.vocab_size
  split = {s: tasks.load_split("sst2", s, task_dir).examples for s in ("train", "dev")}
  ids = {s: tok.encode_batch([e.texts[0] for e in ex]) for s, ex in split.items()}
  labels = {s: np.array([e.label for e in ex]) for s, ex in split.items()}

  def bag(seqs):
    rows = np.repeat(np.arange(len(seqs)), [len(x) for x in seqs])
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, np.concatenate(seqs))), shape=(len(seqs), v))
    m.data[:] = 1.0  # presence, not counts
    return m

  with open(corpus, encoding="utf-8") as f:
    phrases = [sorted(set(x)) for x in tok.encode_batch([line.rstrip("\n") for line in f if line.strip()])]
  rows = np.concatenate([np.repeat(p, len(p)) for p in phrases])
  cols = np.concatenate([np.tile(p, len(p)) for p in phrases])
  keep = rows != cols
  cooc = sp.csr_matrix((np.ones(keep.sum(), np.float32), (rows[keep], cols[keep])), shape=(v, v)).tocoo()
  row_sum = np.asarray(cooc.sum(1)).ravel()
  col_p = np.asarray(cooc.sum(0)).ravel() ** 0.75  # context smoothing as in word2vec
  pmi = np.log(cooc.data * col_p.sum() / (row_sum[cooc.row] * col_p[cooc.col]))
  pos = pmi > 0
  u, sv, _ = svds(sp.csr_matrix((pmi[pos], (cooc.row[pos], cooc.col[pos])), shape=(v, v)), k=dims, random_state=0)
  ppmi = u * np.sqrt(sv)

  _, params = checkpoint.load_params(pretrained_dir)
  table = np.asarray(params["transformer"]["embed"]["tokens"])[:v]
  table = table - table.mean(0)  # the shared component every row carries (BENCHMARKS.md)

  words = {s: bag(ids[s]) for s in ids}

  def accuracy(extra=None):
    x = words
    if extra is not None:
      dense = {s: np.stack([extra[t].mean(0) for t in ids[s]]) for s in ids}
      scale = dense["train"].std()
      x = {s: sp.hstack([x[s], sp.csr_matrix(dense[s] / scale)]).tocsr() for s in ids}
    with warnings.catch_warnings():  # scikit-learn's notices about future defaults; we set what we use
      warnings.simplefilter("ignore", FutureWarning)
      clf = LogisticRegressionCV(Cs=[0.3, 1, 3, 10], cv=5, scoring="accuracy", max_iter=3000)
      clf.fit(x["train"], labels["train"])
    return float(clf.score(x["dev"], labels["dev"]))

  return {"bag of words": accuracy(), "bag of words + pretrained token embeddings": accuracy(table),
          "bag of words + PPMI-SVD embeddings of the corpus": accuracy(ppmi)}


def _first_logged_loss(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      d = json.loads(line)
      if "train/loss" in d:
        return d["train/loss"]
  return float("nan")


def _define_flags():
  """The CLI's flags, defined only when run as a program: importing the module (for
  :func:`probe`) must not claim flag names such as ``workdir`` that ``gpt1_jax.main`` also defines."""
  flags.DEFINE_string("workdir", "workdirs/demo", "Where data, checkpoints and metrics go.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Fine-tuning seeds (pretrained vs random init for each).")
  flags.DEFINE_integer("pretrain_steps", 0, "Override the tiny config's pretraining steps (0: keep).")
  flags.DEFINE_integer("finetune_epochs", 0, "Override the fine-tuning epochs (0: keep).")
  flags.DEFINE_bool("probe", True, "Finish with linear probes: how much sentiment the unlabelled corpus holds beyond "
                    "the words of the labelled sample (about a minute).")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
