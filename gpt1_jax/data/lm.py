"""Language-model pretraining data: a prepared token store -> packed windows, with no TensorFlow.

``python -m gpt1_jax.data.prepare`` tokenises a corpus once into shards of raw uint16 ids
and a ``manifest.json`` (the format is in ``store.py``). This module checks the manifest,
reads windows of a split by position and feeds the pretraining loop.

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

Hosts. Batch ``s`` is a pure function of ``(seed, s)`` (``pipeline.example_order_np``),
identical for any number of hosts, which is what lets a run resume exactly on a different
topology. Each host reads only the windows of its own rows, by offset, on a background
thread; no host holds the corpus, so memory and start-up time do not grow with it.

Format 1 (TFRecord shards, before 2026-12) still loads, into memory and through TensorFlow;
``python -m gpt1_jax.data.prepare --migrate=DIR`` rewrites such a directory as a token
store in place, keeping its data fingerprint (so runs on it resume).
"""

from __future__ import annotations

import hashlib
import json
import os

from absl import logging
import numpy as np

from gpt1_jax.data import pipeline, store, tf

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # what prepare writes: the token store
READABLE_VERSIONS = (1, 2)  # 1: TFRecord shards (needs TensorFlow; --migrate converts)
TOKEN_DTYPE = store.TOKEN_DTYPE
PAD_ID = store.PAD_ID
shard_name = store.shard_name
# Splits at most this large on a local disk are checked against their sha256 when opened.
VERIFY_BELOW_BYTES = 256 << 20
# `prepare` checks every shard's sha256 before it calls a store up to date, so rerunning the
# command that wrote a damaged store rebuilds it.
_ADVICE = "; re-run prepare"


def load_manifest(data_dir: str, expected_fingerprint: str | None = None, check_sizes: bool = True) -> dict:
  """Reads and validates ``data_dir/manifest.json``; errors name the path and the problem.

  Checks that every file it lists exists with the recorded size (catching deleted,
  truncated or replaced files cheaply; ``check_sizes=False`` leaves that to the caller)
  and, given ``expected_fingerprint``, that the data was tokenised with the same vocabulary
  as the configured tokenizer.
  """
  if not store.is_url(data_dir) and not os.path.isdir(data_dir):
    raise FileNotFoundError(f"{data_dir}: no such data directory (create it with "
                            f"`python -m gpt1_jax.data.prepare --output={data_dir} ...`)")
  path = store.join(data_dir, MANIFEST)
  if not store.exists(path):
    raise FileNotFoundError(f"{path}: no manifest; the directory was never prepared or a prepare run was "
                            f"interrupted (re-run gpt1_jax.data.prepare)")
  try:
    manifest = json.loads(store.read_bytes(path).decode("utf-8"))
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a valid manifest ({e})") from None
  if not isinstance(manifest, dict) or manifest.get("format_version") not in READABLE_VERSIONS:
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    raise ValueError(f"{path}: format_version {version!r}, this code reads {READABLE_VERSIONS}; re-run prepare")
  missing = [k for k in ("tokenizer_fingerprint", "vocab_size", "start_id", "splits") if k not in manifest]
  if missing:
    raise ValueError(f"{path}: missing fields {missing}")
  if expected_fingerprint is not None and manifest["tokenizer_fingerprint"] != expected_fingerprint:
    raise ValueError(f"{path}: tokenised with vocabulary {manifest['tokenizer_fingerprint'][:16]}..., but the "
                     f"configured tokenizer is {expected_fingerprint[:16]}...; re-run prepare with this tokenizer")
  if check_sizes:
    for split, info in manifest["splits"].items():
      for shard in info["shards"]:
        errors = _size_errors(data_dir, manifest, split, shard)
        if errors:
          raise errors[0]
  return manifest


def _size_errors(data_dir: str, manifest: dict, split: str, shard: dict) -> list[Exception]:
  """A shard's files that are missing or not the size the manifest records."""
  manifest_path = store.join(data_dir, MANIFEST)
  files = [(shard["file"], shard["bytes"], "shard")]
  if manifest["format_version"] >= 2:
    files.append((shard["index"], shard["index_bytes"], "index"))
  errors = []
  for name, expected, what in files:
    file_path = store.join(data_dir, name)
    f = store.open_file(file_path)
    actual = f.size()
    if actual is None:
      errors.append(FileNotFoundError(f"{file_path}: {what} of split {split!r} listed in {manifest_path} is missing"))
    elif actual == 0 and expected:
      errors.append(ValueError(f"{file_path}: {what} of split {split!r} is empty (0 bytes)"))
    elif not f.has_size(expected):
      got = f"{actual} bytes" if actual >= 0 else "a different size"
      errors.append(
          ValueError(f"{file_path}: {got}, but {manifest_path} records {expected} (truncated or "
                     f"replaced){_ADVICE}"))
  return errors


