"""Zero-shot heuristics (Section 5) score exactly what the LM says about each whole sequence.

Every expectation is recomputed independently: the test builds each
heuristic's token sequence itself, runs the model on it alone (no batch, no
padding, no buckets) and takes a float64 log-softmax in NumPy. The scorer
batches, pads to buckets of 32, sorts by length and truncates; none of that
may change a score by more than 1e-5. The reference forward pass is NumPy
(pinned to ``GPT1LM`` on one sequence): compiling ``GPT1LM`` for each of the
dozens of sequence lengths would take minutes on CPU.

Weights are random at 15 times GPT-1's init scale so that the LM's
distributions are far from uniform and predictions are not decided by ties.
"""

import json
import os

import jax
import numpy as np
import pytest

from conftest import xla_compiles
from gpt1_jax import metrics as metrics_lib
from gpt1_jax import zeroshot as Z
from gpt1_jax.model import GPT1LM, ModelConfig, init_params
from gpt1_jax.tokenizer import GPT1Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = ModelConfig(vocab_size=40481, n_ctx=64, n_embd=32, n_head=2, n_layer=1)
ATOL = 1e-5


@pytest.fixture(scope="module")
def tok():
  return GPT1Tokenizer()


def random_params(seed):
  """``GPT1LM`` parameters drawn in NumPy (Flax's eager init of a 40k-row table takes seconds on CPU):
  N(0, 0.3) matrices and embeddings, LayerNorm scales N(1, 0.1), biases N(0, 0.1)."""
  shapes = jax.eval_shape(lambda: init_params(CFG, jax.random.key(0)))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    mean, std = (1.0, 0.1) if "scale" in name else (0.0, 0.1) if "bias" in name else (0.0, 0.3)
    return rng.normal(mean, std, leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def params():
  return random_params(0)


def scorer(params, tok, batch_size=4):
  return Z.Scorer(CFG, params, batch_size=batch_size, tokenizer=tok, progress=False)


def numpy_logits(params, ids):
  """GPT-1's forward pass in float64 NumPy, written from the paper's description (post-LN blocks,
  tanh GELU, tied output layer): ``[T, V]`` logits of one unpadded sequence."""
  P = jax.tree.map(lambda a: np.asarray(a, np.float64), params)["transformer"]
  table = P["embed"]["tokens"][:CFG.vocab_size]
  t = len(ids)
  x = table[np.asarray(ids)] + P["embed"]["positions"][:t]

  def layer_norm(z, p):
    z = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + CFG.layer_norm_epsilon)
    return z * p["scale"] + p["bias"]

  def softmax(z):
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)

  for i in range(CFG.n_layer):
    block = P["decoder"][f"h_{i}"]
    att, mlp = block["attn"], block["mlp"]
    qkv = np.einsum("td,dshk->tshk", x, att["qkv_kernel"]) + att["qkv_bias"]
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(CFG.head_dim)
    scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
    a = np.einsum("thk,hkd->td", np.einsum("hqk,khd->qhd", softmax(scores), v), att["out_kernel"]) + att["out_bias"]
    n = layer_norm(x + a, block["ln_1"])
    u = n @ mlp["fc_kernel"] + mlp["fc_bias"]
    u = 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u**3)))
    x = layer_norm(n + u @ mlp["proj_kernel"] + mlp["proj_bias"], block["ln_2"])
  return x @ table.T


def ref_logprobs(params, ids):
  """``[T, V]`` float64: row t is log p(. | ids[:t + 1]), from one unpadded sequence."""
  assert len(ids) <= CFG.n_ctx
  logits = numpy_logits(params, ids)
  top = logits.max(-1, keepdims=True)
  return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def ref_span(params, ids, start):
  """log p(ids[t] | ids[:t]) for t = start .. len(ids) - 1."""
  lp = ref_logprobs(params, ids)
  return np.array([lp[t - 1, ids[t]] for t in range(start, len(ids))])


