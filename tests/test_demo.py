"""The demo's pieces measure what they say.

* The probe (gpt1_jax.probe): a planted corpus makes the answer known: the labelled sample uses one set of sentiment
words, the dev set only another, and the unlabelled phrases are the sole link between them (both
sets appear next to the same polarity-specific context words).
Word identity alone must then be at chance on dev, and the corpus's co-occurrence vectors
must carry the labels across.
* The shipped corpus: its checksum is the one its README records, and no review shares an
  8-gram with an SST-2 dev sentence (pretraining on dev text would fake transfer).
* The transfer curve (gpt1_jax.transfer) on a micro pretraining run: its perplexities agree
  with the training loop's own evaluation, its fine-tuned accuracies with a direct run.
* The demo's console, end to end on a checkout with a small corpus: its stages and a results
  table in under 60 lines, no log-formatted line nor library warning; the details in its log.
"""

import hashlib
import json
import lzma
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from gpt1_jax import loop, probe, transfer
from gpt1_jax.data import prepare
from gpt1_jax.model import ModelConfig, init_params

REPO = pathlib.Path(__file__).resolve().parents[1]

SEEN = {1: ["good", "great", "fine"], 0: ["bad", "awful", "poor"]}
UNSEEN = {1: ["superb", "lovely", "brilliant"], 0: ["dreadful", "dull", "boring"]}
CONTEXT = {1: ["loved", "enjoyed", "charming"], 0: ["hated", "disliked", "tedious"]}  # in neither labelled split
FILLER = ["the", "film", "movie", "story", "was", "is", "a", "plot", "cast", "it"]


def sentences(rng, words, n):
  rows = []
  for i in range(n):
    label = i % 2
    text = rng.choice(FILLER, 3).tolist() + [rng.choice(words[label])] + rng.choice(FILLER, 2).tolist()
    rows.append((" ".join(text), label))
  return rows


def test_probe_finds_sentiment_only_the_corpus_holds(tmp_path):
  rng = np.random.default_rng(0)
  task = tmp_path / "sst2"
  task.mkdir()
  for split, words, n in (("train", SEEN, 60), ("dev", UNSEEN, 60)):
    lines = ["sentence\tlabel"] + [f"{t}\t{y}" for t, y in sentences(rng, words, n)]
    (task / f"{split}.tsv").write_text("\n".join(lines) + "\n")
  # Unlabelled phrases: seen and unseen words of one polarity keep the same company, as
  # distributional similarity needs (shared contexts, not each other).
  corpus = [f"{rng.choice(FILLER)} {rng.choice(SEEN[y] + UNSEEN[y])} {rng.choice(CONTEXT[y])}" for y in (0, 1) * 300]
  (tmp_path / "corpus.txt").write_text("\n".join(corpus) + "\n")
  prepare.prepare(str(tmp_path / "corpus"), inputs=[str(tmp_path / "corpus.txt")], doc_split="line", valid_fraction=0.0,
                  num_shards=1, workers=1, progress=False)
  cfg = ModelConfig(n_ctx=16, n_embd=8, n_head=2, n_layer=1)
  params = init_params(cfg, jax.random.key(0))

  acc = probe.run(str(task), data_dir=str(tmp_path / "corpus"), params=params, dims=16)

  assert set(acc) == {
      "bag of words", "bag of words + pretrained token embeddings", "bag of words + PPMI-SVD vectors of the corpus"
  }
  assert 0.4 <= acc["bag of words"] <= 0.6  # dev words never labelled: chance
  # 60 dev sentences: chance is 0.5 +- 0.065, so 0.75 is ~4 standard deviations above it.
  assert acc["bag of words + PPMI-SVD vectors of the corpus"] >= 0.75
  # Random embeddings know nothing about the unseen words either.
  assert acc["bag of words + pretrained token embeddings"] <= 0.7


def test_documents_split_the_stream_at_start_markers():
  s = np.array([9, 1, 2, 9, 9, 3], np.uint16)
  assert [d.tolist() for d in probe.documents(s, 9)] == [[1, 2], [3]]


def _letters(text):
  return re.sub(r"[^a-z ]", " ", text.lower().replace(" n't", "n't")).split()


