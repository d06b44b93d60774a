"""Fine-tuning tasks: readers, input transformations, metrics (CPU, fast).

Transformations are checked token for token against hand-written sequences
with a stand-in tokenizer whose ids are known ("7" -> 7); readers against the
shipped samples, the real files in ../shared/data when present, and synthetic
files in the official formats; tfds mappings through tfds.testing.mock_data;
metrics against scikit-learn and SciPy.
"""

import json
import logging
import os
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from gpt1_jax import metrics as M
from gpt1_jax import task_types
from gpt1_jax.data import pipeline, tasks as T, transforms as X

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
S, D, C = 40478, 40479, 40480


class StandInTokenizer:
  """The GPT1Tokenizer API over whitespace words: a number is its own id, other words get ids from 1000 up."""

  start_id, delimiter_id, classify_id, vocab_size, pad_id = S, D, C, 40481, 0

  def __init__(self):
    self.words = {}
    self.batches = []  # every encode_batch call, to check memoisation

  def _id(self, word):
    return int(word) if word.isdigit() else self.words.setdefault(word, 1000 + len(self.words))

  def encode(self, text):
    return [self._id(w) for w in text.split()]

  def encode_batch(self, texts):
    self.batches.append(list(texts))
    return [self.encode(t) for t in texts]

  def decode(self, ids):
    return " ".join(map(str, ids))


@pytest.fixture
def tok():
  return StandInTokenizer()


def nums(a, b):
  return " ".join(str(i) for i in range(a, b + 1))


def ex(*texts, label=0, choices=None):
  return T.Example(tuple(texts), label, None if choices is None else tuple(choices))


def rows(arrays, i, k=0):
  """The real tokens of sequence k of example i."""
  return arrays["input_ids"][i, k][arrays["attention_mask"][i, k] == 1].tolist()


# ----------------------------------------------------------------------------
# Transformations, token for token.


def test_classification_is_start_text_classify_padded(tok):
  out = X.encode_examples(T.get_task("sst2"), [ex("5 6 7")], tok, max_len=8)
  assert out["input_ids"].tolist() == [[[S, 5, 6, 7, C, 0, 0, 0]]]
  assert out["attention_mask"].tolist() == [[[1, 1, 1, 1, 1, 0, 0, 0]]]
  assert out["cls_index"].tolist() == [[4]]
  assert out["choice_mask"].tolist() == [[1.0]]
  assert {
      k: v.dtype.name for k, v in out.items()
  } == {
      "input_ids": "int32",
      "attention_mask": "int32",
      "cls_index": "int32",
      "choice_mask": "float32",
      "label": "int32",
      "example_index": "int32"
  }


def test_classification_truncates_text_end_keeps_specials(tok):
  out = X.encode_examples(T.get_task("cola"), [ex(nums(1, 20))], tok, max_len=8)
  assert out["input_ids"].tolist() == [[[S, 1, 2, 3, 4, 5, 6, C]]]
  assert out["cls_index"].tolist() == [[7]]


def test_entailment_is_start_premise_delim_hypothesis_classify(tok):
  out = X.encode_examples(T.get_task("rte"), [ex("1 2 3", "4 5")], tok, max_len=10)
  assert out["input_ids"][0, 0].tolist() == [S, 1, 2, 3, D, 4, 5, C, 0, 0]
  assert out["cls_index"].tolist() == [[7]]


def test_entailment_long_premise_is_cut_from_its_end_hypothesis_kept_whole(tok):
  out = X.encode_examples(T.get_task("mnli"), [ex(nums(1, 20), "21 22 23")], tok, max_len=12)
  assert rows(out, 0) == [S, 1, 2, 3, 4, 5, 6, D, 21, 22, 23, C]
  assert out["cls_index"].tolist() == [[11]]


def test_entailment_overlong_hypothesis_keeps_at_most_half_the_budget(tok):
  # budget 13 - 3 = 10; the hypothesis would leave nothing, so it keeps max(10 - 10, 10 // 2) = 5.
  out = X.encode_examples(T.get_task("rte"), [ex(nums(1, 10), nums(11, 20))], tok, max_len=13)
  assert rows(out, 0) == [S, 1, 2, 3, 4, 5, D, 11, 12, 13, 14, 15, C]


def test_similarity_has_both_orderings(tok):
  out = X.encode_examples(T.get_task("mrpc"), [ex("1 2", "3 4 5", label=1)], tok, max_len=8)
  assert out["input_ids"][0].tolist() == [[S, 1, 2, D, 3, 4, 5, C], [S, 3, 4, 5, D, 1, 2, C]]
  assert out["cls_index"].tolist() == [[7, 7]]
  assert out["choice_mask"].tolist() == [[1.0, 1.0]]


def _bert_truncate_pair(a, b, budget):
  """BERT's truncate_seq_pair, the independent reference for balanced trimming."""
  a, b = list(a), list(b)
  while len(a) + len(b) > budget:
    (a if len(a) > len(b) else b).pop()
  return a, b


@pytest.mark.parametrize("la,lb,max_len", [(20, 3, 12), (3, 20, 12), (20, 20, 12), (20, 20, 13), (7, 9, 12), (6, 6, 15),
                                           (1, 30, 8)])