def ref_mean(params, prefix, target):
  return ref_span(params, list(prefix) + list(target), len(prefix)).mean()


def left_truncate(prefix, target, n_ctx=CFG.n_ctx):
  """The documented rule: keep the first token, drop context from the front, keep the answer."""
  excess = len(prefix) + len(target) - n_ctx
  return prefix if excess <= 0 else prefix[:1] + prefix[1 + excess:]


# ----------------------------------------------------------------------------
# The scorer itself.


def test_numpy_reference_is_gpt1lm_on_one_unpadded_sequence(params, tok):
  ids = [tok.start_id] + tok.encode("the reference model must be the model itself .")
  forward = jax.jit(lambda p, x: GPT1LM(CFG).apply({"params": p}, x))
  logits = np.asarray(forward(params, np.asarray([ids], np.int32))[0], np.float64)
  np.testing.assert_allclose(numpy_logits(params, ids), logits, atol=1e-4, rtol=1e-5)


def test_token_logprobs_equal_unbatched_reference_across_buckets_padding_and_truncation(params, tok):
  rng = np.random.default_rng(0)
  # Total lengths 3 .. 90: buckets 32 and 64 (n_ctx), partial batches, and three sequences over n_ctx.
  shapes = [(1, 2), (5, 1), (20, 11), (31, 1), (33, 3), (40, 20), (3, 61), (70, 4), (100, 7), (60, 5)]
  pairs = [
      ([tok.start_id] + rng.integers(0, 40478, p - 1).tolist(), rng.integers(0, 40478, t).tolist()) for p, t in shapes
  ]
  with xla_compiles("_token_logprobs") as compiles:
    got = scorer(params, tok, batch_size=3).token_logprobs(pairs)
  # Batch size 3 is used nowhere else: exactly one compilation per bucket (32 and 64).
  assert len(compiles) == 2
  for (prefix, target), lp in zip(pairs, got):
    kept = left_truncate(prefix, target)
    assert kept[0] == tok.start_id and len(kept) + len(target) == min(len(prefix) + len(target), CFG.n_ctx)
    np.testing.assert_allclose(lp, ref_span(params, kept + target, len(kept)), atol=ATOL, rtol=0)


def test_fit_context_cuts_the_target_only_when_it_alone_does_not_fit():
  assert Z.fit_context([9, 1, 2, 3], list(range(100, 110)), n_ctx=8) == ([9, 100, 101, 102, 103, 104, 105, 106], 1)
  assert Z.fit_context([9, 1, 2, 3], [100, 101], n_ctx=5) == ([9, 2, 3, 100, 101], 3)
  assert Z.fit_context([9, 1], [100], n_ctx=5) == ([9, 1, 100], 2)
  with pytest.raises(ValueError, match="prefix"):
    Z.fit_context([], [1], n_ctx=5)


def test_next_token_logprobs_equal_reference_with_truncation(params, tok):
  rng = np.random.default_rng(1)
  prefixes = [[tok.start_id] + rng.integers(0, 40478, n).tolist() for n in (3, 40, 80)]
  query = [6353, 9503, 17]
  got = scorer(params, tok).next_token_logprobs(prefixes, query)
  for prefix, row in zip(prefixes, got):
    kept = left_truncate(prefix, [])
    np.testing.assert_allclose(row, ref_logprobs(params, kept)[-1, query], atol=ATOL, rtol=0)