@pytest.mark.slow  # reads 26 MB of reviews
def test_shipped_corpus_matches_its_readme_and_holds_no_sst2_dev_8gram():
  path = REPO / "data" / "imdb" / "unlabelled.txt.xz"
  readme = (REPO / "data" / "imdb" / "README.md").read_text()
  assert hashlib.sha256(path.read_bytes()).hexdigest() in readme
  text = lzma.decompress(path.read_bytes()).decode("utf-8")
  assert hashlib.sha256(text.encode()).hexdigest() in readme
  reviews = text.removesuffix("\n").split("\n")  # not splitlines(): some reviews hold U+2028 and the like
  assert len(reviews) == 20_000 and all(r.strip() for r in reviews)
  dev = [line.split("\t")[0] for line in (REPO / "data" / "sst2" / "dev.tsv").read_text().splitlines()[1:]]
  grams = {tuple(w[i:i + 8]) for w in map(_letters, dev) for i in range(len(w) - 7)}
  assert len(grams) > 5_000  # the check has something to find
  hits = [
      i for i, r in enumerate(reviews) if any(
          tuple(w) in grams for w in (lambda x: (x[j:j + 8] for j in range(len(x) - 7)))(_letters(r)))
  ]
  assert hits == []


@pytest.mark.slow  # a micro pretraining run and three fine-tuning runs
def test_transfer_curve_on_a_micro_run(lm_data_dir, tmp_path):
  from conftest import micro_pretrain_config
  pre = str(tmp_path / "pre")
  loop.train_and_evaluate(micro_pretrain_config(lm_data_dir, steps=40), pre)  # checkpoints every 10, evals at 20, 40
  rows = transfer.curve(pre, str(tmp_path / "curve"), seeds=[0], steps=[20, 40], epochs=1, log=lambda m: None)

  assert [r["step"] for r in rows] == [0, 20, 40]
  assert [r["tokens"] for r in rows] == [0, 20 * 8 * 32, 40 * 8 * 32]
  logged = {
      d["step"]: d["eval/perplexity"]
      for d in map(json.loads, open(os.path.join(pre, "metrics.jsonl")))
      if "eval/perplexity" in d
  }
  for r in rows[1:]:  # the same held-out windows as the loop's evaluation, up to a padded tail window
    assert r["perplexity"] == pytest.approx(logged[r["step"]], rel=0.03)
  assert rows[2]["perplexity"] < rows[1]["perplexity"]
  direct = transfer.finetune(str(tmp_path / "direct"), str(tmp_path / "curve" / "weights_40"), 0,
                             str(REPO / "data" / "sst2"), epochs=1,
                             model=json.load(open(os.path.join(pre, "config.json")))["model"])
  assert rows[2]["pretrained"] == [direct]
  assert rows[0]["pretrained"] == rows[0]["random"] == rows[2]["random"]
  for r in rows:
    assert 0.3 < r["probe_bow"] < 1.0
  for name in ("transfer.json", "transfer.md", "transfer.png"):
    assert (tmp_path / "curve" / name).stat().st_size > 0
  assert (tmp_path / "curve" / "transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  md = (tmp_path / "curve" / "transfer.md").read_text().splitlines()
  assert len(md) == 2 + 3 and md[-1].startswith("| 40 |")


def test_curve_refuses_a_missing_step_before_any_work(lm_data_dir, tmp_path):
  from conftest import micro_pretrain_config
  pre = str(tmp_path / "pre")
  loop.train_and_evaluate(micro_pretrain_config(lm_data_dir, steps=10), pre)
  with pytest.raises(ValueError, match=r"no checkpoint at steps \[30\]"):
    transfer.curve(pre, str(tmp_path / "curve"), seeds=[0], steps=[10, 30])
  assert not (tmp_path / "curve").exists()
  (tmp_path / "task").mkdir()
  (tmp_path / "task" / "train.tsv").write_text("sentence\tlabel\ngood\t1\n")
  with pytest.raises(FileNotFoundError, match=r"task: no dev.tsv"):
    transfer.curve(pre, str(tmp_path / "curve"), seeds=[0], steps=[10], task_dir=str(tmp_path / "task"))
  assert not (tmp_path / "curve").exists()


def test_shipped_files_are_found_in_the_checkout_or_GPT1_JAX_HOME(tmp_path, monkeypatch):
  """The demo, benchmark and grid find configs/ and data/ in one place: the checkout beside the
  package, or $GPT1_JAX_HOME; elsewhere they say what is missing instead of using a wrong path."""
  from gpt1_jax import project
  monkeypatch.delenv("GPT1_JAX_HOME", raising=False)
  assert pathlib.Path(project.path("configs", "pretrain.py")) == REPO / "configs" / "pretrain.py"
  assert project.load_config("pretrain", "tiny").model.n_embd > 0
  monkeypatch.setenv("GPT1_JAX_HOME", str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"configs/pretrain.py.*GPT1_JAX_HOME"):
    project.load_config("pretrain", "tiny")
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "pretrain.py"
  ).write_text("import ml_collections\ndef get_config(arg):\n  return ml_collections.ConfigDict({'variant': arg})\n")
  assert project.load_config("pretrain", "x").variant == "x"
  assert project.path("data", "nowhere", must_exist=False) == str(tmp_path / "data" / "nowhere")


