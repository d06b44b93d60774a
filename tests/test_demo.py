"""The demo's probe measures what it says: word-level sentiment the unlabelled corpus adds.

A planted corpus makes the answer known: the labelled sample uses one set of sentiment
words, the dev set only another, and the unlabelled phrases are the sole link between them (both
sets appear next to the same polarity-specific context words).
Word identity alone must then be at chance on dev, and the corpus's co-occurrence vectors
must carry the labels across.
"""

import jax
import numpy as np

from gpt1_jax import checkpoint, demo
from gpt1_jax.model import ModelConfig, init_params

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
  cfg = ModelConfig(n_ctx=16, n_embd=8, n_head=2, n_layer=1)
  checkpoint.save_params(str(tmp_path / "pre"), cfg, init_params(cfg, jax.random.key(0)))

  acc = demo.probe(str(tmp_path / "pre"), str(task), str(tmp_path / "corpus.txt"), dims=4)

  assert set(acc) == {"bag of words", "bag of words + pretrained token embeddings",
                      "bag of words + PPMI-SVD embeddings of the corpus"}
  assert 0.4 <= acc["bag of words"] <= 0.6  # dev words never labelled: chance
  assert acc["bag of words + PPMI-SVD embeddings of the corpus"] >= 0.9