def _split_shards(data_dir: str, split: str, manifest: dict) -> list[dict]:
  where = store.join(data_dir, MANIFEST)
  if split not in manifest["splits"]:
    raise ValueError(f"{where}: no split {split!r} (has {sorted(manifest['splits'])})")
  shards = manifest["splits"][split]["shards"]
  if not shards:
    raise ValueError(f"{where}: split {split!r} has no documents")
  return shards


def _corrupt(path: str, why: str) -> ValueError:
  return ValueError(f"{path}: corrupt shard ({why}){_ADVICE}")


def _read_shard(data_dir: str, shard: dict, start_id: int) -> np.ndarray:
  """One format-2 shard whole, checked against its sha256, counts and document index."""
  path = store.join(data_dir, shard["file"])
  raw = store.read_bytes(path)
  if hashlib.sha256(raw).hexdigest() != shard["sha256"]:
    raise _corrupt(path, "its bytes differ from the sha256 in the manifest")
  tokens = np.frombuffer(raw, TOKEN_DTYPE)
  if tokens.size != shard["tokens"] + shard["documents"]:
    raise _corrupt(
        path, f"{tokens.size} stream tokens, but the manifest records {shard['documents']} documents "
        f"/ {shard['tokens']} tokens")
  raw_index = store.read_bytes(store.join(data_dir, shard["index"]))
  if "index_sha256" in shard and hashlib.sha256(raw_index).hexdigest() != shard["index_sha256"]:
    raise _corrupt(path, f"its index {shard['index']} differs from the sha256 in the manifest")
  offsets = np.frombuffer(raw_index, store.INDEX_DTYPE)
  if (offsets.size != shard["documents"] + 1 or offsets[-1] != tokens.size or offsets[0] != 0 or
      np.any(np.diff(offsets) < 2) or np.any(tokens[offsets[:-1]] != start_id)):
    raise _corrupt(path, f"its index {shard['index']} does not match its documents")
  return tokens


def load_tokens(data_dir: str, split: str, manifest: dict | None = None) -> np.ndarray:
  """The split's whole stream in memory (held-out evaluation, probes): each document
  preceded by ``_start_``, every shard checked against the manifest as it is read."""
  manifest = load_manifest(data_dir) if manifest is None else manifest
  shards = _split_shards(data_dir, split, manifest)
  if manifest["format_version"] == 1:
    return _load_tfrecord_tokens(data_dir, split, shards, manifest["start_id"])
  return np.concatenate([_read_shard(data_dir, s, manifest["start_id"]) for s in shards])


def verify(data_dir: str, splits=None) -> dict:
  """Checks every shard's files and content (size, sha256, counts, document index): what opening a
  large store skips. Returns ``{split: shards checked}``; raises one error naming every bad shard.

  Cost: one read of the store at hashing speed (11.5 MB of IMDb shards: 8 ms on a 2-core VM),
  which is why ``prepare`` runs it before calling a store up to date."""
  manifest = load_manifest(data_dir, check_sizes=False)
  checked, problems = {}, []
  for split in splits or manifest["splits"]:
    shards = manifest["splits"][split]["shards"]
    if manifest["format_version"] == 1:
      for shard in shards:
        errors = _size_errors(data_dir, manifest, split, shard)
        if errors:
          raise errors[0]
      if shards:
        _load_tfrecord_tokens(data_dir, split, shards, manifest["start_id"])
    else:
      for shard in shards:
        errors = _size_errors(data_dir, manifest, split, shard)
        if not errors:
          try:
            _read_shard(data_dir, shard, manifest["start_id"])
          except (OSError, ValueError) as e:
            errors = [e]
        problems += [str(e).removesuffix(_ADVICE) for e in errors]
    checked[split] = len(shards)
  if problems:
    raise ValueError("; ".join(problems) + _ADVICE)
  return checked