def test_score_candidates_is_the_average_answer_logprob_given_start_and_context(params, tok):
  context, candidates = "the cat sat on the", ["mat .", "dog that barked all night ."]
  got = scorer(params, tok).score_candidates(context, candidates)
  prefix = [tok.start_id] + tok.encode(context)
  np.testing.assert_allclose(got, [ref_mean(params, prefix, tok.encode(c)) for c in candidates], atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------
# The heuristics of Section 5.


def test_default_source_is_the_checkouts_data_else_tfds_and_an_error_when_the_shipped_sample_is_missing(
    monkeypatch, tmp_path):
  monkeypatch.delenv("GPT1_JAX_HOME", raising=False)
  assert Z.default_source("sst2") == os.path.join(REPO, "data", "sst2")
  assert Z.default_source("cola") == os.path.join(REPO, "data", "cola")
  assert Z.default_source("race_middle") == "tfds"  # nothing shipped: tensorflow-datasets, as documented
  with pytest.raises(ValueError, match="winograd=PATH"):
    Z.default_source("winograd")
  # A package with no checkout beside it: a shipped sample is never silently swapped for other data.
  monkeypatch.setenv("GPT1_JAX_HOME", str(tmp_path))
  for task in ("sst2", "cola"):
    with pytest.raises(ValueError, match=f"^{task}: .*--source={task}="):
      Z.default_source(task)
  assert Z.default_source("story_cloze") == "tfds"
  (tmp_path / "data" / "sst2").mkdir(parents=True)
  assert Z.default_source("sst2") == str(tmp_path / "data" / "sst2")


def test_sst2_very_then_positive_vs_negative_on_real_dev_rows(params, tok):
  with open(os.path.join(REPO, "data", "sst2", "dev.tsv"), encoding="utf-8") as f:
    rows = [line.rstrip("\n").split("\t") for line in f][1:9]
  h = Z.build("sst2", tok, source=os.path.join(REPO, "data", "sst2"), split="dev", max_examples=8)
  result = h.evaluate(scorer(params, tok))
  neg, pos = tok.encode("negative"), tok.encode("positive")
  assert len(neg) == len(pos) == 1
  expected = np.array(
      [ref_logprobs(params, [tok.start_id] + tok.encode(s) + tok.encode("very"))[-1, neg + pos] for s, _ in rows])
  labels = np.array([int(y) for _, y in rows])
  np.testing.assert_allclose(result["scores"], expected, atol=ATOL, rtol=0)
  np.testing.assert_array_equal(result["predictions"], expected.argmax(-1))
  np.testing.assert_array_equal(result["labels"], labels)
  assert result["metric"] == "accuracy" and result["num_examples"] == 8
  assert result["score"] == pytest.approx(np.mean(expected.argmax(-1) == labels))


COLA_DEV = [("The sailors rode the breeze clear of the rocks.", 1), ("Rock the the boat sailors.", 0),
            ("The weights made the rope stretch over the pulley.", 1), ("Doll itself the wriggled loose.", 0),
            ("If you had eaten more, you would want less.", 1), ("As you eat the most, you want the least.", 0),
            ("John left.", 1)]
COLA_TRAIN = [("Mary sang a song.", 1), ("Sang Mary song a.", 0), ("The dog barked.", 1), ("Barked dog the.", 0),
              ("She gave him a book.", 1), ("Him she book gave a the.", 0)]


def write_cola(folder, name, rows):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
    f.writelines(f"src\t{y}\t{'' if y else '*'}\t{s}\n" for s, y in rows)


def test_cola_average_logprob_thresholded_at_the_median_or_given_or_fitted_on_train(params, tok, tmp_path):
  write_cola(tmp_path, "dev.tsv", COLA_DEV)
  write_cola(tmp_path, "train.tsv", COLA_TRAIN)
  sc = scorer(params, tok)
  expected = np.array([ref_mean(params, [tok.start_id], tok.encode(s)) for s, _ in COLA_DEV])
  labels = np.array([y for _, y in COLA_DEV])

  median = Z.build("cola", tok, source=str(tmp_path)).evaluate(sc)
  np.testing.assert_allclose(median["scores"], expected, atol=ATOL, rtol=0)
  assert median["threshold"] == pytest.approx(np.median(expected), abs=ATOL)
  assert "median" in median["threshold_from"]
  np.testing.assert_array_equal(median["predictions"], expected >= np.median(expected))
  assert median["metric"] == "mcc"
  assert median["score"] == pytest.approx(metrics_lib.matthews_corrcoef(median["predictions"], labels))

  given = Z.build("cola", tok, source=str(tmp_path), cola_threshold=-11.0).evaluate(sc)
  np.testing.assert_array_equal(given["predictions"], expected >= -11.0)

  fitted = Z.build("cola", tok, source=str(tmp_path), fit_threshold_on="train").evaluate(sc)
  train_scores = np.array([ref_mean(params, [tok.start_id], tok.encode(s)) for s, _ in COLA_TRAIN])
  best = max(
      metrics_lib.matthews_corrcoef(train_scores >= t, [y
                                                        for _, y in COLA_TRAIN])
      for t in list(train_scores) + [np.inf])
  train_preds = train_scores >= fitted["threshold"]
  assert metrics_lib.matthews_corrcoef(train_preds, [y for _, y in COLA_TRAIN]) == pytest.approx(best)
  np.testing.assert_array_equal(fitted["predictions"], expected >= fitted["threshold"])
  with pytest.raises(ValueError, match="not both"):
    Z.build("cola", tok, source=str(tmp_path), cola_threshold=0.0, fit_threshold_on="train")


def test_fit_threshold_maximises_mcc_and_never_splits_ties():
  rng = np.random.default_rng(3)
  for _ in range(20):
    scores = rng.integers(0, 6, 30).astype(float)  # many ties
    labels = (rng.random(30) < 0.3 + scores / 10).astype(int)
    t = Z.fit_threshold(scores, labels)
    best = max(metrics_lib.matthews_corrcoef(scores >= c, labels) for c in list(scores) + [np.inf])
    assert metrics_lib.matthews_corrcoef(scores >= t, labels) == pytest.approx(best)
    assert t not in scores or t == scores.min()


STORY_HEADER = ("InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
                "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding\n")


def test_story_cloze_picks_the_ending_with_the_highest_average_logprob(params, tok, tmp_path):
  stories = [("s1", ["Tom went out.", "It rained.", "He got wet.",
                     "He went home."], ["He dried off.", "He ate a moon."], 1),
             ("s2", ["Ann baked.", "The cake rose.", "She iced it.",
                     "Friends came."], ["They ate it all.", "The cake sang."], 2)]
  with open(tmp_path / "cloze_test_test__spring2016.csv", "w", encoding="utf-8") as f:
    f.write(STORY_HEADER)
    f.writelines(f'{i},{",".join(s)},"{e[0]}",{e[1]},{a}\n' for i, s, e, a in stories)
  result = Z.build("story_cloze", tok, source=str(tmp_path), split="test").evaluate(scorer(params, tok))
  expected = np.array([[ref_mean(params, [tok.start_id] + tok.encode(" ".join(s)), tok.encode(e))
                        for e in ends]
                       for _, s, ends, _ in stories])
  np.testing.assert_allclose(result["scores"], expected, atol=ATOL, rtol=0)
  np.testing.assert_array_equal(result["predictions"], expected.argmax(-1))
  assert result["score"] == pytest.approx(np.mean(expected.argmax(-1) == [a - 1 for *_, a in stories]))


def test_race_conditions_on_document_and_question_and_truncates_long_articles(params, tok, tmp_path):
  long_article = " ".join(f"word{i} went to the market ." for i in range(30))  # far beyond n_ctx = 64
  records = [{
      "id": "1.txt",
      "article": "Tom has a red ball and a blue kite.",
      "questions": ["What colour is the ball?", "Tom has a _ kite."],
      "options": [["red", "blue", "green", "a very long answer about nothing"], ["blue", "red", "big", "no"]],
      "answers": ["A", "A"]
  }, {
      "id": "2.txt",
      "article": long_article,
      "questions": ["Where did they go?"],
      "options": [["to the market", "home", "school", "nowhere at all"]],
      "answers": ["A"]
  }]
  for r in records:
    os.makedirs(tmp_path / "dev" / "middle", exist_ok=True)
    (tmp_path / "dev" / "middle" / r["id"]).write_text(json.dumps(r))
  result = Z.build("race_middle", tok, source=str(tmp_path / "dev"), split="dev").evaluate(scorer(params, tok))
  expected, truncated = [], 0
  for r in records:
    for q, opts in zip(r["questions"], r["options"]):
      prefix = [tok.start_id] + tok.encode(r["article"]) + tok.encode(q)
      row = []
      for o in opts:
        kept = left_truncate(prefix, tok.encode(o))
        truncated += len(kept) < len(prefix)
        row.append(ref_mean(params, kept, tok.encode(o)))
      expected.append(row)
  assert truncated == 4
  np.testing.assert_allclose(result["scores"], np.array(expected), atol=ATOL, rtol=0)
  np.testing.assert_array_equal(result["predictions"], np.argmax(expected, -1))
  assert result["num_examples"] == 3 and result["metric"] == "accuracy"


def test_winograd_jsonl_partial_and_full_scoring(params, tok, tmp_path):
  problems = [{
      "sentence": "The trophy does not fit in the suitcase because _ is too big.",
      "option1": "the trophy",
      "option2": "the suitcase",
      "answer": 1
  }, {
      "sentence": "Paul tried to call George but _ was not available.",
      "option1": "Paul",
      "option2": "George",
      "answer": "2"
  }, {
      "sentence": "The fish ate the worm because it was hungry, said _",
      "option1": "the fish",
      "option2": "the worm"
  }]  # blank at the end: falls back to full scoring; unlabelled
  path = tmp_path / "wsc.jsonl"
  path.write_text("\n".join(json.dumps(p) for p in problems) + "\n")
  sc = scorer(params, tok)
  partial = Z.build("winograd", tok, source=str(path)).evaluate(sc)
  full = Z.build("winograd", tok, source=str(path), winograd_scoring="full").evaluate(sc)
  exp_partial, exp_full = [], []
  for p in problems:
    before, after = p["sentence"].split("_")
    whole = [ref_mean(params, [tok.start_id], tok.encode(before + p[f"option{k}"] + after)) for k in (1, 2)]
    exp_full.append(whole)
    exp_partial.append(
        [ref_mean(params, [tok.start_id] + tok.encode(before + p[f"option{k}"]), tok.encode(after))
         for k in (1, 2)] if after else whole)
  np.testing.assert_allclose(partial["scores"], exp_partial, atol=ATOL, rtol=0)
  np.testing.assert_allclose(full["scores"], exp_full, atol=ATOL, rtol=0)
  np.testing.assert_array_equal(partial["labels"], [0, 1, -1])
  assert partial["num_examples"] == 2
  assert partial["score"] == pytest.approx(np.mean(np.argmax(exp_partial, -1)[:2] == [0, 1]))

  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"sentence": "_ and _", "option1": "a", "option2": "b", "answer": 1}) + "\n")
  with pytest.raises(ValueError, match="bad.jsonl:1: .*exactly one '_'"):
    Z.read_winograd(str(bad))


