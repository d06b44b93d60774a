"""Tokenise a pretraining corpus once into a token store and a manifest (read by ``lm.py``).

Usage::

  python -m gpt1_jax.data.prepare --input='corpus/*.txt' --output=/data/books
  python -m gpt1_jax.data.prepare --input=data/sst2/unlabelled.txt --doc_split=line \\
      --output=workdirs/sst2_lm
  python -m gpt1_jax.data.prepare --tfds=lm1b:train --output=gs://bucket/lm1b

Files ending in ``.gz``, ``.xz`` or ``.bz2`` are decompressed as they are read.

Documents. ``--doc_split`` says what one document is: a whole file (or tfds example),
each non-empty line, or each paragraph between blank lines. Documents are numbered in
corpus order (files sorted within each glob, globs in flag order); document ``i`` is held
out for ``valid`` when ``splitmix64(i) / 2**64 < --valid_fraction``, so the held-out set
is stable across runs and worker counts. A document that tokenises to nothing is skipped
and counted.

Output. The token store (``store.py``): ``{train,valid}-NNNNN-of-MMMMM.bin``, the ids as
little-endian uint16 with each document preceded by ``_start_``, and ``.idx`` beside each
(document offsets), documents kept in corpus order and split into shards of about equal
token counts; and ``manifest.json`` with the counts and sha256 of every file, the tokenizer
fingerprint, the sources and settings. ``--migrate=DIR`` converts a format-1 (TFRecord)
directory in place; ``--verify=DIR`` checks every shard's content against the manifest.

Safety. With ``--errors=strict`` every input file is decoded before tokenising starts
and the first byte that is not UTF-8 is reported with its file and offset (tfds text is
checked as it is read; nothing is written before the end either way); ``--errors=replace``
substitutes U+FFFD and counts the substitutions. Shards are written under a temporary
name and renamed, the manifest last, so an interrupted run never leaves a manifest that
points at partial shards. A rerun whose inputs (paths, sizes, mtimes), tokenizer and
settings match the manifest does nothing.

The tokenised corpus is held in memory until it is written (2 bytes a token; the trainer,
which reads windows by offset, never holds it); text is streamed through a worker pool.
"""

from __future__ import annotations

import bz2
import collections
import dataclasses
import datetime
import glob as globlib
import gzip
import hashlib
import itertools
import json
import lzma
import multiprocessing
import os
import re
import sys
import time
from typing import Callable, Iterator, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tqdm

from gpt1_jax.data import lm
from gpt1_jax.data import store
from gpt1_jax.data import tf

DOC_SPLITS = ("file", "line", "blank_line")
ERRORS = ("strict", "replace")
SPLITS = ("train", "valid")
_TMP_PREFIX = ".prepare-tmp-"
_CHUNK_DOCS = 1024  # documents per worker task...
_CHUNK_CHARS = 4 << 20  # ...or this many characters, whichever comes first
_BYTES_PER_WORKER = 4 << 20  # default --workers: at most one per this much input text
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_REPLACEMENT_UTF8 = "\ufffd".encode()


_RECORD = ("token store (gpt1_jax/data/store.py): per shard, .bin = little-endian uint16 ids, each document "
           "preceded by _start_; .idx = int64 offsets of the documents' markers, then the shard length")


class PrepareError(ValueError):
  """A problem with the inputs or settings, reported without a traceback by the CLI."""


# ----------------------------------------------------------------------------- documents
def split_documents(text: str, doc_split: str) -> list[str]:
  """The documents of one file (or tfds example) under ``--doc_split``."""
  if doc_split == "file":
    return [text]
  parts = text.split("\n") if doc_split == "line" else _PARAGRAPH_BREAK.split(text)
  return [p for p in (part.strip() for part in parts) if p]


def heldout(doc_index: np.ndarray, fraction: float) -> np.ndarray:
  """Whether each document index belongs to ``valid``: splitmix64 of the index, as a
  uniform number in [0, 1), below ``fraction``."""
  z = np.asarray(doc_index, np.uint64) + np.uint64(0x9E3779B97F4A7C15)
  with np.errstate(over="ignore"):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  z = z ^ (z >> np.uint64(31))
  return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction


