"""Deterministic, resumable batching over random-access examples (tf.data, or NumPy alone).

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

``example_order`` is the tf.data form (fine-tuning pipelines); ``example_order_np`` computes
the same indices bit for bit with NumPy alone (``index_shuffle`` re-implements TensorFlow's
``RandomIndexShuffle``), and ``train_batches_np``/``eval_batches_np`` are the TF-free forms of
the two pipelines (the LM pipeline's), prefetched on a background thread.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import queue
import threading
from typing import Any, Callable

import numpy as np

from gpt1_jax.data import tf

Fetch = Callable[[Any], dict]  # int64 example indices [rows] -> dict of tensors [rows, ...]

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


# TensorFlow's RandomIndexShuffle: a Simon-style Feistel cipher over a block of 2W bits
# (W = half of ceil(log2(max_index)) rounded up to even, at least 8), 4 rounds keyed by the
# three uint32 seed words plus one scheduled word, cycle-walked until the value falls in
# [0, max_index]. Written from the published algorithm and checked against the op.
_SIMON_C = 0xFFFFFFFC
_SIMON_Z = 0x7369F885192C0EF5


def _simon(value: np.ndarray, keys: list, w: int) -> np.ndarray:
  """One encryption of ``value`` (uint64, 2w bits) under the round ``keys``."""
  mask = np.uint64((1 << w) - 1)
  u = np.uint64  # shift counts must share the uint64 type
  rotl = lambda x, r: ((x << u(r)) | (x >> u(w - r))) & mask  # noqa: E731
  f = lambda x: (rotl(x, 1) & rotl(x, 8)) ^ rotl(x, 2)  # noqa: E731
  left, right = (value >> u(w)) & mask, value & mask
  for i in range(0, len(keys), 2):
    left = left ^ f(right) ^ keys[i]
    right = right ^ f(left) ^ keys[i + 1]
  return (left << u(w)) | right


def _round_keys(words: np.ndarray, w: int, rounds: int) -> list:
  """Simon's key schedule over W-bit words, from the three seed words ``[..., 3]``."""
  mask = (1 << w) - 1
  u = np.uint64
  rotr = lambda x, r: ((x >> u(r)) | (x << u(w - r))) & u(mask)  # noqa: E731
  keys = [words[..., i] & u(mask) for i in range(3)]
  z = _SIMON_Z & mask
  for i in range(3, rounds):
    keys.append(u(_SIMON_C & mask) ^ u((z >> (i - 3)) & 1) ^ keys[i - 3] ^ rotr(keys[i - 1], 3) ^ rotr(keys[i - 1], 4))
  return keys


@functools.lru_cache(maxsize=8)
def _walked_table(words: tuple, max_index: int, w: int, rounds: int) -> np.ndarray:
  """The whole cycle-walked permutation of a 16-bit block for one key.

  With few examples most of the 65,536 block values lie above ``max_index`` and a value
  walks thousands of steps (2 examples: ~32,768); encrypting the block once and jumping
  pointers along it takes ~17 array passes instead.
  """
  keys = _round_keys(np.array(words, np.uint64), w, rounds)
  nxt = _simon(np.arange(1 << (2 * w), dtype=np.uint64), keys, w).astype(np.int64)
  res = np.full(nxt.shape, -1, np.int64)  # res[v]: first value <= max_index after v on its cycle
  # Invariant: every value strictly between v and nxt[v] on the cycle exceeds max_index.
  # Values on cycles without any value <= max_index never resolve; no index reaches them.
  while (res[:max_index + 1] < 0).any():
    todo = np.flatnonzero(res < 0)
    ahead = nxt[todo]
    res[todo] = np.where(ahead <= max_index, ahead, res[ahead])
    nxt[todo] = nxt[ahead]
  return res[:max_index + 1]