# ----------------------------------------------------------------------------
# The pretraining curve (Figure 2 right).


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
  from gpt1_jax.checkpoint import Checkpoints, model_config_to_dict
  run = tmp_path_factory.mktemp("run")
  ckpts = Checkpoints(str(run / "checkpoints"), async_save=False)
  for step, seed in ((100, 1), (200, 2)):
    p = random_params(seed)
    ckpts.save(step, {"step": step, "params": p, "opt_state": {}}, {"model": model_config_to_dict(CFG)})
  ckpts.close()
  return str(run)


def check_png(path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  image = plt.imread(path)
  assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
  assert image[..., :3].std() > 0.01  # not a blank canvas


def test_curve_scores_every_checkpoint_and_writes_json_table_and_png(fake_run, tok, tmp_path, capsys, monkeypatch):
  out = tmp_path / "curve"
  got = Z.curve(fake_run, ["sst2", "cola"], out_dir=str(out), max_examples=6, batch_size=4, tokenizer=tok,
                progress=False)
  with open(out / Z.CURVE_JSON) as f:
    saved = json.load(f)
  assert sorted(saved["scores"]) == ["100", "200"] and saved["metric"] == {"sst2": "accuracy", "cola": "mcc"}
  assert saved["scores"] == got["scores"]
  # Each point is the single-checkpoint evaluation of that step.
  from gpt1_jax.checkpoint import load_params
  for step in (100, 200):
    cfg, p = load_params(fake_run, step)
    sc = Z.Scorer(cfg, p, batch_size=4, tokenizer=tok, progress=False)
    for task in ("sst2", "cola"):
      direct = Z.build(task, tok, max_examples=6).evaluate(sc)["score"]
      assert saved["scores"][str(step)][task] == pytest.approx(direct)
  table = capsys.readouterr().out
  assert "| step | sst2 (accuracy) | cola (mcc) |" in table and "| 200 |" in table
  check_png(out / Z.CURVE_PNG)

  # A second call reuses the saved scores (no checkpoint is read again) and keeps the other task's column.
  import gpt1_jax.checkpoint as ckpt
  monkeypatch.setattr(ckpt, "load_params", lambda *a, **k: pytest.fail("re-evaluated a saved step"))
  again = Z.curve(fake_run, ["cola"], out_dir=str(out), max_examples=6, batch_size=4, tokenizer=tok, progress=False)
  assert again["scores"] == {s: {"cola": row["cola"]} for s, row in got["scores"].items()}
  assert json.loads((out / Z.CURVE_JSON).read_text())["scores"] == got["scores"]


def test_curve_command_line(fake_run, tmp_path, capsys):
  from absl import flags
  from absl.testing import flagsaver
  if "run" not in flags.FLAGS:
    Z.define_flags()  # as `python -m gpt1_jax.zeroshot` does
  out = tmp_path / "cli"
  argv = [
      "zeroshot", f"--run={fake_run}", "--tasks=sst2,cola", f"--curve_out={out}", "--max_examples=4", "--batch_size=4",
      "--noprogress"
  ]
  with flagsaver.flagsaver():
    flags.FLAGS(argv)
    Z.main(argv[:1])
  assert "| step | sst2 (accuracy) | cola (mcc) |" in capsys.readouterr().out
  assert sorted(json.loads((out / Z.CURVE_JSON).read_text())["scores"]) == ["100", "200"]
  check_png(out / Z.CURVE_PNG)


def test_predictions_out_has_one_auditable_row_per_example(fake_run, tmp_path, capsys):
  from absl import flags
  from absl.testing import flagsaver
  if "run" not in flags.FLAGS:
    Z.define_flags()
  out = tmp_path / "preds.jsonl"
  argv = [
      "zeroshot", f"--checkpoint={fake_run}", "--tasks=sst2", "--max_examples=5", "--batch_size=4", "--noprogress",
      f"--predictions_out={out}"
  ]
  with flagsaver.flagsaver():
    flags.FLAGS(argv)
    Z.main(argv[:1])
  printed = capsys.readouterr().out
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  dev = os.path.join(REPO, "data", "sst2", "dev.tsv")
  with open(dev, encoding="utf-8") as f:
    lines = f.read().splitlines()
  assert [r["position"] for r in rows] == list(range(5))
  for r in rows:
    path, lineno = r["source"].rsplit(":", 1)
    assert os.path.samefile(path, dev)
    assert r["label"] == int(lines[int(lineno) - 1].split("\t")[1])  # the row names its source line
    assert r["prediction"] == int(np.argmax(r["scores"])) and len(r["scores"]) == 2
  accuracy = np.mean([r["prediction"] == r["label"] for r in rows])
  assert f"accuracy {accuracy:.4f}" in printed or f"{accuracy:.4f}" in printed