def decode(raw: bytes, name: str, errors: str) -> tuple[str, int]:
  """UTF-8 text of ``raw`` and the number of U+FFFD substituted (``errors='replace'``)."""
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    if errors == "strict":
      raise PrepareError(f"{name}: not valid UTF-8 at byte offset {e.start} ({e.reason}: "
                         f"{raw[e.start:e.start + 4]!r}); fix the file or pass --errors=replace") from None
    text = raw.decode("utf-8", "replace")
    # A genuine U+FFFD in the file decodes as itself; its 3 bytes cannot belong to an
    # invalid sequence (0xEF is never a continuation byte), so the difference is exact.
    replaced = text.count("\ufffd") - raw.count(_REPLACEMENT_UTF8)
  else:
    replaced = 0
  return text.removeprefix("\ufeff"), replaced


# Compressed inputs are read whole and decompressed in memory, by their suffix: a shipped
# corpus sample stays small in the repository and needs no unpacking step.
_DECOMPRESS = {".gz": gzip, ".xz": lzma, ".bz2": bz2}


def _read(path: str) -> bytes:
  with tf.io.gfile.GFile(path, "rb") as f:
    raw = f.read()
  lib = _DECOMPRESS.get(os.path.splitext(path)[1].lower())
  if lib is None:
    return raw
  try:
    return lib.decompress(raw)
  except (OSError, EOFError, ValueError, lzma.LZMAError) as e:  # each library raises its own on a damaged stream
    raise PrepareError(f"{path}: cannot decompress as {lib.__name__} ({e})") from None


def resolve_inputs(patterns: Sequence[str]) -> list[str]:
  """The files matched by the globs (each sorted, in flag order, without repeats)."""
  files: list[str] = []
  for pattern in patterns:
    if "://" in pattern:
      matched = tf.io.gfile.glob(pattern)
    else:
      matched = [os.path.abspath(p) for p in globlib.glob(os.path.expanduser(pattern), recursive=True)]
    matched = sorted(p for p in matched if not tf.io.gfile.isdir(p))
    if not matched:
      raise PrepareError(f"--input={pattern!r} matches no files (cwd {os.getcwd()})")
    files.extend(matched)
  return list(dict.fromkeys(files))


@dataclasses.dataclass
class _Source:
  """Where documents come from: files or one tfds split."""

  description: dict  # recorded in the manifest; identifies the input for idempotency
  total: int  # progress units: bytes of the files, or tfds examples (0 if unknown)
  unit: str
  items: Callable[[str, str, collections.Counter], Iterator[tuple[str | None, int]]]


def _file_source(patterns: Sequence[str]) -> _Source:
  files = resolve_inputs(patterns)
  stats = [tf.io.gfile.stat(p) for p in files]
  description = {"input": list(patterns),
                 "files": [{"path": p, "bytes": s.length, "mtime_ns": s.mtime_nsec} for p, s in zip(files, stats)]}

  def items(doc_split, errors, replaced):
    for path, stat in zip(files, stats):
      text, n = decode(_read(path), path, errors)
      if n:
        replaced[path] += n
      for doc in split_documents(text, doc_split):
        yield doc, 0
      yield None, stat.length

  return _Source(description, sum(s.length for s in stats), "B", items)