def open_tokens(data_dir: str, split: str, manifest: dict):
  """The split's stream for random access: a ``store.TokenStore`` (format 2) or, for a
  format-1 directory, the stream loaded into memory through TensorFlow."""
  shards = _split_shards(data_dir, split, manifest)
  if manifest["format_version"] == 1:
    logging.warning(
        "%s is a format-1 (TFRecord) data directory: loading split %r into memory with TensorFlow. "
        "`python -m gpt1_jax.data.prepare --migrate=%s` converts it to the token store in place "
        "(same batches, same fingerprint)", data_dir, split, data_dir)
    return store.ArrayTokens(_load_tfrecord_tokens(data_dir, split, shards, manifest["start_id"]))
  size = sum(s["bytes"] for s in shards)
  if not store.is_url(data_dir) and size <= VERIFY_BELOW_BYTES:
    for shard in shards:
      _read_shard(data_dir, shard, manifest["start_id"])
  return store.TokenStore([store.join(data_dir, s["file"]) for s in shards],
                          [s["tokens"] + s["documents"] for s in shards])


def data_fingerprint(manifest: dict, split: str) -> str:
  """Identifies a split's token stream: the vocabulary and the content hash of each shard.

  A migrated directory keeps the fingerprint of the format-1 shards it was converted from
  (the stream is the same), so checkpoints trained on them still resume.
  """
  migrated = manifest.get("migrated_from", {}).get("data_fingerprints", {})
  if split in migrated:
    return migrated[split]
  shards = manifest["splits"][split]["shards"]
  key = [
      manifest["format_version"], manifest["tokenizer_fingerprint"], manifest["start_id"], split,
      [s["sha256"] for s in shards]
  ]
  return hashlib.sha256(json.dumps(key).encode()).hexdigest()


# ----------------------------------------------------------------------------- format 1
def _load_tfrecord_tokens(data_dir: str, split: str, shards: list[dict], start_id: int) -> np.ndarray:
  where = os.path.join(data_dir, MANIFEST)
  paths = [os.path.join(data_dir, s["file"]) for s in shards]
  total = sum(s["tokens"] + s["documents"] for s in shards)
  stream = np.empty(total, TOKEN_DTYPE)
  offset = 0
  try:
    for shard, path, (docs, tokens) in zip(shards, paths, _tfrecord_streams(paths, start_id)):
      docs, n = int(docs), int(tokens.shape[0])
      if (docs, n - docs) != (shard["documents"], shard["tokens"]) or offset + n > total:
        raise ValueError(f"{path}: {docs} documents / {n - docs} tokens, but {where} records "
                         f"{shard['documents']} / {shard['tokens']}: corrupt shard, re-run prepare")
      stream[offset:offset + n] = tokens.numpy()
      offset += n
  except tf.errors.OpError as e:
    bad = _first_unreadable(paths, start_id)
    raise ValueError(f"{bad or data_dir}: unreadable shard of split {split!r} ({e.message.strip()}); "
                     f"re-run prepare") from None
  return stream


def _tfrecord_streams(paths: list[str], start_id: int):
  """One element per shard, in order: (documents, marked token stream of the shard)."""
  marker = np.array([start_id], TOKEN_DTYPE).tobytes()

  def read(path):
    records = tf.data.TFRecordDataset(path, buffer_size=16 << 20).batch(1 << 62)
    return records.map(lambda r: (tf.size(r, tf.int64),
                                  tf.io.decode_raw(tf.strings.reduce_join(tf.strings.join([marker, r])), tf.uint16,
                                                   little_endian=True)))

  parallel = max(1, min(len(paths), 8))
  # Each shard yields exactly one element, so a deterministic interleave returns them in
  # shard order while reading up to `parallel` shards at once.
  return tf.data.Dataset.from_tensor_slices(paths).interleave(read, cycle_length=parallel, block_length=1,
                                                              num_parallel_calls=parallel, deterministic=True)


def _first_unreadable(paths: list[str], start_id: int) -> str | None:
  """The shard behind a read error (the parallel read does not say which it was)."""
  for path in paths:
    try:
      for _ in _tfrecord_streams([path], start_id):
        pass
    except tf.errors.OpError:
      return path
  return None


