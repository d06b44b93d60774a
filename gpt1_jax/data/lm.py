"""Language-model pretraining data: prepared shards -> one token stream -> packed windows.

``python -m gpt1_jax.data.prepare`` tokenises a corpus once into TFRecord shards (one
record per document: its ids as little-endian uint16) and a ``manifest.json``. This
module reads them back and feeds the pretraining loop.

Stream. The documents of a split, in manifest order, are concatenated into one flat
uint16 stream, each document *preceded* by ``_start_`` (40478): the token that opens
every fine-tuning input (paper section 3.3), so pretraining already sees it as "a new
text begins here", and no two documents are ever glued without a marker.

Packing. With context ``n_ctx``, window ``w`` covers stream positions
``[w*n_ctx, w*n_ctx + n_ctx + 1)``: its first ``n_ctx`` tokens are the inputs, its last
``n_ctx`` the targets. Consecutive windows share exactly one token (the last target of
one is the first input of the next), so over an epoch every stream token but
the very first is a target exactly once and an input exactly once: no padding between
documents, nothing dropped, nothing repeated. Only the end of the stream is padded (id 0)
to complete the last window; those positions carry ``loss_mask`` 0. A window may span
several documents; attention is *not* masked at the ``_start_`` boundaries (as in GPT-1's
contiguous-text pretraining): the marker tells the model that the context before it is
unrelated.

Hosts. Every host holds the whole stream (2 bytes a token: 1B tokens = 2 GB) and
materialises only its rows of each global batch (see ``pipeline``). The global batch is
then a function of the step alone, identical for any number of hosts, which is what
lets a run resume exactly on a different topology; sharding the stream by host would tie
the batch contents to the host count.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from gpt1_jax.data import pipeline
from gpt1_jax.data import tf

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
TOKEN_DTYPE = np.dtype("<u2")  # ids are < 65536 (GPT-1 has 40,481)
PAD_ID = 0  # GPT-1 has no padding token; padded positions are masked, never learned


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def load_manifest(data_dir: str, expected_fingerprint: str | None = None) -> dict:
  """Reads and validates ``data_dir/manifest.json``; errors name the path and the problem.

  Checks that every shard it lists exists with the recorded size (catching deleted,
  truncated or replaced files cheaply) and, given ``expected_fingerprint``, that the data
  was tokenised with the same vocabulary as the configured tokenizer.
  """
  if not tf.io.gfile.isdir(data_dir):
    raise FileNotFoundError(f"{data_dir}: no such data directory (create it with "
                            f"`python -m gpt1_jax.data.prepare --output={data_dir} ...`)")
  path = os.path.join(data_dir, MANIFEST)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: no manifest; the directory was never prepared or a prepare run was "
                            f"interrupted (re-run gpt1_jax.data.prepare)")
  try:
    with tf.io.gfile.GFile(path, "r") as f:
      manifest = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a valid manifest ({e})") from None
  if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    raise ValueError(f"{path}: format_version {version!r}, this code reads {FORMAT_VERSION}; re-run prepare")
  missing = [k for k in ("tokenizer_fingerprint", "vocab_size", "start_id", "splits") if k not in manifest]
  if missing:
    raise ValueError(f"{path}: missing fields {missing}")
  if expected_fingerprint is not None and manifest["tokenizer_fingerprint"] != expected_fingerprint:
    raise ValueError(f"{path}: tokenised with vocabulary {manifest['tokenizer_fingerprint'][:16]}..., but the "
                     f"configured tokenizer is {expected_fingerprint[:16]}...; re-run prepare with this tokenizer")
  for split, info in manifest["splits"].items():
    for shard in info["shards"]:
      shard_path = os.path.join(data_dir, shard["file"])
      if not tf.io.gfile.exists(shard_path):
        raise FileNotFoundError(f"{shard_path}: shard of split {split!r} listed in {path} is missing")
      size = tf.io.gfile.stat(shard_path).length
      if size == 0:
        raise ValueError(f"{shard_path}: shard of split {split!r} is empty (0 bytes)")
      if size != shard["bytes"]:
        raise ValueError(f"{shard_path}: {size} bytes, but {path} records {shard['bytes']} (truncated or "
                         f"replaced; re-run prepare)")
  return manifest


def _shard_streams(paths: list[str], start_id: int) -> tf.data.Dataset:
  """One element per shard, in order: (documents, marked token stream of the shard)."""
  marker = np.array([start_id], TOKEN_DTYPE).tobytes()

  def read(path):
    records = tf.data.TFRecordDataset(path, buffer_size=16 << 20).batch(1 << 62)
    return records.map(lambda r: (tf.size(r, tf.int64), tf.io.decode_raw(
        tf.strings.reduce_join(tf.strings.join([marker, r])), tf.uint16, little_endian=True)))

  parallel = max(1, min(len(paths), 8))
  # Each shard yields exactly one element, so a deterministic interleave returns them in
  # shard order while reading up to `parallel` shards at once.
  return tf.data.Dataset.from_tensor_slices(paths).interleave(
      read, cycle_length=parallel, block_length=1, num_parallel_calls=parallel, deterministic=True)


def load_tokens(data_dir: str, split: str, manifest: dict | None = None) -> np.ndarray:
  """The split's documents as one uint16 stream, each preceded by ``_start_``.

  Its length is the manifest's tokens plus documents (one marker each); a shard whose
  counts differ from the manifest is reported as corrupt.
  """
  manifest = load_manifest(data_dir) if manifest is None else manifest
  where = os.path.join(data_dir, MANIFEST)
  if split not in manifest["splits"]:
    raise ValueError(f"{where}: no split {split!r} (has {sorted(manifest['splits'])})")
  shards = manifest["splits"][split]["shards"]
  if not shards:
    raise ValueError(f"{where}: split {split!r} has no documents")
  paths = [os.path.join(data_dir, s["file"]) for s in shards]
  total = sum(s["tokens"] + s["documents"] for s in shards)
  stream = np.empty(total, TOKEN_DTYPE)
  offset = 0
  try:
    for shard, path, (docs, tokens) in zip(shards, paths, _shard_streams(paths, manifest["start_id"])):
      docs, n = int(docs), int(tokens.shape[0])
      if (docs, n - docs) != (shard["documents"], shard["tokens"]) or offset + n > total:
        raise ValueError(f"{path}: {docs} documents / {n - docs} tokens, but {where} records "
                         f"{shard['documents']} / {shard['tokens']}: corrupt shard, re-run prepare")
      stream[offset:offset + n] = tokens.numpy()
      offset += n
  except tf.errors.OpError as e:
    bad = _first_unreadable(paths, manifest["start_id"])
    raise ValueError(f"{bad or data_dir}: unreadable shard of split {split!r} ({e.message.strip()}); "
                     f"re-run prepare") from None
  return stream


def _first_unreadable(paths: list[str], start_id: int) -> str | None:
  """The shard behind a read error (the parallel read does not say which it was)."""
  for path in paths:
    try:
      for _ in _shard_streams([path], start_id):
        pass
    except tf.errors.OpError:
      return path
  return None


def data_fingerprint(manifest: dict, split: str) -> str:
  """Identifies a split's token stream: the vocabulary and the content hash of each shard."""
  shards = manifest["splits"][split]["shards"]
  key = [manifest["format_version"], manifest["tokenizer_fingerprint"], manifest["start_id"], split,
         [s["sha256"] for s in shards]]
  return hashlib.sha256(json.dumps(key).encode()).hexdigest()


