"""Writing a token store (the format :mod:`.store` reads): shards of the ``_start_``-marked stream with
their document index, under temporary names, renamed into place with the manifest last, so an
interrupted write never leaves a manifest pointing at partial shards. Three writers share it: a tokenised
corpus (:mod:`.prepare`), random ids at disk speed (:func:`synthetic`), and a format-1 TFRecord directory
rewritten in place (:func:`migrate`)."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import socket
from typing import Callable

from absl import logging
import numpy as np

from gpt1_jax import workdir
from gpt1_jax.data import lm, store, tf
from gpt1_jax.data.corpus import PrepareError
from gpt1_jax.tokenizer import GPT1Tokenizer, SPECIAL_TOKENS

SPLITS = ("train", "valid")
_TMP_PREFIX = ".prepare-tmp-"
RECORD = ("token store (gpt1_jax/data/store.py): per shard, .bin = little-endian uint16 ids, each document "
          "preceded by _start_; .idx = int64 offsets of the documents' markers, then the shard length")


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with tf.io.gfile.GFile(path, "rb") as f:
    while block := f.read(16 << 20):
      digest.update(block)
  return digest.hexdigest()


class ShardWriter:
  """Writes one shard of the token store: the marked stream (``.bin``) and its document index."""

  def __init__(self, tmp: str, start_id: int):
    self.tmp, self.start_id = tmp, start_id
    self._f = tf.io.gfile.GFile(tmp + ".bin", "wb")
    self._offsets = [np.zeros(1, np.int64)]
    self.documents = self.tokens = 0

  def add(self, flat: np.ndarray, lengths: np.ndarray):
    """Documents ``lengths`` laid out back to back in ``flat``, each written after ``_start_``."""
    marked = lengths + 1
    where = np.cumsum(marked) - marked  # each marker's position within this write
    out = np.empty(int(marked.sum()), store.TOKEN_DTYPE)
    is_marker = np.zeros(out.size, bool)
    is_marker[where] = True
    out[is_marker] = self.start_id
    out[~is_marker] = flat
    self._f.write(out.tobytes())
    self._offsets.append(self.documents + self.tokens + np.cumsum(marked))
    self.documents += len(lengths)
    self.tokens += int(lengths.sum())

  def close(self) -> None:
    self._f.close()
    with tf.io.gfile.GFile(self.tmp + ".idx", "wb") as f:
      f.write(np.concatenate(self._offsets).astype(store.INDEX_DTYPE).tobytes())


def write_split(split: str, data, num_shards: int, tmp_dir: str, start_id: int) -> list[dict]:
  """Writes the split's documents in order into shards of about equal token counts."""
  lengths = np.concatenate(data.lengths) if data.lengths else np.zeros(0, np.int64)
  if lengths.size == 0:
    return []
  before = np.cumsum(lengths) - lengths
  shard_of = np.minimum(before * num_shards // int(lengths.sum()), num_shards - 1)
  writers: list[ShardWriter] = []
  current, doc = -1, 0
  try:
    for flat, chunk_lengths in zip(data.tokens, data.lengths):
      ends = np.cumsum(chunk_lengths)
      chunk_shards = shard_of[doc:doc + len(chunk_lengths)]
      # shard_of is non-decreasing, so each shard's documents of this chunk are one run.
      for s in np.unique(chunk_shards).tolist():
        a, b = np.searchsorted(chunk_shards, [s, s + 1])
        if s != current:  # a shard holding no document start is skipped
          if writers:
            writers[-1].close()
          current = s
          writers.append(ShardWriter(os.path.join(tmp_dir, f"{split}-{len(writers):05d}"), start_id))
        writers[-1].add(flat[ends[a] - chunk_lengths[a]:ends[b - 1]], chunk_lengths[a:b])
      doc += len(chunk_lengths)
  finally:
    if writers:
      writers[-1].close()
  return [shard_entry(split, i, len(writers), w.tmp, w.documents, w.tokens) for i, w in enumerate(writers)]


def shard_entry(split: str, i: int, count: int, tmp: str, documents: int, tokens: int) -> dict:
  name = store.shard_name(split, i, count)
  return {
      "file": name,
      "index": store.index_name(name),
      "documents": documents,
      "tokens": tokens,
      "bytes": tf.io.gfile.stat(tmp + ".bin").length,
      "sha256": _sha256(tmp + ".bin"),
      "index_bytes": tf.io.gfile.stat(tmp + ".idx").length,
      "index_sha256": _sha256(tmp + ".idx"),
      "tmp": tmp
  }


def identity(manifest: dict) -> dict:
  """The parts of a manifest that determine its shards."""
  keys = ("format_version", "tokenizer_fingerprint", "doc_split", "valid_fraction", "num_shards")
  sources = {k: v for k, v in manifest.get("sources", {}).items() if k != "input"}
  return {**{k: manifest.get(k) for k in keys}, "sources": sources, "errors": manifest.get("errors", {}).get("mode")}


_locked: set[str] = set()  # outputs this process holds (prepare migrates under its own lock)


@contextlib.contextmanager
def locked(output: str):
  """Holds ``OUTPUT/.lock`` (``workdir.Lock``) while a writer works on ``output``.

  A second ``prepare`` (or ``--migrate``, ``--synthetic_tokens``) on the same output is refused
  naming the first, before it imports TensorFlow or tokenises: two writers would delete each
  other's temporary shards. Re-entrant within a process. A directory this call created that
  still holds nothing but the lock when the writer fails (bad input) is removed again.
  """
  key = output if store.is_url(output) else os.path.abspath(output)
  if key in _locked:
    yield
    return
  created = not store.is_url(output) and not os.path.exists(output)
  lock = workdir.Lock(
      output, what="output", multihost=False,
      advice="Two prepare runs on one --output would delete each other's shards: wait for it "
      "to finish, stop it, or use another --output")
  try:
    lock.__enter__()
  except workdir.WorkdirError as e:
    raise PrepareError(str(e)) from None
  _locked.add(key)
  try:
    yield
  except BaseException:
    if created and os.listdir(output) == [workdir.LOCK_NAME]:
      os.remove(lock.path)  # still holding it: no other run can have it open and locked
      os.rmdir(output)
    raise
  finally:
    _locked.discard(key)
    lock.__exit__(None, None, None)


def _stale_temp_dirs(output: str) -> list[str]:
  """Temporary directories of killed runs. Locally every one is stale: this run holds
  ``OUTPUT/.lock``. An object store has no locks, so there only this host's dead processes' are."""
  found = tf.io.gfile.glob(os.path.join(output, _TMP_PREFIX + "*"))
  if not store.is_url(output):
    return found
  stale = []
  for path in found:
    host, _, pid = os.path.basename(path.rstrip("/"))[len(_TMP_PREFIX):].rpartition("-")
    if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
      stale.append(path)
  return stale


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def existing_manifest(output: str) -> dict | None:
  path = os.path.join(output, lm.MANIFEST)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path, "r") as f:
      manifest = json.load(f)
    return manifest if isinstance(manifest, dict) else None
  except ValueError:
    return None


