"""Deterministic, resumable batching over random-access examples (tf.data).

Every pipeline in gpt1_jax (packed LM windows, fine-tuning examples) is a
function of the global step: batch ``s`` holds global example slots
``s*B .. s*B+B-1``; slot ``i`` is example ``shuffle_e(i mod N)`` of epoch
``e = i // N``, where ``shuffle_e`` is a stateless permutation
(``tf.random.experimental.index_shuffle``) seeded by ``(seed, e)``. Hence:

* the position in the data *is* the step: resuming at step ``s`` starts with
  exactly the batch an uninterrupted run would have seen, in O(1), with no
  iterator state to save beyond ``(seed, N, B)``, which the checkpoint records
  and checks;
* the global batch does not depend on the number of hosts: each host
  materialises only its rows ``[row_start, row_start + row_count)``, so a run
  resumes bitwise on another host count or mesh;
* epochs repeat forever and consecutive epochs use different permutations; a
  batch may straddle an epoch boundary, so no example is dropped or repeated
  within an epoch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from gpt1_jax.data import tf

Fetch = Callable[[tf.Tensor], dict]  # int64 example indices [rows] -> dict of tensors [rows, ...]

_MAX_STEPS = 1 << 40


@dataclasses.dataclass(frozen=True)
class Rows:
  """The rows of each global batch that this host provides."""

  global_batch_size: int
  start: int = 0
  count: int | None = None

  def __post_init__(self):
    count = self.global_batch_size - self.start if self.count is None else self.count
    object.__setattr__(self, "count", count)
    if not (0 <= self.start and self.start + count <= self.global_batch_size and count > 0):
      raise ValueError(f"host rows [{self.start}, {self.start + count}) do not fit in a global batch of "
                       f"{self.global_batch_size}")


def gather_fetch(arrays: dict[str, np.ndarray]) -> Fetch:
  """A fetch over in-memory arrays with a common leading example axis."""
  sizes = {k: len(v) for k, v in arrays.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"arrays have different numbers of examples: {sizes}")
  tensors = {k: tf.convert_to_tensor(v) for k, v in arrays.items()}
  return lambda idx: {k: tf.gather(v, idx) for k, v in tensors.items()}


def example_order(step, rows: Rows, num_examples: int, seed: int, shuffle: bool = True):
  """Example indices (int64 ``[rows.count]``) of this host's rows of batch ``step``."""
  step = tf.cast(step, tf.int64)
  slot = step * rows.global_batch_size + rows.start + tf.range(rows.count, dtype=tf.int64)
  n = tf.constant(num_examples, tf.int64)
  epoch, within = slot // n, slot % n
  if not shuffle:
    return within
  # One permutation per (seed, epoch); the third word is the op's key slot.
  seeds = tf.stack([tf.fill(tf.shape(epoch), tf.constant(seed, tf.int64)), epoch, tf.zeros_like(epoch)], axis=-1)
  # The raw op: the public wrapper mis-pads batched seeds in TF 2.21.
  return tf.raw_ops.RandomIndexShuffle(index=within, seed=seeds, max_index=n - 1, rounds=4)


def train_dataset(fetch: Fetch, num_examples: int, rows: Rows, *, seed: int, start_step: int = 0,
                  shuffle: bool = True, prefetch: int = 4) -> tf.data.Dataset:
  """Endless batches for steps ``start_step, start_step+1, ...`` (this host's rows)."""
  if num_examples <= 0:
    raise ValueError("the dataset has no examples")

  def make(step):
    return fetch(example_order(step, rows, num_examples, seed, shuffle))

  ds = tf.data.Dataset.range(start_step, _MAX_STEPS)
  ds = ds.map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(prefetch)


def eval_dataset(fetch: Fetch, num_examples: int, rows: Rows) -> tf.data.Dataset:
  """One ordered pass; the last batch is padded with repeats of the final example,
  flagged ``example_mask == 0`` so metrics skip them (nothing dropped, nothing counted twice)."""
  if num_examples <= 0:
    raise ValueError("the dataset has no examples")
  num_batches = -(-num_examples // rows.global_batch_size)

  def make(step):
    slot = step * rows.global_batch_size + rows.start + tf.range(rows.count, dtype=tf.int64)
    valid = slot < num_examples
    batch = fetch(tf.minimum(slot, num_examples - 1))
    batch["example_mask"] = tf.cast(valid, tf.float32)
    return batch

  ds = tf.data.Dataset.range(num_batches).map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(2)


def state_dict(num_examples: int, global_batch_size: int, seed: int) -> dict:
  """What a checkpoint records about the data so a resume can verify it sees the same stream."""
  return {"num_examples": int(num_examples), "global_batch_size": int(global_batch_size), "seed": int(seed)}


def check_state(saved: dict, current: dict, where: str):
  diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
  if diff:
    lines = "\n".join(f"  {k}: checkpoint {a!r} != now {b!r}" for k, (a, b) in diff.items())
    raise ValueError(f"{where}: the data stream differs from the one this checkpoint was trained on, so the "
                     f"run cannot resume at the exact next batch:\n{lines}")