def test_similarity_truncation_is_balanced_and_shared_by_both_orderings(tok, la, lb, max_len):
  a, b = list(range(1, la + 1)), list(range(101, 101 + lb))
  out = X.encode_examples(T.get_task("qqp"), [ex(" ".join(map(str, a)), " ".join(map(str, b)))], tok, max_len=max_len)
  ra, rb = _bert_truncate_pair(a, b, max_len - 3)
  assert rows(out, 0, 0) == [S] + ra + [D] + rb + [C]
  assert rows(out, 0, 1) == [S] + rb + [D] + ra + [C]


def test_regression_is_similarity_with_float_labels(tok):
  out = X.encode_examples(T.get_task("stsb"), [ex("1", "2", label=3.8), ex("3", "4", label=None)], tok, max_len=8)
  assert out["input_ids"][0, :, :5].tolist() == [[S, 1, D, 2, C], [S, 2, D, 1, C]]
  assert out["label"].dtype == np.float32
  assert out["label"][0] == np.float32(3.8) and np.isnan(out["label"][1])


def test_multiple_choice_one_sequence_per_candidate_and_choice_mask(tok):
  out = X.encode_examples(T.get_task("race"), [
      ex("1 2 3", "4", label=2, choices=["5", "6 7", "8"]),
      ex("9", "10", label=0, choices=["11", "12", "13", "14"])
  ], tok, max_len=10)
  assert out["input_ids"].shape == (2, 4, 10)
  assert rows(out, 0, 0) == [S, 1, 2, 3, 4, D, 5, C]
  assert rows(out, 0, 1) == [S, 1, 2, 3, 4, D, 6, 7, C]
  assert rows(out, 0, 2) == [S, 1, 2, 3, 4, D, 8, C]
  assert out["input_ids"][0, 3].tolist() == [0] * 10 and out["attention_mask"][0, 3].sum() == 0
  assert out["choice_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
  assert out["cls_index"].tolist() == [[7, 8, 7, 0], [5, 5, 5, 5]]
  assert out["label"].tolist() == [2, 0]


def test_multiple_choice_long_context_loses_its_front_same_for_every_candidate(tok):
  # context+question = 1..22 (22 tokens); budget 12 - 3 = 9; longest answer 3 -> 6 context tokens, the last ones.
  out = X.encode_examples(T.get_task("race_high"), [ex(nums(1, 20), "21 22", label=1, choices=["30", "31 32 33"])], tok,
                          max_len=12)
  assert rows(out, 0, 0) == [S, 17, 18, 19, 20, 21, 22, D, 30, C]
  assert rows(out, 0, 1) == [S, 17, 18, 19, 20, 21, 22, D, 31, 32, 33, C]
  assert out["cls_index"][0, :2].tolist() == [9, 11]


def test_story_cloze_has_two_candidates(tok):
  out = X.encode_examples(T.get_task("story_cloze"), [ex("1 2 3 4", label=1, choices=["5", "6"])], tok, max_len=8)
  assert out["input_ids"][0].tolist() == [[S, 1, 2, 3, 4, D, 5, C], [S, 1, 2, 3, 4, D, 6, C]]


def test_cls_index_points_at_classify_under_padding_for_every_task(tok):
  rng = np.random.default_rng(0)

  def words(n):
    return " ".join(str(w) for w in rng.integers(1, 999, n))

  for task in T.TASKS.values():
    examples = []
    for _ in range(12):
      texts = [words(rng.integers(1, 40)) for _ in task.fields]
      choices = [words(rng.integers(1, 15)) for _ in range(rng.integers(1, task.num_choices + 1))] \
          if task.num_choices else None
      label = 0.5 if task.kind.regression else 0
      examples.append(ex(*texts, label=label, choices=choices))
    out = X.encode_examples(task, examples, tok, max_len=24)
    n, k = len(examples), task.num_sequences
    assert out["input_ids"].shape == (n, k, 24), task.name
    picked = np.take_along_axis(out["input_ids"], out["cls_index"][..., None], axis=-1)[..., 0]
    real = out["choice_mask"] == 1
    assert (picked[real] == C).all(), task.name
    # [c] is the last real token and the first is [s].
    assert (out["attention_mask"].sum(-1)[real] - 1 == out["cls_index"][real]).all(), task.name
    assert (out["input_ids"][..., 0][real] == S).all(), task.name
    assert (out["input_ids"][out["attention_mask"] == 0] == 0).all(), task.name


def test_fit_length_rounds_up_to_multiple_of_8_and_caps(tok):
  train, dev = [ex(nums(1, 5), "1")], [ex(nums(1, 9), "2 3")]  # longest: 3 specials + 11 = 14
  assert X.fit_length(T.get_task("rte"), tok, train, dev) == 16
  assert X.fit_length(T.get_task("rte"), tok, train, dev, cap=12) == 12
  assert X.encode_examples(T.get_task("rte"), dev, tok)["input_ids"].shape == (1, 1, 16)


def test_encode_batch_once_per_field_with_identical_texts_memoised(tok):
  article = nums(1, 30)
  examples = [ex(article, f"q{i}", label=0, choices=["a", "b", "c", "d"]) for i in range(5)]
  memo = X.memoized(tok)
  X.encode_examples(T.get_task("race"), examples, memo, max_len=64)
  assert tok.batches == [[article], [f"q{i}" for i in range(5)], ["a", "b", "c", "d"]]
  X.encode_examples(T.get_task("race"), examples, memo, max_len=32)  # all cached: no further calls
  assert len(tok.batches) == 3


def test_unlabelled_examples_get_minus_one_and_index(tok):
  out = X.encode_examples(T.get_task("sst2"), [ex("1", label=None), ex("2", label=1)], tok, max_len=8)
  assert out["label"].tolist() == [-1, 1] and out["example_index"].tolist() == [0, 1]


def test_encode_rejects_examples_that_do_not_fit_the_task(tok):
  with pytest.raises(ValueError, match="fields"):
    X.encode_examples(T.get_task("rte"), [ex("1")], tok, max_len=8)
  with pytest.raises(ValueError, match="candidates"):
    X.encode_examples(T.get_task("story_cloze"), [ex("1", choices=["2", "3", "4"])], tok, max_len=8)
  with pytest.raises(ValueError, match="too short"):
    X.encode_examples(T.get_task("rte"), [ex("1", "2")], tok, max_len=4)


# ----------------------------------------------------------------------------
# Registry.


def test_registry_has_every_task_of_the_paper():
  assert set(T.TASKS) == {
      "sst2", "cola", "mnli", "snli", "qnli", "rte", "scitail", "mrpc", "qqp", "stsb", "race", "race_middle",
      "race_high", "story_cloze"
  }
  from gpt1_jax.model import TASK_TYPES
  assert T.TASK_TYPES == TASK_TYPES
  assert T.get_task("cola").metrics == ("accuracy", "mcc")
  assert T.get_task("race").num_sequences == 4 and T.get_task("story_cloze").num_sequences == 2
  assert T.get_task("mrpc").num_sequences == 2 and T.get_task("mnli").num_labels == 3
  assert T.get_task("stsb").labels is None and T.get_task("stsb").num_labels == 1
  assert "validation_matched" in T.get_task("mnli").splits


def test_unknown_task_and_split_errors_list_the_valid_ones():
  with pytest.raises(ValueError, match="valid tasks: sst2, cola"):
    T.get_task("sst-5")
  with pytest.raises(ValueError, match="validation_matched"):
    T.load_split("mnli", "validation", str(REPO / "data"))


def test_names_resolve_once_at_the_documented_entry_point():
  rte = T.get_task("rte")
  assert T.resolve("rte") is rte and T.resolve(rte) is rte
  assert T.load_split("rte", "validation", str(REPO / "data/rte")).task is rte  # load_split takes either


# ----------------------------------------------------------------------------
# Task types: what each decides.


def test_absent_candidates_get_no_probability():
  """One rule for training (``choice_mask``) and the export (an all-zero attention mask)."""
  logits = np.array([[0.5, 2.0, -1.0], [3.0, 1.0, 0.0]], np.float32)
  present = np.array([[True, False, True], [False, False, False]])  # row 2: eval padding, no candidate
  lowest = np.finfo(np.float32).min
  for xp in (np, jnp):
    out = np.asarray(task_types.get("multiple_choice").mask_absent(xp.asarray(logits), xp.asarray(present), xp))
    assert out.tolist() == [[0.5, lowest, -1.0], [lowest] * 3]
    p = np.exp(out[0] - out[0].max())
    assert p[1] == 0.0 and out[0].argmax() == 0  # the absent one is never picked over a real one
    for other in ("classification", "entailment", "similarity", "regression"):  # one sequence's logits: unchanged
      kept = task_types.get(other).mask_absent(xp.asarray(logits), xp.asarray(present), xp)
      assert np.asarray(kept).tolist() == logits.tolist()


def test_each_type_is_one_layout_with_its_sequences_and_shortest_input(tok):
  layouts = {name: t.layout for name, t in task_types.TYPES.items()}
  assert layouts == {
      "classification": "single",
      "entailment": "pair",
      "similarity": "both_orders",
      "multiple_choice": "candidates",
      "regression": "both_orders"
  }
  assert [n for n, t in task_types.TYPES.items() if t.multiple_choice] == ["multiple_choice"]
  for task in T.TASKS.values():
    kind = task.kind
    choices = [[9]] * task.num_choices if kind.multiple_choice else None
    seqs = X.transform(task, tuple([7, 8] for _ in task.fields), choices, None, 1, 2, 3)
    assert len(seqs) == task.num_sequences, task.name
    # The shortest input keeps the specials and one token a side; one less cannot be encoded.
    examples = [ex(*["5"] * len(task.fields), choices=["6"] * task.num_choices if kind.multiple_choice else None)]
    X.encode_examples(task, examples, tok, max_len=kind.min_length)
    with pytest.raises(ValueError, match="too short"):
      X.encode_examples(task, examples, tok, max_len=kind.min_length - 1)


# ----------------------------------------------------------------------------
# Readers: shipped samples and real files.


def test_shipped_sst2():
  folder = str(REPO / "data/sst2")
  train, dev = T.load_split("sst2", "train", folder), T.load_split("sst2", "dev", folder)
  assert (len(train), len(dev)) == (1000, 872)
  assert sorted(np.bincount([e.label for e in train]).tolist()) == [500, 500]
  assert train[0].source.endswith("train.tsv:2")  # the header is line 1
  assert dev.split == "validation"


def test_shipped_cola_has_no_header():
  train = T.load_split("cola", "train", str(REPO / "data/cola"))
  assert len(train) == 200 and train[0].source.endswith("train.tsv:1")
  assert train[0].texts == ("Our friends won't buy this analysis, let alone the next one we propose.",)
  assert set(e.label for e in train) == {0, 1}


def test_shipped_rte_labels_follow_tfds_order():
  dev = T.load_split("rte", "validation", str(REPO / "data/rte"))
  assert len(dev) == 120
  assert dev[0].label == 1 and dev[1].label == 0  # not_entailment, entailment
  assert '"If someone snaps' in dev[3].texts[0]  # a literal quote survives (quoting disabled)


def test_shipped_stsb_scores():
  train = T.load_split("stsb", "train", str(REPO / "data/stsb"))
  assert len(train) == 200 and train[0].label == 5.0 and train[1].label == 3.8
  assert all(0 <= e.label <= 5 for e in train)


@pytest.mark.skipif(not (SHARED / "MRPC").is_dir(), reason="../shared/data/MRPC absent (fresh clone)")
def test_real_mrpc_with_bom():
  train = T.load_split("mrpc", "train", str(SHARED / "MRPC"))
  dev = T.load_split("mrpc", "validation", str(SHARED / "MRPC"))
  assert (len(train), len(dev)) == (3668, 408)
  assert dev[0].texts[1].startswith('"The foodservice pie business')


@pytest.mark.skipif(not (SHARED / "StoryCloze").is_dir(), reason="../shared/data/StoryCloze absent (fresh clone)")
def test_real_story_cloze_split_matches_the_original_code():
  from sklearn.model_selection import train_test_split
  folder = str(SHARED / "StoryCloze")
  train, val = T.load_split("story_cloze", "train", folder), T.load_split("story_cloze", "validation", folder)
  assert (len(train), len(val)) == (1497, 374)
  story_cloze = T.get_task("story_cloze")
  everything = T.read_file(story_cloze, "test", T.find_file(story_cloze, "validation", folder)).examples
  ref_train, ref_val = train_test_split(everything, test_size=374, random_state=T.ROCSTORIES_SEED)
  assert train.examples == ref_train and val.examples == ref_val
  assert all(len(e.choices) == 2 and e.label in (0, 1) for e in train)


# ----------------------------------------------------------------------------
# Readers: synthetic files in the official formats.


def write(path, text, encoding="utf-8"):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
  return str(path)


def test_mrpc_format_with_bom_and_unlabelled_test(tmp_path):
  write(
      tmp_path / "train.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
      "1\t702876\t702977\tHe said \"yes\".\tHe agreed.\n0\t1\t2\tA cat.\tA dog.\n")
  write(tmp_path / "test.tsv", "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tOne.\tTwo.\n")
  train = T.load_split("mrpc", "train", str(tmp_path))
  assert [e.texts for e in train] == [('He said "yes".', "He agreed."), ("A cat.", "A dog.")]
  assert [e.label for e in train] == [1, 0]
  test = T.load_split("mrpc", "test", str(tmp_path))
  assert test[0].label is None and test[0].id == "0"


def test_qqp_format(tmp_path):
  write(
      tmp_path / "train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
      "133273\t213221\t213222\tHow is life?\tHow are you?\t0\n7\t1\t2\tWhy?\tWhy not?\t1\n")
  write(tmp_path / "test.tsv", "id\tquestion1\tquestion2\n0\tA?\tB?\n")
  train = T.load_split("qqp", "train", str(tmp_path))
  assert [(e.id, e.label) for e in train] == [("133273", 0), ("7", 1)]
  assert T.load_split("qqp", "test", str(tmp_path))[0].texts == ("A?", "B?")


def test_qnli_format(tmp_path):
  write(tmp_path / "dev.tsv", "index\tquestion\tsentence\tlabel\n0\tWhat?\tThis.\tnot_entailment\n")
  dev = T.load_split("qnli", "dev", str(tmp_path))
  assert dev[0].texts == ("What?", "This.") and dev[0].label == 1


MNLI_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
               "sentence2_parse\tsentence1\tsentence2")