def write_output(output: str, manifest: dict, write_split: Callable[[str, str], tuple[list[dict], dict]]):
  """Writes every split's shards under temporary names (``write_split(split, tmp_dir)`` returns
  the shard entries and the split's counts), renames them, then the manifest last, holding
  ``locked(output)`` (``prepare`` takes it earlier, before tokenising)."""
  with locked(output):
    _write_output(output, manifest, write_split)


def _write_output(output: str, manifest: dict, write_split):
  tf.io.gfile.makedirs(output)
  for stale in _stale_temp_dirs(output):
    tf.io.gfile.rmtree(stale)  # left by a killed run
  tmp_dir = os.path.join(output, f"{_TMP_PREFIX}{socket.gethostname()}-{os.getpid()}")
  tf.io.gfile.makedirs(tmp_dir)
  try:
    manifest["splits"] = {}
    for split in SPLITS:
      shards, counts = write_split(split, tmp_dir)
      manifest["splits"][split] = {**counts, "shards": shards}
    manifest["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest_path = os.path.join(output, lm.MANIFEST)
    if tf.io.gfile.exists(manifest_path):
      tf.io.gfile.remove(manifest_path)  # from here until the rename below, readers see no manifest
    for split in SPLITS:
      for shard in manifest["splits"][split]["shards"]:
        tmp = shard.pop("tmp")
        tf.io.gfile.rename(tmp + ".bin", os.path.join(output, shard["file"]), overwrite=True)
        tf.io.gfile.rename(tmp + ".idx", os.path.join(output, shard["index"]), overwrite=True)
    with tf.io.gfile.GFile(os.path.join(tmp_dir, lm.MANIFEST), "w") as f:
      json.dump(manifest, f, indent=1)
    tf.io.gfile.rename(os.path.join(tmp_dir, lm.MANIFEST), manifest_path, overwrite=True)
  finally:
    tf.io.gfile.rmtree(tmp_dir)
  current = {name for split in SPLITS for s in manifest["splits"][split]["shards"] for name in (s["file"], s["index"])}
  for split in SPLITS:  # shards of an earlier run (or format) that this manifest does not list
    for ext in ("tfrecord", "bin", "idx"):
      for path in tf.io.gfile.glob(os.path.join(output, f"{split}-[0-9]*-of-[0-9]*.{ext}")):
        if os.path.basename(path) not in current:
          tf.io.gfile.remove(path)


# ----------------------------------------------------------------------------- synthetic
def synthetic(output: str, num_tokens: int, *, mean_document: int = 1000, num_shards: int = 16,
              valid_fraction: float = 0.0005, seed: int = 0, tokenizer_fingerprint: str | None = None) -> dict:
  """A token store of ``num_tokens`` uniformly random ids in documents of geometric length
  (mean ``mean_document``), written at disk speed without tokenising: for measuring and
  smoke-testing the input path at corpus scale (``--synthetic_tokens=N``). Its manifest
  carries the GPT-1 tokenizer's fingerprint (so a pretraining config accepts it) and says
  ``"synthetic"`` in its sources. Memory: one block of 32M tokens."""
  if num_tokens < 2 or mean_document < 1:
    raise PrepareError(f"--synthetic_tokens={num_tokens} (mean document {mean_document}): need at least 2 tokens")
  if tokenizer_fingerprint is None:
    tokenizer_fingerprint = GPT1Tokenizer().fingerprint
  vocab, start_id = 40478 + len(SPECIAL_TOKENS), 40478
  rng = np.random.default_rng(seed)
  manifest = {
      "format_version": lm.FORMAT_VERSION,
      "tokenizer_fingerprint": tokenizer_fingerprint,
      "vocab_size": vocab,
      "start_id": start_id,
      "record": RECORD,
      "sources": {
          "synthetic": {
              "tokens": int(num_tokens),
              "mean_document": mean_document,
              "seed": seed
          }
      },
      "doc_split": "synthetic",
      "valid_fraction": valid_fraction,
      "num_shards": num_shards,
      "errors": {
          "mode": "strict",
          "replacements": 0
      }
  }
  counts = {"valid": max(2, int(num_tokens * valid_fraction)) if valid_fraction else 0}
  counts["train"] = int(num_tokens) - counts["valid"]
  block = 32 << 20

  def write_split(split, tmp_dir):
    total = counts[split]
    shards = []
    n = num_shards if split == "train" else max(1, int(np.ceil(num_shards * valid_fraction)))
    bounds = np.linspace(0, total, n + 1).astype(np.int64) if total else np.zeros(1, np.int64)
    for i in range(len(bounds) - 1):
      writer = ShardWriter(os.path.join(tmp_dir, f"{split}-{i:05d}"), start_id)
      left = int(bounds[i + 1] - bounds[i])
      while left > 0:
        take = min(left, block)
        lengths = rng.geometric(1 / mean_document, size=2 * take // mean_document + 16)
        lengths = lengths[:np.searchsorted(np.cumsum(lengths), take) + 1]
        lengths[-1] -= lengths.sum() - take  # the block ends with its last document
        lengths = lengths[lengths > 0]
        writer.add(rng.integers(0, start_id, size=take, dtype=np.uint16), lengths.astype(np.int64))
        left -= take
      writer.close()
      shards.append(shard_entry(split, i, len(bounds) - 1, writer.tmp, writer.documents, writer.tokens))
    return shards, {"documents": sum(s["documents"] for s in shards), "tokens": total}

  write_output(output, manifest, write_split)
  logging.info("wrote a synthetic token store of %d tokens to %s", num_tokens, output)
  return manifest


# ----------------------------------------------------------------------------- migration
def migrate(data_dir: str) -> dict:
  """Rewrites a format-1 (TFRecord) directory as a token store in place; returns the manifest.

  Shard by shard (memory: one shard), the same documents in the same shards, so the stream,
  and hence every batch, is unchanged; the manifest keeps the old data fingerprints, so
  checkpoints trained on the old directory resume. Interrupted, it leaves the old directory
  intact (the new manifest is renamed into place last, the TFRecords removed after it).
  """
  try:
    old = lm.load_manifest(data_dir)
  except (OSError, ValueError) as e:
    raise PrepareError(f"--migrate={data_dir}: {e}") from None
  if old["format_version"] == lm.FORMAT_VERSION:
    logging.info("%s is already a format-%d token store: nothing to migrate", data_dir, lm.FORMAT_VERSION)
    return old
  manifest = {k: v for k, v in old.items() if k not in ("splits", "created")}
  manifest.update(
      format_version=lm.FORMAT_VERSION, record=RECORD, migrated_from={
          "format_version": old["format_version"],
          "created": old.get("created"),
          "data_fingerprints": {
              s: lm.data_fingerprint(old, s) for s in old["splits"]
          }
      })

  def write_split(split, tmp_dir):
    info = old["splits"].get(split, {"documents": 0, "tokens": 0, "shards": []})
    shards = []
    for i, shard in enumerate(info["shards"]):
      path = os.path.join(data_dir, shard["file"])
      writer = ShardWriter(os.path.join(tmp_dir, f"{split}-{i:05d}"), old["start_id"])
      try:
        for block in tf.data.TFRecordDataset(path, buffer_size=16 << 20).batch(4096):
          docs = [np.frombuffer(r, store.TOKEN_DTYPE) for r in block.numpy()]
          writer.add(np.concatenate(docs), np.array([len(d) for d in docs], np.int64))
      except tf.errors.OpError as e:
        raise PrepareError(f"{path}: unreadable shard ({e.message.strip()}); re-run prepare on the corpus "
                           f"instead of migrating") from None
      finally:
        writer.close()
      if (writer.documents, writer.tokens) != (shard["documents"], shard["tokens"]):
        raise PrepareError(f"{path}: {writer.documents} documents / {writer.tokens} tokens, but the manifest "
                           f"records {shard['documents']} / {shard['tokens']}: corrupt shard")
      shards.append(shard_entry(split, i, len(info["shards"]), writer.tmp, writer.documents, writer.tokens))
    return shards, {"documents": info["documents"], "tokens": info["tokens"]}

  write_output(data_dir, manifest, write_split)
  logging.info("migrated %s to the format-%d token store (%s)", data_dir, lm.FORMAT_VERSION,
               ", ".join(f"{s}: {len(manifest['splits'][s]['shards'])} shards" for s in SPLITS))
  return manifest
