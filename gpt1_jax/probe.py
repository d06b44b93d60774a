"""Linear probes: how much sentiment unlabelled text adds to a small labelled sample.

Logistic regression on the labelled sample (C by 5-fold cross-validation on it, never on
dev), scored on the dev split, with three feature sets:

* ``bag of words``: one binary feature per GPT-1 token; what fine-tuning from random
  initialisation can at best learn from the labels alone.
* ``+ pretrained token embeddings``: plus the sentence mean of a pretrained model's input
  embeddings, centred (every row carries one shared component, see BENCHMARKS.md): what the
  language model wrote into its table.
* ``+ PPMI-SVD vectors of the corpus``: plus the same mean over count-based word vectors
  (positive PMI of co-occurrence within a document, truncated SVD): what the corpus's word
  statistics hold with no optimisation budget in the way.

If the count-based row does not beat the bag of words, the corpus holds no word-level signal
the labels lack; if only the embedding row fails to, the language model has not yet captured
what the corpus holds.

Memory. Co-occurrence is counted only for the tokens the labelled and dev sentences use
(the rows the probe reads: a few thousand) against the most document-frequent context tokens,
accumulated over chunks of documents as a dense ``rows x contexts`` float32 matrix: a few
hundred MB whatever the corpus size, where all-pairs counting per document grew with the
square of each review's length (and ran out of 24 GiB on 40 MB of reviews).
"""

from __future__ import annotations

import warnings

import numpy as np

from gpt1_jax import extras
from gpt1_jax.data import lm, tasks
from gpt1_jax.tokenizer import GPT1Tokenizer


def documents(stream: np.ndarray, start_id: int) -> list[np.ndarray]:
  """Splits a prepared token stream (each document preceded by ``_start_``) into documents."""
  starts = np.flatnonzero(stream == start_id)
  ends = np.append(starts[1:], len(stream))
  return [stream[s + 1:e] for s, e in zip(starts, ends) if e > s + 1]


def bag_of_words(seqs: list, vocab_size: int):
  """Binary ``[len(seqs), vocab_size]`` CSR matrix: which tokens each sequence contains."""
  import scipy.sparse as sp
  lengths = [len(x) for x in seqs]
  rows = np.repeat(np.arange(len(seqs)), lengths)
  cols = np.concatenate([np.asarray(x, np.int64) for x in seqs]) if rows.size else np.zeros(0, np.int64)
  m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(seqs), vocab_size))
  m.data[:] = 1.0  # presence, not counts
  return m


def ppmi_vectors(docs: list[np.ndarray], rows: np.ndarray, vocab_size: int, dims: int = 64, num_contexts: int = 10_000,
                 chunk: int = 2_000, seed: int = 0) -> np.ndarray:
  """Count-based word vectors ``[vocab_size, dims]`` (zero outside ``rows``).

  ``M[r, c]`` = number of documents containing both row token ``r`` and context token ``c``
  (``r != c``); contexts are the ``num_contexts`` tokens in the most documents. PPMI uses
  word2vec's context smoothing (counts ** 0.75); vectors are ``U sqrt(S)`` of its rank-``dims``
  SVD, scaled to unit length.
  """
  import scipy.sparse as sp
  from scipy.sparse.linalg import svds
  rows = np.unique(np.asarray(rows, np.int64))
  if len(docs) == 0 or len(rows) == 0:
    raise ValueError("ppmi_vectors: no documents or no row tokens to count")
  df = np.asarray(bag_of_words(docs, vocab_size).sum(0)).ravel()
  contexts = np.argsort(-df, kind="stable")[:min(num_contexts, int((df > 0).sum()))]
  counts = np.zeros((len(rows), len(contexts)), np.float32)
  for i in range(0, len(docs), chunk):
    x = bag_of_words(docs[i:i + chunk], vocab_size)
    counts += (x[:, rows].T @ x[:, contexts]).toarray()
  # A token never co-occurs with itself.
  pos = {int(t): j for j, t in enumerate(contexts)}
  for i, t in enumerate(rows):
    if int(t) in pos:
      counts[i, pos[int(t)]] = 0.0
  row_sum = counts.sum(1, keepdims=True)
  col_p = counts.sum(0, keepdims=True)**0.75
  with np.errstate(divide="ignore", invalid="ignore"):
    pmi = np.log(counts * col_p.sum() / (row_sum * col_p))
  ppmi = sp.csr_matrix(np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0).astype(np.float32))
  k = min(dims, min(ppmi.shape) - 1)
  u, s, _ = svds(ppmi, k=k, random_state=seed)
  vecs = u * np.sqrt(s)
  # Unit rows: otherwise the frequent function words, with the largest vectors, own every
  # sentence mean.
  vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
  out = np.zeros((vocab_size, k), np.float32)
  out[rows] = vecs
  return out