def test_mnli_format_matched_mismatched_and_test(tmp_path):
  write(
      tmp_path / "train.tsv", MNLI_HEADER + "\tlabel1\tgold_label\n"
      "0\t31193\t31193n\tgov\t( a )\t( b )\t(S a)\t(S b)\tConceptually cream.\tProduct and geography.\t"
      "neutral\tneutral\n")
  write(
      tmp_path / "dev_matched.tsv", MNLI_HEADER + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
      "0\t1\t1e\tfic\tx\tx\tx\tx\tThe man.\tA man.\tentailment\tentailment\tentailment\tneutral\tentailment\t"
      "entailment\n")
  write(tmp_path / "dev_mismatched.tsv", MNLI_HEADER + "\tlabel1\tgold_label\n"
        "5\t1\t1c\tfic\tx\tx\tx\tx\tYes.\tNo.\tcontradiction\tcontradiction\n")
  write(tmp_path / "test_matched.tsv", MNLI_HEADER + "\n9\t1\t1\tfic\tx\tx\tx\tx\tP.\tH.\n")
  assert T.load_split("mnli", "train", str(tmp_path))[0].label == 1
  assert T.load_split("mnli", "dev_matched", str(tmp_path))[0].label == 0
  assert T.load_split("mnli", "validation_mismatched", str(tmp_path))[0].label == 2
  test = T.load_split("mnli", "test_matched", str(tmp_path))
  assert test[0].label is None and test[0].id == "9" and test[0].texts == ("P.", "H.")