def _tfds_source(spec: str, text_key: str | None, data_dir: str | None) -> _Source:
  import tensorflow_datasets as tfds  # only for --tfds: importing it is slow

  name, _, split = spec.partition(":")
  split = split or "train"
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for unknown names / versions
    raise PrepareError(f"--tfds={spec!r}: {e}") from None
  features = builder.info.features
  keys = list(features.keys())
  if text_key is None:
    texty = [k for k in keys if "text" in k]
    text_key = "text" if "text" in keys else (texty[0] if len(texty) == 1 else None)
    if text_key is None:
      raise PrepareError(f"--tfds={spec!r}: cannot tell which feature holds the text among {keys}; "
                         f"pass --tfds_text_key")
  elif text_key not in keys:
    raise PrepareError(f"--tfds={spec!r}: no feature {text_key!r} (has {keys})")
  try:
    total = int(builder.info.splits[split].num_examples)
  except Exception:  # unknown until prepared, or a split expression tfds cannot size
    total = 0
  description = {"tfds": name, "split": split, "full_name": builder.info.full_name, "text_key": text_key}

  def items(doc_split, errors, replaced):
    ds = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False)
    for i, example in enumerate(tfds.as_numpy(ds)):
      where = f"tfds {name}:{split} example {i}"
      text, n = decode(bytes(example[text_key]), where, errors)
      if n:
        replaced[where] += n
      for doc in split_documents(text, doc_split):
        yield doc, 0
      yield None, 1

  return _Source(description, total, "ex", items)


@dataclasses.dataclass
class _Chunk:
  first: int  # corpus index of its first document
  docs: list[str]
  progress: int


def _chunks(items: Iterator[tuple[str | None, int]]) -> Iterator[_Chunk]:
  first, docs, chars, progress = 0, [], 0, 0
  for doc, step in items:
    progress += step
    if doc is not None:
      docs.append(doc)
      chars += len(doc)
    if len(docs) >= _CHUNK_DOCS or chars >= _CHUNK_CHARS:
      yield _Chunk(first, docs, progress)
      first, docs, chars, progress = first + len(docs), [], 0, 0
  if docs or progress:
    yield _Chunk(first, docs, progress)


# ----------------------------------------------------------------------------- tokenising
_worker_tokenizer = None


def _start_worker(tokenizer_factory):
  global _worker_tokenizer
  _worker_tokenizer = tokenizer_factory()


def _encode_in_worker(docs):
  return encode_documents(_worker_tokenizer, docs)


