"""Every task type trains a few steps and evaluates end to end (real rows, synthetic files, tfds mocks)."""

import csv
import json
import os
import re

import numpy as np
import pytest

from conftest import REPO, load_config, micro_model
from gpt1_jax import loop

pytestmark = pytest.mark.slow


def story_cloze_dir(tmp_path):
  rng = np.random.RandomState(0)
  words = "the a man woman dog went home happy sad store bought ran saw cat".split()
  sent = lambda: " ".join(rng.choice(words, 6)).capitalize() + "."
  path = tmp_path / "cloze_test_val__spring2016.csv"
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow([
        "InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
        "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"
    ])
    for i in range(60):
      w.writerow([f"id{i}"] + [sent() for _ in range(6)] + [int(rng.randint(1, 3))])
  return str(tmp_path)


CASES = {
    "cola": ("classification", lambda tmp: os.path.join(REPO, "data", "cola"), "mcc"),
    "rte": ("entailment", lambda tmp: os.path.join(REPO, "data", "rte"), "accuracy"),
    "stsb": ("regression", lambda tmp: os.path.join(REPO, "data", "stsb"), "pearson"),
    "story_cloze": ("multiple_choice", story_cloze_dir, "accuracy"),
    "mrpc": ("similarity", lambda tmp: "tfds", "f1"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_task_trains_and_evaluates(name, tmp_path, caplog):
  kind, source, metric = CASES[name]
  c = micro_model(load_config("finetune", f"{name}_tiny"))
  c.task.source = source(tmp_path)
  c.task.max_train_examples = 16
  c.train.update(num_epochs=1.0, batch_size=8)
  c.eval.batch_size = 16
  c.log.update(every_steps=1, measure_peak=False, peak_flops_per_device=1e12)
  c.mesh.num_devices = 2
  wd = str(tmp_path / "wd")
  if source(tmp_path) == "tfds":
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=24):
      result = loop.train_and_evaluate(c, wd)
  else:
    result = loop.train_and_evaluate(c, wd)
  assert result["step"] == 2
  if name == "rte":  # RTE's pairs are longer than the micro model's 32 positions: it must say so
    assert re.search(r"rte train: \d+ of 16 examples are longer than 32 tokens and were truncated", caplog.text)
  assert f"eval/{metric}" in result and np.isfinite(result[f"eval/{metric}"])
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  assert all(np.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
  assert os.listdir(os.path.join(wd, "predictions"))
  if name == "story_cloze":  # not in file order: each row carries the InputStoryid of its example
    (pred,) = os.listdir(os.path.join(wd, "predictions"))
    with open(os.path.join(wd, "predictions", pred)) as f:
      index = [line.split("\t")[0] for line in f.read().splitlines()[1:]]
    assert index and all(i.startswith("id") for i in index) and len(set(index)) == len(index)
  assert os.path.isdir(os.path.join(wd, "best"))