def test_snli_original_format_excludes_no_gold_label_with_a_log_line(tmp_path, caplog):
  header = ("gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\t"
            "sentence1\tsentence2\tcaptionID\tpairID\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\n")
  row = "{}\tx\tx\tx\tx\tA person on a horse.\tA person is outdoors.\tc\tp{}\tneutral\t\t\t\t\n"
  write(tmp_path / "snli_1.0_test.txt",
        header + row.format("entailment", 1) + row.format("-", 2) + row.format("contradiction", 3))
  with caplog.at_level(logging.INFO, logger="gpt1_jax.data.tasks"):
    test = T.load_split("snli", "test", str(tmp_path))
  assert [(e.id, e.label) for e in test] == [("p1", 0), ("p3", 2)]
  assert test.num_no_gold == 1 and test.num_skipped == 0
  assert "excluded 1 example(s) without a gold label" in caplog.text


def test_scitail_headerless_tsv_format(tmp_path):
  write(tmp_path / "scitail_1.0_train.tsv", "Premise one.\tHypothesis one.\tentails\nP2.\tH2.\tneutral\n")
  train = T.load_split("scitail", "train", str(tmp_path))
  assert [(e.texts, e.label) for e in train] == [(("Premise one.", "Hypothesis one."), 0), (("P2.", "H2."), 1)]
  assert train[0].source.endswith(":1")