def centred_embeddings(params: dict, vocab_size: int) -> np.ndarray:
  """The pretrained token table's real rows minus their mean (the shared drift component),
  scaled to unit length like the count-based vectors."""
  tree = params["transformer"] if "transformer" in params else params
  table = np.asarray(tree["embed"]["tokens"], np.float32)[:vocab_size]
  table = table - table.mean(0)
  return table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)


def accuracy(words: dict, labels: dict, ids: dict, extra: np.ndarray | None = None) -> float:
  """Dev accuracy of logistic regression on ``words`` (+ the sentence mean of ``extra`` rows)."""
  import scipy.sparse as sp
  LogisticRegressionCV = extras.require("sklearn.linear_model", "experiments", "the probe").LogisticRegressionCV
  # Only tokens of the labelled sample can get a weight: dropping the other columns changes
  # nothing but the solver's time.
  seen = np.flatnonzero(np.asarray(words["train"].sum(0)).ravel())
  x = words = {s: words[s][:, seen] for s in words}
  if extra is not None:
    dense = {s: np.stack([extra[np.asarray(t)].mean(0) for t in ids[s]]) for s in ids}
    scale = dense["train"].std() or 1.0  # same scale as the binary features, whatever the source
    x = {s: sp.hstack([words[s], sp.csr_matrix(dense[s] / scale)]).tocsr() for s in ids}
  with warnings.catch_warnings():  # scikit-learn's notices about future defaults; we set what we use
    warnings.simplefilter("ignore", FutureWarning)
    clf = LogisticRegressionCV(Cs=[0.3, 1, 3, 10], cv=5, scoring="accuracy", max_iter=3000)
    clf.fit(x["train"], labels["train"])
  return float(clf.score(x["dev"], labels["dev"]))


def labelled(task_dir: str, task: str = "sst2"):
  """``(ids, labels)`` per split (``train``, ``dev``) of a single-sentence task, GPT-1 tokens."""
  tok = GPT1Tokenizer()
  split = {s: tasks.load_split(task, s, task_dir).examples for s in ("train", "dev")}
  ids = {s: [x or [tok.start_id] for x in tok.encode_batch([e.texts[0] for e in ex])] for s, ex in split.items()}
  labels = {s: np.array([e.label for e in ex]) for s, ex in split.items()}
  return ids, labels


def run(task_dir: str, *, data_dir: str | None = None, params: dict | None = None, dims: int = 64,
        task: str = "sst2") -> dict:
  """The probes that the given sources allow: ``data_dir`` (a prepared corpus) adds the PPMI row,
  ``params`` (a pretrained model's) the embedding row. Returns ``{name: dev accuracy}``."""
  tok = GPT1Tokenizer()
  v = tok.vocab_size
  ids, labels = labelled(task_dir, task)
  words = {s: bag_of_words(ids[s], v) for s in ids}
  out = {"bag of words": accuracy(words, labels, ids)}
  if params is not None:
    out["bag of words + pretrained token embeddings"] = accuracy(words, labels, ids, centred_embeddings(params, v))
  if data_dir is not None:
    docs = documents(lm.load_tokens(data_dir, "train"), tok.start_id)
    used = np.concatenate([np.concatenate(ids[s]) for s in ids])
    out["bag of words + PPMI-SVD vectors of the corpus"] = accuracy(words, labels, ids,
                                                                    ppmi_vectors(docs, used, v, dims=dims))
  return out