class LMData:
  """Packed next-token windows over a token stream (see the module docstring).

  Batches are dicts ``inputs``/``targets`` int32 ``[rows, n_ctx]`` and ``loss_mask``
  float32 ``[rows, n_ctx]``; the eval batches add ``example_mask`` ``[rows]`` (0 for the
  repeats that fill the last batch), so an eval token counts with weight
  ``loss_mask * example_mask[:, None]``.
  """

  def __init__(self, stream: np.ndarray, n_ctx: int, fingerprint: str | None = None):
    stream = np.asarray(stream)
    if stream.dtype != TOKEN_DTYPE or stream.ndim != 1:
      raise ValueError(f"the stream must be 1-D uint16, got {stream.dtype} {stream.shape}")
    if n_ctx < 1 or stream.size < 2:
      raise ValueError(f"need n_ctx >= 1 and at least 2 stream tokens, got n_ctx={n_ctx}, {stream.size} tokens")
    self.n_ctx = int(n_ctx)
    self.num_tokens = int(stream.size)  # including the _start_ markers
    self.num_windows = -(-(self.num_tokens - 1) // self.n_ctx)
    self.fingerprint = fingerprint or hashlib.sha256(stream.tobytes()).hexdigest()
    self.manifest: dict | None = None  # set by `load`
    # The one copy the pipeline keeps: uint16, captured by reference in the fetch.
    # (convert_to_tensor is a memcpy; tf.constant takes ~8x longer on large arrays.)
    self._stream = tf.convert_to_tensor(stream)

  @classmethod
  def load(cls, data_dir: str, split: str, n_ctx: int, expected_fingerprint: str | None = None) -> "LMData":
    """Reads a prepared split; ``expected_fingerprint`` is the configured tokenizer's."""
    manifest = load_manifest(data_dir, expected_fingerprint)
    data = cls(load_tokens(data_dir, split, manifest), n_ctx, data_fingerprint(manifest, split))
    data.manifest = manifest
    return data

  @property
  def stream(self) -> np.ndarray:
    """A copy of the token stream (for inspection; the pipeline reads its own)."""
    return self._stream.numpy()

  def fetch(self, idx: tf.Tensor) -> dict:
    """Windows ``idx`` (int64 ``[rows]``) as a batch: one gather of ``n_ctx + 1`` tokens each."""
    n, length = self.n_ctx, self.num_tokens
    pos = tf.cast(idx, tf.int64)[:, None] * n + tf.range(n + 1, dtype=tf.int64)[None, :]
    real = pos < length
    # Positions past the end read the last token and are then replaced by padding, so the
    # stream itself is never copied to be padded.
    window = tf.cast(tf.gather(self._stream, tf.minimum(pos, length - 1)), tf.int32)
    window = tf.where(real, window, PAD_ID)
    return {"inputs": window[:, :-1], "targets": window[:, 1:], "loss_mask": tf.cast(real[:, 1:], tf.float32)}

  def train_dataset(self, rows: pipeline.Rows, seed: int, start_step: int = 0, prefetch: int = 4) -> tf.data.Dataset:
    """Endless shuffled batches for steps ``start_step, start_step + 1, ...`` (this host's rows)."""
    return pipeline.train_dataset(self.fetch, self.num_windows, rows, seed=seed, start_step=start_step,
                                  prefetch=prefetch)

  def eval_dataset(self, rows: pipeline.Rows) -> tf.data.Dataset:
    """One ordered pass over every window, the last batch completed with masked repeats."""
    return pipeline.eval_dataset(self.fetch, self.num_windows, rows)

  def data_state(self, global_batch_size: int, seed: int) -> dict:
    """What a checkpoint records so a resume can check it continues the same batches."""
    return {**pipeline.state_dict(self.num_windows, global_batch_size, seed), "n_ctx": self.n_ctx,
            "data_fingerprint": self.fingerprint}