def test_glue_test_files_without_labels(tmp_path):
  write(tmp_path / "sst2/test.tsv", "index\tsentence\n0\tuneasy mishmash .\n1\tgood .\n")
  write(tmp_path / "cola/test.tsv", "index\tsentence\n0\tBill whistled past the house.\n")
  write(
      tmp_path / "stsb/test.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t"
      "sentence2\n0\tmain-news\tMSRvid\t2012test\t0024\tnone\tnone\tA girl.\tA boy.\n")
  assert [e.label for e in T.load_split("sst2", "test", str(tmp_path / "sst2"))] == [None, None]
  assert T.load_split("cola", "test", str(tmp_path / "cola"))[0].texts == ("Bill whistled past the house.",)
  assert T.load_split("stsb", "test", str(tmp_path / "stsb"))[0].label is None


def test_labelled_split_without_label_column_is_an_error(tmp_path):
  write(tmp_path / "dev.tsv", "index\tsentence\n0\tgood .\n")
  with pytest.raises(ValueError, match=r"dev.tsv:1: missing column 'label'"):
    T.load_split("sst2", "validation", str(tmp_path))


STORY_HEADER = ("InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
                "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding\n")


def test_story_cloze_csv_format(tmp_path):
  rows_ = [
      f'id{i},S{i}a.,"S{i}b, with a comma.",S{i}c.,S{i}d.,End {i} one.,End {i} two.,{1 + i % 2}\n' for i in range(10)
  ]
  write(tmp_path / "cloze_test_val__spring2016.csv", STORY_HEADER + "".join(rows_))
  write(tmp_path / "cloze_test_test__spring2016.csv", STORY_HEADER + rows_[3])
  train, val = T.load_split("story_cloze", "train", str(tmp_path)), T.load_split("story_cloze", "dev", str(tmp_path))
  assert (len(train), len(val)) == (8, 2)
  assert {e.id for e in train} | {e.id for e in val} == {f"id{i}" for i in range(10)}
  test = T.load_split("story_cloze", "test", str(tmp_path))
  assert test[0].texts == ("S3a. S3b, with a comma. S3c. S3d.",)
  assert test[0].choices == ("End 3 one.", "End 3 two.") and test[0].label == 1
  assert test[0].source.endswith("cloze_test_test__spring2016.csv:2")


def race_record(i, questions=2, answers=None):
  return {
      "id": f"{i}.txt",
      "article": f"Article {i} text.",
      "questions": [f"Question {q}?" for q in range(questions)],
      "options": [[f"opt {q}{c}" for c in "ABCD"] for q in range(questions)],
      "answers": answers or ["ABCD"[q % 4] for q in range(questions)]
  }


def test_race_json_folders_several_questions_per_article(tmp_path):
  for level, n in (("middle", 2), ("high", 1)):
    for i in range(n):
      write(tmp_path / f"RACE/dev/{level}/{i + 1}.txt", json.dumps(race_record(i, questions=i + 2)))
  middle = T.load_split("race_middle", "dev", str(tmp_path))
  assert [(e.id, e.label) for e in middle] == [("0.txt-0", 0), ("0.txt-1", 1), ("1.txt-0", 0), ("1.txt-1", 1),
                                               ("1.txt-2", 2)]
  assert middle[0].texts == ("Article 0 text.", "Question 0?") and middle[0].choices == ("opt 0A", "opt 0B", "opt 0C",
                                                                                         "opt 0D")
  assert len(T.load_split("race", "validation", str(tmp_path))) == 7
  assert len(T.load_split("race_high", "validation", str(tmp_path / "RACE"))) == 2
  assert len(T.load_split("race", "validation", str(tmp_path / "RACE/dev"))) == 7


# ----------------------------------------------------------------------------
# Every kind of malformed input: an error naming file and line, or a counted skip.

SST2_OK = "sentence\tlabel\ngood .\t1\n"
RTE_OK = "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n"
STSB_OK = ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
           "0\tg\tf\ty\to\tn\tn\tA.\tB.\t4.2\n")