def index_shuffle(index, seed, max_index: int, rounds: int = 4) -> np.ndarray:
  """Position of each ``index`` in the permutation of ``[0, max_index]`` keyed by ``seed``.

  ``seed``: int ``[..., 3]`` (each word is used modulo 2**32, as the op casts it); returns
  uint64 like ``index``. Equal to ``tf.raw_ops.RandomIndexShuffle(index, seed, max_index,
  rounds)`` for every input (``tests/test_lm_data.py`` checks it against the op).
  """
  if rounds < 4 or rounds % 2:
    raise ValueError(f"rounds must be an even number >= 4, got {rounds}")
  index = np.asarray(index).astype(np.uint64)
  if max_index == 0:
    return np.zeros_like(index)
  block = math.ceil(math.log2(float(max_index)))  # as the op computes it, in double precision
  block = max(block + block % 2, 16)
  w = block // 2
  words = np.asarray(seed).astype(np.int64).astype(np.uint64) & np.uint64(0xFFFFFFFF)
  words = np.broadcast_to(words, index.shape + (3,))
  if block == 16 and max_index < 1 << 14:
    out = np.empty_like(index)
    unique, which = np.unique(words.reshape(-1, 3), axis=0, return_inverse=True)
    flat = index.reshape(-1)
    for k, key in enumerate(unique):
      table = _walked_table(tuple(int(x) for x in key), int(max_index), w, rounds)
      out.reshape(-1)[which.reshape(-1) == k] = table[flat[which.reshape(-1) == k].astype(np.int64)]
    return out
  keys = _round_keys(words, w, rounds)
  out = index.copy()
  todo = np.ones(index.shape, bool)
  while todo.any():  # cycle walking: the block is < 4x max_index, so a few passes
    out[todo] = _simon(out[todo], [k[todo] for k in keys], w)
    todo &= out > np.uint64(max_index)
  return out


def example_order_np(step: int, rows: Rows, num_examples: int, seed: int, shuffle: bool = True) -> np.ndarray:
  """``example_order`` in NumPy: the same int64 indices, without TensorFlow."""
  slot = int(step) * rows.global_batch_size + rows.start + np.arange(rows.count, dtype=np.int64)
  epoch, within = slot // num_examples, slot % num_examples
  if not shuffle:
    return within
  seeds = np.stack([np.full_like(epoch, seed), epoch, np.zeros_like(epoch)], axis=-1)
  return index_shuffle(within, seeds, num_examples - 1).astype(np.int64)


class Prefetch:
  """Iterator over ``make(step)`` for ``steps``, computed ``depth`` ahead on a background thread.

  NumPy and file reads release the GIL, so batches are ready before the step that needs them.
  An error in ``make`` is raised by ``next`` (for the step that failed). The thread holds no
  reference to this object: dropping the iterator, or ``close()``, stops it.
  """

  def __init__(self, make: Callable[[int], dict], steps, depth: int = 4):
    self._queue = queue.Queue(maxsize=max(1, depth))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=Prefetch._work, args=(make, iter(steps), self._queue, self._stop),
                                    daemon=True, name="gpt1_jax-prefetch")
    self._thread.start()

  @staticmethod
  def _work(make, steps, out: queue.Queue, stop: threading.Event):

    def put(item):
      while not stop.is_set():
        try:
          out.put(item, timeout=0.1)
          return True
        except queue.Full:
          pass
      return False

    try:
      for step in steps:
        if not put(("batch", make(step))):
          return
    except BaseException as e:  # noqa: BLE001 - handed to the consumer
      put(("error", e))
      return
    put(("end", None))

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._stop.is_set():
      raise StopIteration
    kind, value = self._queue.get()
    if kind == "batch":
      return value
    self._stop.set()
    if kind == "error":
      raise value
    raise StopIteration

  def close(self):
    self._stop.set()

  def __del__(self):
    self._stop.set()


def train_batches_np(fetch: Fetch, num_examples: int, rows: Rows, *, seed: int, start_step: int = 0,
                     shuffle: bool = True, prefetch: int = 4) -> Prefetch:
  """``train_dataset`` without TensorFlow: the same batches, as dicts of NumPy arrays."""
  if num_examples <= 0:
    raise ValueError("the dataset has no examples")
  make = lambda step: fetch(example_order_np(step, rows, num_examples, seed, shuffle))  # noqa: E731
  return Prefetch(make, itertools.count(start_step), prefetch)


def eval_batches_np(fetch: Fetch, num_examples: int, rows: Rows, prefetch: int = 2) -> Prefetch:
  """``eval_dataset`` without TensorFlow: the same batches, as dicts of NumPy arrays."""
  if num_examples <= 0:
    raise ValueError("the dataset has no examples")

  def make(step):
    slot = step * rows.global_batch_size + rows.start + np.arange(rows.count, dtype=np.int64)
    batch = fetch(np.minimum(slot, num_examples - 1))
    batch["example_mask"] = (slot < num_examples).astype(np.float32)
    return batch

  return Prefetch(make, range(-(-num_examples // rows.global_batch_size)), prefetch)


def train_dataset(fetch: Fetch, num_examples: int, rows: Rows, *, seed: int, start_step: int = 0, shuffle: bool = True,
                  prefetch: int = 4) -> tf.data.Dataset:
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
