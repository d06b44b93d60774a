"""What fine-tuning's reproducibility rests on (docs/reproducibility.md).

The data a fine-tuning run sees is a function of (seed, step) alone: batch ``s`` is
``example_order_np(s)`` of the encoded arrays whatever tf.data's threading and determinism
settings, so a difference between two machines' runs is never the data order. The numbers then
depend only on the arithmetic (the installed versions, the CPU's instruction set, the thread
count); ``constraints.txt`` pins the versions they were measured with.
"""

import pathlib
import re

import numpy as np
import pytest

from gpt1_jax.data import pipeline, transforms as X

REPO = pathlib.Path(__file__).resolve().parents[1]


def _arrays(n: int = 37, seq_len: int = 8) -> dict:
  """Encoded examples whose every row says which example it is."""
  ids = np.arange(n, dtype=np.int32)[:, None, None] * 100 + np.arange(seq_len, dtype=np.int32)
  return {
      "input_ids": ids,
      "attention_mask": np.ones_like(ids),
      "cls_index": np.full((n, 1), seq_len - 1, np.int32),
      "choice_mask": np.ones((n, 1), np.float32),
      "label": np.arange(n, dtype=np.int32) % 2,
      "example_index": np.arange(n, dtype=np.int32)
  }


def _tf_data_settings():
  """tf.data settings a machine or a caller may differ in: pool sizes, autotuning, determinism."""
  tf = pytest.importorskip("tensorflow")
  settings = {"default": None}
  one = tf.data.Options()
  one.threading.private_threadpool_size = 1
  one.threading.max_intra_op_parallelism = 1
  one.autotune.enabled = False
  settings["one thread, no autotune"] = one
  loose = tf.data.Options()
  loose.deterministic = False  # what a caller who wants speed over order would set
  loose.threading.private_threadpool_size = 8
  settings["nondeterministic allowed, 8 threads"] = loose
  return settings


@pytest.mark.parametrize("name", ["default", "one thread, no autotune", "nondeterministic allowed, 8 threads"])
def test_fine_tuning_batches_are_the_numpy_order_under_any_tf_data_threading(name):
  options = _tf_data_settings()[name]
  arrays, rows = _arrays(), pipeline.Rows(global_batch_size=8)
  ds = X.task_train_dataset(arrays, rows, seed=5)
  if options is not None:
    ds = ds.with_options(options)
  steps = 14  # three epochs of 37 examples: batches straddle epoch boundaries
  for step, batch in zip(range(steps), ds.as_numpy_iterator()):
    order = pipeline.example_order_np(step, rows, len(arrays["label"]), seed=5)
    for k in X.TRAIN_KEYS:
      np.testing.assert_array_equal(batch[k], arrays[k][order], err_msg=f"{name}: step {step}, {k}")


def test_fine_tuning_eval_pass_is_in_example_order_under_any_tf_data_threading():
  arrays, rows = _arrays(), pipeline.Rows(global_batch_size=8)
  for name, options in _tf_data_settings().items():
    ds = X.task_eval_dataset(arrays, rows)
    if options is not None:
      ds = ds.with_options(options)
    seen = [int(i) for b in ds.as_numpy_iterator() for i, m in zip(b["example_index"], b["example_mask"]) if m]
    assert seen == list(range(37)), name


def test_constraints_pin_the_packages_that_decide_the_numbers():
  lines = [ln.strip() for ln in (REPO / "constraints.txt").read_text().splitlines()]
  pins = {}
  for ln in lines:
    if not ln or ln.startswith("#"):
      continue
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][0-9A-Za-z.+\-]*)", ln)
    assert m, f"constraints.txt: {ln!r} is not an exact NAME==VERSION pin"
    pins[m.group(1).lower().replace("_", "-")] = m.group(2)
  # The compiler and its numerics, the training stack, the fine-tuning pipeline, the tokenisation.
  for name in ("jax", "jaxlib", "numpy", "ml-dtypes", "flax", "optax", "orbax-checkpoint", "tensorflow-cpu", "ftfy",
               "spacy", "scikit-learn"):
    assert name in pins, f"constraints.txt does not pin {name}"
  assert pins["jax"] == pins["jaxlib"], "jax and jaxlib must be pinned to the same release"