# kind -> (task, file, content: one good row then the bad one, the bad line, the message)
MALFORMED = {
    "missing column": ("sst2", "dev.tsv", SST2_OK + "no label here\n", 3, "missing column"),
    "too many columns": ("sst2", "dev.tsv", SST2_OK + "a\t1\tb\n", 3, "too many columns"),
    "bad label": ("sst2", "dev.tsv", SST2_OK + "bad .\tpos\n", 3, "bad label 'pos'"),
    "out-of-range label": ("sst2", "dev.tsv", SST2_OK + "bad .\t2\n", 3, "label 2 out of range"),
    "bad label name": ("rte", "dev.tsv", RTE_OK + "1\tA.\tB.\tentails\n", 3, "bad label 'entails'"),
    "out-of-range score": ("stsb", "dev.tsv", STSB_OK + "1\tg\tf\ty\to\tn\tn\tA.\tB.\t5.5\n", 3, "out of range"),
    "bad score": ("stsb", "dev.tsv", STSB_OK + "1\tg\tf\ty\to\tn\tn\tA.\tB.\tfive\n", 3, "bad label 'five'"),
    "empty text": ("rte", "dev.tsv", RTE_OK + "1\tA.\t \tentailment\n", 3, "empty text in field 'hypothesis'"),
    "non-UTF-8": ("sst2", "dev.tsv", SST2_OK.encode() + b"caf\xe9 .\t1\n", 3, "not valid UTF-8"),
    "cola wrong column count": ("cola", "dev.tsv", "gj04\t1\t\tFine.\ngj04\t1\tOops.\n", 2, "missing column"),
    "story cloze bad answer": ("story_cloze", "cloze_test_test__spring2016.csv",
                               STORY_HEADER + "i,a,b,c,d,e,f,1\ni,a,b,c,d,e,f,3\n", 3, "out of range"),
    "story cloze missing column": ("story_cloze", "cloze_test_test__spring2016.csv",
                                   STORY_HEADER + "i,a,b,c,d,e,f,1\ni,a,b,c,d,e,f\n", 3, "expected 8 columns"),
    "story cloze non-UTF-8":
        ("story_cloze", "cloze_test_test__spring2016.csv",
         (STORY_HEADER + "i,a,b,c,d,e,f,1\n").encode() + b"i,\xff,b,c,d,e,f,1\n", 3, "not valid UTF-8"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_row_names_file_and_line_or_is_counted_when_skipped(tmp_path, caplog, kind):
  task, name, content, line, message = MALFORMED[kind]
  path = write(tmp_path / name, content)
  split = "test" if name.startswith("cloze_test_test") else "validation"
  with pytest.raises(ValueError, match=f"{name}:{line}: .*{message}"):
    T.load_split(task, split, str(tmp_path))
  with caplog.at_level(logging.WARNING, logger="gpt1_jax.data.tasks"):
    data = T.load_split(task, split, str(tmp_path), skip_malformed=True)
  assert data.num_skipped == 1 and len(data) == 1
  assert data.skipped[0].startswith(f"{path}:{line}: ")
  assert "skipped 1 malformed row(s)" in caplog.text


def test_malformed_race_answer_and_json(tmp_path):
  write(tmp_path / "dev/middle/1.txt", json.dumps(race_record(1, answers=["A", "E"])))
  write(tmp_path / "dev/middle/2.txt", "{not json")
  write(tmp_path / "dev/high/3.txt", json.dumps(race_record(3)))
  with pytest.raises(ValueError, match=r"1.txt:1: .*answer 'E' out of range"):
    T.load_split("race", "validation", str(tmp_path))
  data = T.load_split("race", "validation", str(tmp_path), skip_malformed=True)
  assert data.num_skipped == 2 and len(data) == 2  # the article with a bad answer, the broken file
  assert "2.txt:1: not valid JSON" in data.skipped[1]


def test_missing_file_lists_the_expected_names(tmp_path):
  with pytest.raises(ValueError, match=r"none of \['dev_matched.tsv', 'multinli_1.0_dev_matched.txt'\]"):
    T.load_split("mnli", "validation_matched", str(tmp_path))


# ----------------------------------------------------------------------------
# tensorflow-datasets, mocked offline.


@pytest.fixture(scope="module")
def tfds():
  return pytest.importorskip("tensorflow_datasets")


def _generator_dataset(records, signature):
  from gpt1_jax.data import tf
  return tf.data.Dataset.from_generator(lambda: iter(records), output_signature=signature)


def _race_as_dataset(self, split, **kwargs):
  from gpt1_jax.data import tf
  records = [{
      "article": f"Article of {self.name} {split}.",
      "questions": ["Why?", "Who?"],
      "answers": ["B", "D"],
      "options": [["a", "b", "c", "d"], ["e", "f", "g", "h"]],
      "example_id": f"{split}/1.txt"
  }]
  string = tf.TensorSpec([], tf.string)
  return _generator_dataset(
      records, {
          "article": string,
          "questions": tf.TensorSpec([None], tf.string),
          "answers": tf.TensorSpec([None], tf.string),
          "options": tf.TensorSpec([None, None], tf.string),
          "example_id": string
      })


def _story_cloze_as_dataset(self, split, **kwargs):
  from gpt1_jax.data import tf
  records = [{"context": f"Story {i}.", "endings": [f"End {i}a.", f"End {i}b."], "label": 1 + i % 2} for i in range(10)]
  return _generator_dataset(
      records, {
          "context": tf.TensorSpec([], tf.string),
          "endings": tf.TensorSpec([None], tf.string),
          "label": tf.TensorSpec([], tf.int32)
      })


def _check_examples(task, split, data):
  assert len(data) > 0, (task.name, split)
  for e in data:
    assert isinstance(e, T.Example) and len(e.texts) == len(task.fields)
    assert all(isinstance(t, str) and t.strip() for t in e.texts[:1])
    assert e.source.startswith("tfds:")
    # GLUE test sets store -1 (-> None); the mock writes random valid labels there instead.
    if e.label is None:
      assert not task.is_labelled(split)
    elif task.type == "regression":
      assert isinstance(e.label, float) and 0 <= e.label <= 5
    elif task.type == "multiple_choice":
      assert 0 <= e.label < len(e.choices) <= task.num_choices
    else:
      assert isinstance(e.label, int) and 0 <= e.label < len(task.labels)


@pytest.mark.parametrize("name", sorted(T.TASKS))
def test_every_task_through_tfds_mock_data(tfds, name, tok):
  task = T.get_task(name)
  special = {"race": _race_as_dataset, "story_cloze": _story_cloze_as_dataset}
  # Random mock records cannot be valid RACE/Story Cloze records (answer letters, 1-based endings),
  # so those builders are mocked with generated records of the builder's own features.
  as_dataset_fn = next((fn for prefix, fn in special.items() if name.startswith(prefix)), None)
  for split in task.splits:
    with tfds.testing.mock_data(num_examples=6, as_dataset_fn=as_dataset_fn):
      data = T.load_split(task, split, "tfds")
    _check_examples(task, split, data)
  arrays = X.encode_examples(task, data.examples, tok, max_len=32)
  assert arrays["input_ids"].shape == (len(data), task.num_sequences, 32)


def test_tfds_glue_test_label_minus_one_is_unlabelled_and_snli_minus_one_is_excluded(tfds, caplog):
  from gpt1_jax.data import tf

  def nli(self, split, **kwargs):
    records = [{"premise": "P.", "hypothesis": "H.", "label": label, "idx": i} for i, label in enumerate([0, -1, 2])]
    string = tf.TensorSpec([], tf.string)
    return _generator_dataset(records, {
        "premise": string,
        "hypothesis": string,
        "label": tf.TensorSpec([], tf.int64),
        "idx": tf.TensorSpec([], tf.int32)
    })

  with tfds.testing.mock_data(as_dataset_fn=nli), caplog.at_level(logging.INFO, logger="gpt1_jax.data.tasks"):
    snli = T.load_split("snli", "train", "tfds")
    mnli_test = T.load_split("mnli", "test_mismatched", "tfds")
  assert [e.label for e in snli] == [0, 2] and snli.num_no_gold == 1
  assert "excluded 1 example(s) without a gold label" in caplog.text
  assert [e.label for e in mnli_test] == [0, None, 2] and [e.id for e in mnli_test] == ["0", "1", "2"]


def test_tfds_multi_nli_can_stand_in_for_glue_mnli(tfds):
  with tfds.testing.mock_data(num_examples=3):
    data = T.load_tfds(T.get_task("mnli"), "validation_mismatched", dataset="multi_nli")
  assert data.origin == "tfds:multi_nli/validation_mismatched" and len(data) == 3
  _check_examples(T.get_task("mnli"), "validation_mismatched", data)


def test_tfds_story_cloze_without_manual_download_says_so(tfds, tmp_path):
  with pytest.raises(RuntimeError, match="needs a manual download"):
    T.load_split("story_cloze", "validation", f"tfds:{tmp_path}")


# ----------------------------------------------------------------------------
# tf.data: the position is the step.


def test_task_datasets_resume_at_step_and_cover_eval_once(tok):
  data = T.load_split("rte", "validation", str(REPO / "data/rte"))
  arrays = X.encode_examples(T.get_task("rte"), data.examples, tok, max_len=64)
  rows_ = pipeline.Rows(global_batch_size=16)
  full = [b for _, b in zip(range(10), X.task_train_dataset(arrays, rows_, seed=3).as_numpy_iterator())]
  resumed = next(X.task_train_dataset(arrays, rows_, seed=3, start_step=7).as_numpy_iterator())
  assert all((resumed[k] == full[7][k]).all() for k in resumed)
  assert full[0]["input_ids"].shape == (16, 1, 64)
  seen = [
      i for b in X.task_eval_dataset(arrays, rows_).as_numpy_iterator()
      for i, m in zip(b["example_index"], b["example_mask"]) if m
  ]
  assert seen == list(range(len(data)))


# ----------------------------------------------------------------------------
# Metrics against scikit-learn and SciPy.


def test_metrics_equal_sklearn_and_scipy():
  sk = pytest.importorskip("sklearn.metrics")
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  for trial in range(20):
    n, k = int(rng.integers(5, 300)), int(rng.integers(2, 4))
    y, p = rng.integers(0, k, n), rng.integers(0, k, n)
    assert M.accuracy(p, y) == pytest.approx(sk.accuracy_score(y, p))
    assert M.matthews_corrcoef(p, y) == pytest.approx(sk.matthews_corrcoef(y, p), abs=1e-12)
    yb, pb = y % 2, p % 2
    assert M.f1(pb, yb) == pytest.approx(sk.f1_score(yb, pb, zero_division=0.0))
    a, b = rng.normal(size=n), rng.normal(size=n) + 0.3 * np.arange(n) / n
    assert M.pearson(a, b) == pytest.approx(stats.pearsonr(b, a)[0], abs=1e-12)
    ties_a, ties_b = rng.integers(0, 6, n) / 2, rng.integers(0, 6, n) * 1.0  # STS-B-like ties
    assert M.spearman(ties_a, ties_b) == pytest.approx(stats.spearmanr(ties_b, ties_a)[0], abs=1e-12)
  assert M.matthews_corrcoef([1, 1, 1], [1, 0, 1]) == sk.matthews_corrcoef([1, 0, 1], [1, 1, 1]) == 0.0
  assert M.f1([0, 0], [0, 0]) == 0.0


def test_compute_metrics_main_metric_and_masking():
  assert [M.main_metric(T.get_task(t)) for t in ("cola", "mrpc", "qqp", "stsb", "rte", "race")
         ] == ["mcc", "acc_and_f1", "acc_and_f1", "pearson_spearman", "accuracy", "accuracy"]
  logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.9, 0.1]])
  out = M.compute_metrics(T.get_task("mrpc"), logits, [1, 1, 1, -1], mask=[1, 1, 1, 1])  # -1: unlabelled, left out
  assert out["accuracy"] == pytest.approx(2 / 3) and out["f1"] == pytest.approx(0.8)
  assert out["acc_and_f1"] == pytest.approx((2 / 3 + 0.8) / 2) and out["num_examples"] == 3
  assert M.compute_metrics(T.get_task("sst2"), [1, 0, 1], [1, 1, 1], mask=[1, 0, 0])["accuracy"] == 1.0
  sts = M.compute_metrics(T.get_task("stsb"), [1.0, 2.0, 3.0, 9.0], [1.5, 2.5, 2.9, np.nan])
  assert sts["pearson"] == pytest.approx(np.corrcoef([1, 2, 3], [1.5, 2.5, 2.9])[0, 1]) and sts["spearman"] == 1.0
  assert set(M.compute_metrics(T.get_task("cola"), [0, 1], [0, 1])) == {"accuracy", "mcc", "num_examples"}