# ----------------------------------------------------------------------------- windows
class LMData:
  """Packed next-token windows over a token stream (see the module docstring).

  ``tokens``: a uint16 array (held in memory) or a ``store.TokenStore``. Batches are dicts of
  NumPy arrays ``inputs``/``targets`` int32 ``[rows, n_ctx]`` and ``loss_mask`` float32
  ``[rows, n_ctx]``; the eval batches add ``example_mask`` ``[rows]`` (0 for the repeats that
  fill the last batch), so an eval token counts with weight ``loss_mask * example_mask[:, None]``.
  """

  def __init__(self, tokens, n_ctx: int, fingerprint: str | None = None):
    if isinstance(tokens, np.ndarray) or not hasattr(tokens, "windows"):
      stream = np.asarray(tokens)
      if stream.dtype != TOKEN_DTYPE or stream.ndim != 1:
        raise ValueError(f"the stream must be 1-D uint16, got {stream.dtype} {stream.shape}")
      fingerprint = fingerprint or hashlib.sha256(stream.tobytes()).hexdigest()
      tokens = store.ArrayTokens(stream)
    elif fingerprint is None:
      raise ValueError("a token store needs the fingerprint of its data (lm.data_fingerprint)")
    if n_ctx < 1 or tokens.num_tokens < 2:
      raise ValueError(f"need n_ctx >= 1 and at least 2 stream tokens, got n_ctx={n_ctx}, "
                       f"{tokens.num_tokens} tokens")
    self.n_ctx = int(n_ctx)
    self.num_tokens = int(tokens.num_tokens)  # including the _start_ markers
    self.num_windows = -(-(self.num_tokens - 1) // self.n_ctx)
    self.fingerprint = fingerprint
    self.manifest: dict | None = None  # set by `load`
    self._tokens = tokens

  @classmethod
  def load(cls, data_dir: str, split: str, n_ctx: int, expected_fingerprint: str | None = None,
           manifest: dict | None = None) -> "LMData":
    """Opens a prepared split; ``expected_fingerprint`` is the configured tokenizer's."""
    manifest = manifest or load_manifest(data_dir, expected_fingerprint)
    data = cls(open_tokens(data_dir, split, manifest), n_ctx, data_fingerprint(manifest, split))
    data.manifest = manifest
    return data

  @property
  def stream(self) -> np.ndarray:
    """The whole token stream, read into memory (for inspection and tests)."""
    return np.array(self._tokens.read(0, self.num_tokens))

  def unigram_counts(self, vocab_size: int, max_tokens: int = 1 << 24, pieces: int = 256) -> np.ndarray:
    """Token counts ``[vocab_size]`` (int64) of the stream, or of ``pieces`` evenly spaced stretches
    of it totalling ``max_tokens`` when it is longer: a deterministic function of the data, read
    by offset like the batches (a sampled softmax's proposal)."""
    n = self.num_tokens
    if n <= max_tokens:
      spans = [(0, n)]
    else:
      width = max_tokens // pieces
      spans = [(int(s), int(s) + width) for s in np.linspace(0, n - width, pieces).astype(np.int64)]
    counts = np.zeros(vocab_size, np.int64)
    for start, stop in spans:
      counts += np.bincount(np.asarray(self._tokens.read(start, stop)), minlength=vocab_size)[:vocab_size]
    return counts

  def fetch(self, idx: np.ndarray) -> dict:
    """Windows ``idx`` (int ``[rows]``) as a batch: one read of ``n_ctx + 1`` tokens each."""
    n = self.n_ctx
    starts = np.asarray(idx, np.int64) * n
    window = self._tokens.windows(starts, n + 1).astype(np.int32)
    real = (starts[:, None] + np.arange(1, n + 1)[None, :]) < self.num_tokens
    return {"inputs": window[:, :-1], "targets": window[:, 1:], "loss_mask": real.astype(np.float32)}

  def train_batches(self, rows: pipeline.Rows, seed: int, start_step: int = 0, prefetch: int = 4):
    """Endless shuffled batches for steps ``start_step, start_step + 1, ...`` (this host's rows),
    made on a background thread ``prefetch`` batches ahead."""
    return pipeline.train_batches_np(self.fetch, self.num_windows, rows, seed=seed, start_step=start_step,
                                     prefetch=prefetch)

  def eval_batches(self, rows: pipeline.Rows):
    """One ordered pass over every window, the last batch completed with masked repeats."""
    return pipeline.eval_batches_np(self.fetch, self.num_windows, rows)

  def data_state(self, global_batch_size: int, seed: int) -> dict:
    """What a checkpoint records so a resume can check it continues the same batches."""
    return {
        **pipeline.state_dict(self.num_windows, global_batch_size, seed), "n_ctx": self.n_ctx,
        "data_fingerprint": self.fingerprint
    }

  def close(self):
    self._tokens.close()