def encode_documents(tokenizer, docs: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
  """(all ids as little-endian uint16, ids per document, unknown pieces emitted)."""
  unk_before = getattr(tokenizer, "unk_count", 0)
  ids = tokenizer.encode_batch(docs)
  lengths = np.fromiter(map(len, ids), np.int64, len(ids))
  flat = np.fromiter(itertools.chain.from_iterable(ids), np.int64, int(lengths.sum()))
  if flat.size and (flat.min() < 0 or flat.max() >= min(tokenizer.vocab_size, 1 << 16)):
    raise PrepareError(f"the tokenizer produced id {int(flat.max())} outside [0, {tokenizer.vocab_size})")
  return flat.astype(lm.TOKEN_DTYPE), lengths, getattr(tokenizer, "unk_count", 0) - unk_before


def _tokenise(chunks: Iterator[_Chunk], tokenizer_factory, workers: int):
  """Yields (chunk, encode_documents(...)) in corpus order."""
  if workers <= 1:
    tokenizer = tokenizer_factory()
    for chunk in chunks:
      yield chunk, encode_documents(tokenizer, chunk.docs)
    return
  # fork: a spawned worker would re-import TensorFlow (seconds and ~700 MB each); workers
  # touch only the tokenizer, never TF.
  methods = multiprocessing.get_all_start_methods()
  context = multiprocessing.get_context("fork" if "fork" in methods else None)
  with context.Pool(workers, initializer=_start_worker, initargs=(tokenizer_factory,)) as pool:
    pending = collections.deque()
    for chunk in chunks:
      pending.append((chunk, pool.apply_async(_encode_in_worker, (chunk.docs,))))
      if len(pending) >= 4 * workers:  # bounded read-ahead: text never piles up in memory
        done, result = pending.popleft()
        yield done, result.get()
    while pending:
      done, result = pending.popleft()
      yield done, result.get()


@dataclasses.dataclass
class _SplitTokens:
  tokens: list = dataclasses.field(default_factory=list)  # uint16 arrays, one per chunk
  lengths: list = dataclasses.field(default_factory=list)  # int64 arrays, one per chunk

  def add(self, flat: np.ndarray, lengths: np.ndarray, keep: np.ndarray):
    if keep.any():
      self.tokens.append(flat[np.repeat(keep, lengths)])
      self.lengths.append(lengths[keep])

  @property
  def documents(self) -> int:
    return sum(len(x) for x in self.lengths)

  @property
  def tokens_count(self) -> int:
    return sum(int(x.sum()) for x in self.lengths)


# ----------------------------------------------------------------------------- writing
def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with tf.io.gfile.GFile(path, "rb") as f:
    while block := f.read(16 << 20):
      digest.update(block)
  return digest.hexdigest()


class _ShardWriter:
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


def _write_split(split: str, data: _SplitTokens, num_shards: int, tmp_dir: str, start_id: int) -> list[dict]:
  """Writes the split's documents in order into shards of about equal token counts."""
  lengths = np.concatenate(data.lengths) if data.lengths else np.zeros(0, np.int64)
  if lengths.size == 0:
    return []
  before = np.cumsum(lengths) - lengths
  shard_of = np.minimum(before * num_shards // int(lengths.sum()), num_shards - 1)
  writers: list[_ShardWriter] = []
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
          writers.append(_ShardWriter(os.path.join(tmp_dir, f"{split}-{len(writers):05d}"), start_id))
        writers[-1].add(flat[ends[a] - chunk_lengths[a]:ends[b - 1]], chunk_lengths[a:b])
      doc += len(chunk_lengths)
  finally:
    if writers:
      writers[-1].close()
  return [_shard_entry(split, i, len(writers), w.tmp, w.documents, w.tokens) for i, w in enumerate(writers)]


def _shard_entry(split: str, i: int, count: int, tmp: str, documents: int, tokens: int) -> dict:
  name = store.shard_name(split, i, count)
  return {"file": name, "index": store.index_name(name), "documents": documents, "tokens": tokens,
          "bytes": tf.io.gfile.stat(tmp + ".bin").length, "sha256": _sha256(tmp + ".bin"),
          "index_bytes": tf.io.gfile.stat(tmp + ".idx").length, "index_sha256": _sha256(tmp + ".idx"),
          "tmp": tmp}


def _identity(manifest: dict) -> dict:
  """The parts of a manifest that determine its shards."""
  keys = ("format_version", "tokenizer_fingerprint", "doc_split", "valid_fraction", "num_shards")
  sources = {k: v for k, v in manifest.get("sources", {}).items() if k != "input"}
  return {**{k: manifest.get(k) for k in keys}, "sources": sources,
          "errors": manifest.get("errors", {}).get("mode")}


def _existing_manifest(output: str) -> dict | None:
  path = os.path.join(output, lm.MANIFEST)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path, "r") as f:
      manifest = json.load(f)
    return manifest if isinstance(manifest, dict) else None
  except ValueError:
    return None


def _write_output(output: str, manifest: dict, write_split: Callable[[str, str], tuple[list[dict], dict]]):
  """Writes every split's shards under temporary names (``write_split(split, tmp_dir)`` returns
  the shard entries and the split's counts), renames them, then the manifest last."""
  tf.io.gfile.makedirs(output)
  for stale in tf.io.gfile.glob(os.path.join(output, _TMP_PREFIX + "*")):
    tf.io.gfile.rmtree(stale)  # left by a killed run
  tmp_dir = os.path.join(output, f"{_TMP_PREFIX}{os.getpid()}")
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


def _tokenised_splits(data: dict, num_shards: int, valid_fraction: float, start_id: int):
  split_shards = {"train": num_shards, "valid": max(1, int(np.ceil(num_shards * valid_fraction)))}

  def write_split(split, tmp_dir):
    shards = _write_split(split, data[split], split_shards[split], tmp_dir, start_id)
    counts = {"documents": data[split].documents, "tokens": data[split].tokens_count}
    data[split] = None  # free its tokens
    return shards, counts

  return write_split


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
    tokenizer_fingerprint = _default_tokenizer().fingerprint
  from gpt1_jax.tokenizer import SPECIAL_TOKENS  # ids only: no spaCy or ftfy
  vocab, start_id = 40478 + len(SPECIAL_TOKENS), 40478
  rng = np.random.default_rng(seed)
  manifest = {"format_version": lm.FORMAT_VERSION, "tokenizer_fingerprint": tokenizer_fingerprint,
              "vocab_size": vocab, "start_id": start_id, "record": _RECORD,
              "sources": {"synthetic": {"tokens": int(num_tokens), "mean_document": mean_document, "seed": seed}},
              "doc_split": "synthetic", "valid_fraction": valid_fraction, "num_shards": num_shards,
              "errors": {"mode": "strict", "replacements": 0}}
  counts = {"valid": max(2, int(num_tokens * valid_fraction)) if valid_fraction else 0}
  counts["train"] = int(num_tokens) - counts["valid"]
  block = 32 << 20

  def write_split(split, tmp_dir):
    total = counts[split]
    shards = []
    n = num_shards if split == "train" else max(1, int(np.ceil(num_shards * valid_fraction)))
    bounds = np.linspace(0, total, n + 1).astype(np.int64) if total else np.zeros(1, np.int64)
    for i in range(len(bounds) - 1):
      writer = _ShardWriter(os.path.join(tmp_dir, f"{split}-{i:05d}"), start_id)
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
      shards.append(_shard_entry(split, i, len(bounds) - 1, writer.tmp, writer.documents, writer.tokens))
    return shards, {"documents": sum(s["documents"] for s in shards), "tokens": total}

  _write_output(output, manifest, write_split)
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
  manifest.update(format_version=lm.FORMAT_VERSION, record=_RECORD,
                  migrated_from={"format_version": old["format_version"], "created": old.get("created"),
                                 "data_fingerprints": {s: lm.data_fingerprint(old, s) for s in old["splits"]}})

  def write_split(split, tmp_dir):
    info = old["splits"].get(split, {"documents": 0, "tokens": 0, "shards": []})
    shards = []
    for i, shard in enumerate(info["shards"]):
      path = os.path.join(data_dir, shard["file"])
      writer = _ShardWriter(os.path.join(tmp_dir, f"{split}-{i:05d}"), old["start_id"])
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
      shards.append(_shard_entry(split, i, len(info["shards"]), writer.tmp, writer.documents, writer.tokens))
    return shards, {"documents": info["documents"], "tokens": info["tokens"]}

  _write_output(data_dir, manifest, write_split)
  logging.info("migrated %s to the format-%d token store (%s)", data_dir, lm.FORMAT_VERSION,
               ", ".join(f"{s}: {len(manifest['splits'][s]['shards'])} shards" for s in SPLITS))
  return manifest


def _default_tokenizer():
  from gpt1_jax.tokenizer import GPT1Tokenizer
  return GPT1Tokenizer()


# ----------------------------------------------------------------------------- main
def prepare(output: str, *, inputs: Sequence[str] = (), tfds_name: str | None = None,
            tfds_text_key: str | None = None, tfds_data_dir: str | None = None, doc_split: str = "file",
            valid_fraction: float = 0.01, num_shards: int = 16, errors: str = "strict",
            workers: int | None = None, force: bool = False, tokenizer_factory: Callable | None = None,
            progress: bool = True) -> dict:
  """Tokenises the corpus into ``output`` (see the module docstring); returns the manifest.

  ``tokenizer_factory`` builds the tokenizer in each worker (default ``GPT1Tokenizer``).
  """
  if bool(inputs) == bool(tfds_name):
    raise PrepareError("give exactly one of --input (file globs) and --tfds (a tfds dataset)")
  if doc_split not in DOC_SPLITS:
    raise PrepareError(f"--doc_split={doc_split!r}: expected one of {DOC_SPLITS}")
  if errors not in ERRORS:
    raise PrepareError(f"--errors={errors!r}: expected one of {ERRORS}")
  if not 0 <= valid_fraction < 1:
    raise PrepareError(f"--valid_fraction={valid_fraction}: expected a fraction in [0, 1)")
  if num_shards < 1:
    raise PrepareError(f"--num_shards={num_shards}: expected at least 1")
  tokenizer_factory = tokenizer_factory or _default_tokenizer
  started = time.time()

  source = _file_source(inputs) if inputs else _tfds_source(tfds_name, tfds_text_key, tfds_data_dir)
  if not workers:
    workers = os.cpu_count() or 1
    if source.unit == "B":
      # Each worker warms its own tokenizer memo; on a few MB of text that costs as much as
      # the text itself (SST-2's 3.5 MB: ~2x the CPU time in two workers as in one).
      workers = max(1, min(workers, source.total // _BYTES_PER_WORKER))
  tokenizer = tokenizer_factory()
  if tokenizer.vocab_size > 1 << 16:
    raise PrepareError(f"vocabulary of {tokenizer.vocab_size} ids does not fit the uint16 shard format")
  manifest = {
      "format_version": lm.FORMAT_VERSION,
      "tokenizer_fingerprint": tokenizer.fingerprint,
      "vocab_size": tokenizer.vocab_size,
      "start_id": tokenizer.start_id,
      "record": _RECORD,
      "sources": source.description,
      "doc_split": doc_split,
      "valid_fraction": valid_fraction,
      "num_shards": num_shards,
      "errors": {"mode": errors, "replacements": 0},
  }
  del tokenizer  # the workers build their own
  old = _existing_manifest(output)
  if (old is not None and not force and old.get("format_version") == 1
      and _identity(old) == _identity({**manifest, "format_version": 1})):
    logging.info("%s holds these inputs in format 1 (TFRecord): migrating it instead of re-tokenising", output)
    return migrate(output)
  if old is not None and not force and _identity(old) == _identity(manifest):
    try:
      lm.load_manifest(output)
      logging.info("%s is up to date (same inputs, tokenizer and settings): nothing to do", output)
      return old
    except (OSError, ValueError) as e:
      logging.warning("%s matches these inputs but is damaged (%s): rebuilding", output, e)

  if inputs and errors == "strict":
    # Fail in seconds, not after hours of tokenising, if some file is not UTF-8.
    for entry in source.description["files"]:
      decode(_read(entry["path"]), entry["path"], "strict")

  replaced: collections.Counter = collections.Counter()
  data = {split: _SplitTokens() for split in SPLITS}
  empty = unknown = documents = 0
  bar = tqdm.tqdm(total=source.total or None, unit=source.unit, unit_scale=True, desc="tokenising",
                  disable=not progress)
  tokenising = time.time()
  with bar:
    for chunk, (flat, lengths, unk) in _tokenise(_chunks(source.items(doc_split, errors, replaced)),
                                                  tokenizer_factory, workers):
      valid = heldout(np.arange(chunk.first, chunk.first + len(lengths)), valid_fraction)
      nonempty = lengths > 0
      data["train"].add(flat, lengths, nonempty & ~valid)
      data["valid"].add(flat, lengths, nonempty & valid)
      empty += int((~nonempty).sum())
      documents += len(lengths)
      unknown += unk
      bar.update(chunk.progress)
  tokenising = time.time() - tokenising
  if documents == empty:
    raise PrepareError(f"empty corpus: {source.description.get('input') or tfds_name} gave {documents} documents "
                       f"and none has any tokens")
  if not data["train"].documents:
    raise PrepareError(f"all {documents - empty} documents were held out for valid; lower --valid_fraction")
  if valid_fraction > 0 and not data["valid"].documents:
    logging.warning("no document was held out for valid (%d documents, --valid_fraction=%g)",
                    documents - empty, valid_fraction)
  if empty:
    logging.warning("skipped %d empty documents (no tokens) of %d", empty, documents)
  for where, n in replaced.most_common(10):
    logging.warning("%s: %d invalid UTF-8 sequences replaced by U+FFFD", where, n)
  manifest["errors"]["replacements"] = sum(replaced.values())
  manifest["empty_documents_skipped"] = empty
  manifest["unknown_pieces"] = unknown

  _write_output(output, manifest, _tokenised_splits(data, num_shards, valid_fraction, manifest["start_id"]))
  seconds = time.time() - started
  total = sum(manifest["splits"][split]["tokens"] for split in SPLITS)
  for split in SPLITS:
    info = manifest["splits"][split]
    logging.info("%s: %d documents, %d tokens, %d shards", split, info["documents"], info["tokens"],
                 len(info["shards"]))
  logging.info("wrote %s in %.1f s: %d tokens, tokenised at %.0f tokens/s by %d workers; %d unknown pieces, "
               "%d replacements", output, seconds, total, total / max(tokenising, 1e-9), workers, unknown,
               manifest["errors"]["replacements"])
  return manifest


def _define_flags():
  flags.DEFINE_list("input", [], "Comma-separated globs of UTF-8 text files ('**' recurses).")
  flags.DEFINE_string("tfds", None, "A tensorflow-datasets corpus instead of files: NAME[:SPLIT] (default train).")
  flags.DEFINE_string("tfds_text_key", None, "Feature holding the text (default: 'text', or the only *text* one).")
  flags.DEFINE_string("tfds_data_dir", None, "tensorflow-datasets data_dir.")
  flags.DEFINE_string("output", None, "Directory for the shards and manifest.json.")
  flags.DEFINE_string("migrate", None, "Rewrite this format-1 (TFRecord) data directory as a token store in "
                      "place (no re-tokenising; batches and data fingerprint unchanged), then exit.")
  flags.DEFINE_float("synthetic_tokens", 0, "Instead of a corpus: write a token store of this many random ids "
                     "to --output (documents of ~1,000 tokens), for measuring the input path at scale.")
  flags.DEFINE_string("verify", None, "Check every shard of this data directory against its manifest "
                      "(sha256, counts, document index), then exit.")
  flags.DEFINE_enum("doc_split", "file", DOC_SPLITS,
                    "What one document is: a whole file, each non-empty line, or blank-line separated paragraphs.")
  flags.DEFINE_float("valid_fraction", 0.01, "Fraction of documents held out for the valid split.")
  flags.DEFINE_integer("num_shards", 16, "Train shards; valid gets max(1, ceil(num_shards * valid_fraction)).")
  flags.DEFINE_enum("errors", "strict", ERRORS, "Invalid UTF-8: fail naming file and offset, or replace by U+FFFD.")
  flags.DEFINE_integer("workers", 0, "Tokenizer processes (0: one per CPU core, at most one per 4 MB of "
                       "input text).")
  flags.DEFINE_bool("force", False, "Rebuild even if the manifest is up to date.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  modes = [name for name in ("output", "migrate", "verify") if getattr(f, name)]
  try:
    if len(modes) != 1:
      raise PrepareError("give exactly one of --output (prepare a corpus), --migrate=DIR and --verify=DIR"
                         + (f" (got {', '.join('--' + m for m in modes)})" if modes else ""))
    if f.migrate:
      migrate(f.migrate)
    elif f.synthetic_tokens:
      synthetic(f.output, int(f.synthetic_tokens), num_shards=f.num_shards)
    elif f.verify:
      try:
        checked = lm.verify(f.verify)
      except (OSError, ValueError) as e:
        raise PrepareError(str(e)) from None
      print(f"{f.verify}: every shard matches its manifest ({', '.join(f'{s}: {n}' for s, n in checked.items())})")
    else:
      prepare(f.output, inputs=f.input, tfds_name=f.tfds, tfds_text_key=f.tfds_text_key,
              tfds_data_dir=f.tfds_data_dir, doc_split=f.doc_split, valid_fraction=f.valid_fraction,
              num_shards=f.num_shards, errors=f.errors, workers=f.workers, force=f.force)
  except PrepareError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