def test_glue_prediction_files(tmp_path):

  def read(path):
    return pathlib.Path(path).read_text().splitlines()

  assert os.path.basename(M.write_glue_predictions(T.get_task("sst2"), [1, 0], str(tmp_path))) == "SST-2.tsv"
  assert read(tmp_path / "SST-2.tsv") == ["index\tprediction", "0\t1", "1\t0"]
  rte = M.write_glue_predictions(T.get_task("rte"), np.array([[2.0, 1.0], [0.0, 3.0]]), str(tmp_path), ids=["7", "8"])
  assert read(rte) == ["index\tprediction", "7\tentailment", "8\tnot_entailment"]
  m = M.write_glue_predictions(T.get_task("mnli"), [0, 1, 2], str(tmp_path), split="test_matched")
  mm = M.write_glue_predictions(T.get_task("mnli"), [2], str(tmp_path), split="test_mismatched")
  assert (os.path.basename(m), os.path.basename(mm)) == ("MNLI-m.tsv", "MNLI-mm.tsv")
  assert read(m)[1:] == ["0\tentailment", "1\tneutral", "2\tcontradiction"]
  assert read(M.write_glue_predictions(T.get_task("stsb"), [5.7, -0.2, 2.345],
                                       str(tmp_path)))[1:] == ["0\t5.000", "1\t0.000", "2\t2.345"]
  assert [M.glue_filename(T.get_task(t)) for t in ("cola", "mrpc", "qqp", "qnli", "stsb")
         ] == ["CoLA.tsv", "MRPC.tsv", "QQP.tsv", "QNLI.tsv", "STS-B.tsv"]
  assert read(M.write_glue_predictions(T.get_task("cola"), [1], str(tmp_path)))[1] == "0\t1"
  with pytest.raises(ValueError, match="test_matched"):
    M.write_glue_predictions(T.get_task("mnli"), [0], str(tmp_path))