def _small_checkout(root: pathlib.Path, reviews=400, sentences=60):
  """The checkout as the demo reads it (configs/, data/imdb, data/sst2), with a corpus and task
  small enough to run every stage in a couple of minutes."""
  (root / "data" / "imdb").mkdir(parents=True)
  (root / "configs").symlink_to(REPO / "configs")
  with lzma.open(REPO / "data" / "imdb" / "unlabelled.txt.xz", "rt") as f:
    head = "".join(f.readline() for _ in range(reviews))
  with lzma.open(root / "data" / "imdb" / "unlabelled.txt.xz", "wt") as f:
    f.write(head)
  (root / "data" / "sst2").mkdir()
  for name in ("train.tsv", "dev.tsv"):
    with open(REPO / "data" / "sst2" / name) as f:
      (root / "data" / "sst2" / name).write_text("".join(f.readline() for _ in range(sentences + 1)))
  return root


@pytest.mark.slow  # every stage of the demo on a small corpus (about two minutes)
def test_demo_console_is_its_stages_and_results_and_the_details_are_in_its_log(tmp_path):
  home = _small_checkout(tmp_path / "checkout")
  workdir = tmp_path / "demo"
  # A user's environment (the test session sets these for itself), output to a pipe as under a
  # scheduler or `> file`: no bars, a few lines per stage.
  env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "XLA_FLAGS")}
  p = subprocess.run([
      sys.executable, "-m", "gpt1_jax.demo", f"--workdir={workdir}", "--budget=30", "--seeds=0", "--finetune_epochs=1"
  ], cwd=REPO, capture_output=True, text=True, timeout=900, env={
      **env, "GPT1_JAX_HOME": str(home)
  })
  console = (p.stdout + p.stderr).splitlines()
  shown = "\n".join(console)
  assert p.returncode == 0, p.stderr[-3000:]
  assert len(console) < 60, shown
  glog = re.compile(r"^[IWEF]\d{4} ")  # absl/glog's format, from Python or C++
  assert [line for line in console if glog.match(line)] == [], shown
  for noise in ("WARNING:absl", "read_only=True", "_CHECKPOINT_METADATA", "Given directory is read only",
                "absl::InitializeLog", "oneDNN", "Warning:"):
    assert not [line for line in console if noise in line], shown
  log = workdir / "demo.log"
  assert console[0].endswith(f"full log: {log}") and console[-1].endswith(f"full log in {log}")
  assert any(line.startswith("== results") for line in console)
  assert any(re.match(r"   seed 0 +\| +0\.\d{3} \| +0\.\d{3} \| [+-]\d+\.\d$", line) for line in console)
  # The details: our records (compile time, each logged step), Orbax's, the console's own lines.
  text = log.read_text()
  for detail in ("loop.py:", "compiled in", "pretrain: step 30/30", "sst2_random_seed0: step", "orbax",
                 "== 3/4 fine-tuning"):
    assert detail in text, detail
  summary = json.loads((workdir / "demo_summary.json").read_text())
  assert set(summary) == {"pretrain", "finetune", "gap_points", "probe", "seconds"}
  assert [set(r) for r in summary["finetune"]] == [{"seed", "pretrained", "random"}]
  assert (workdir / "pretrain" / "metrics.jsonl").exists()