# ----------------------------------------------------------------------------
# The real tokenizer, once it imports.


def test_real_tokenizer_transformations():
  tokenizer = pytest.importorskip("gpt1_jax.tokenizer")
  tok = tokenizer.GPT1Tokenizer()
  assert (tok.start_id, tok.delimiter_id, tok.classify_id, tok.pad_id) == (S, D, C, 0)
  data = T.load_split("rte", "validation", str(REPO / "data/rte"))
  out = X.encode_examples(T.get_task("rte"), data.examples, tok, max_len=128)
  p, h = data[1].texts
  assert rows(out, 1) == [S] + tok.encode(p) + [D] + tok.encode(h) + [C]
  picked = np.take_along_axis(out["input_ids"], out["cls_index"][..., None], axis=-1)
  assert (picked == C).all()
  assert (out["input_ids"][..., :-1] < tok.vocab_size).all()


def test_truncation_counts_examples_and_tokens_cut(tok):
  # Entailment at max_len 10: 3 specials + 7 tokens of text; lengths 4+2, 6+4, 9+5 -> 0, 3 and 7 tokens over.
  examples = [ex(nums(1, 4), nums(1, 2)), ex(nums(1, 6), nums(1, 4)), ex(nums(1, 9), nums(1, 5))]
  t = X.truncation(T.get_task("rte"), examples, tok, 10)
  assert t == {"examples": 3, "truncated": 2, "mean_tokens_cut": 5.0, "max_tokens_cut": 7}
  encoded = X.encode_examples(T.get_task("rte"), examples, tok, 10)
  assert [int(m.sum()) for m in encoded["attention_mask"][:, 0]] == [9, 10, 10]  # the two counted ones are cut
  assert X.truncation(T.get_task("sst2"), [ex(nums(1, 3))], tok, 10)["truncated"] == 0
