"""What goes into a token store: input files (plain or ``.gz``/``.xz``/``.bz2``) or a tfds split, decoded
strictly or with replacement, cut into documents (``--doc_split``), numbered in corpus order, held out for
``valid`` by a hash of that number, and handed to the tokenisers in bounded chunks (:mod:`.prepare`)."""

from __future__ import annotations

import bz2
import collections
import dataclasses
import glob as globlib
import gzip
import lzma
import os
import re
from typing import Callable, Iterator, Sequence

import numpy as np

from gpt1_jax import extras
from gpt1_jax.data import tf

DOC_SPLITS = ("file", "line", "blank_line")
DOC_SPLIT_ALIASES = {"paragraph": "blank_line"}  # the name the README and most users reach for
ERRORS = ("strict", "replace")
_CHUNK_DOCS = 1024  # documents per worker task...
_CHUNK_CHARS = 4 << 20  # ...or this many characters, whichever comes first
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_REPLACEMENT_UTF8 = "\ufffd".encode()


class PrepareError(ValueError):
  """A problem with the inputs or settings, reported without a traceback by the CLI."""


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


def read_bytes(path: str) -> bytes:
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
class Source:
  """Where documents come from: files or one tfds split."""

  description: dict  # recorded in the manifest; identifies the input for idempotency
  total: int  # progress units: bytes of the files, or tfds examples (0 if unknown)
  unit: str
  items: Callable[[str, str, collections.Counter], Iterator[tuple[str | None, int]]]


def file_source(patterns: Sequence[str]) -> Source:
  files = resolve_inputs(patterns)
  stats = [tf.io.gfile.stat(p) for p in files]
  description = {
      "input": list(patterns),
      "files": [{
          "path": p,
          "bytes": s.length,
          "mtime_ns": s.mtime_nsec
      } for p, s in zip(files, stats)]
  }

  def items(doc_split, errors, replaced):
    for path, stat in zip(files, stats):
      text, n = decode(read_bytes(path), path, errors)
      if n:
        replaced[path] += n
      for doc in split_documents(text, doc_split):
        yield doc, 0
      yield None, stat.length

  return Source(description, sum(s.length for s in stats), "B", items)


def tfds_source(spec: str, text_key: str | None, data_dir: str | None) -> Source:
  tfds = extras.require("tensorflow_datasets", "tasks", "--tfds")  # importing it is slow: only here

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

  return Source(description, total, "ex", items)


@dataclasses.dataclass
class Chunk:
  first: int  # corpus index of its first document
  docs: list[str]
  progress: int


def chunks(items: Iterator[tuple[str | None, int]]) -> Iterator[Chunk]:
  first, docs, chars, progress = 0, [], 0, 0
  for doc, step in items:
    progress += step
    if doc is not None:
      docs.append(doc)
      chars += len(doc)
    if len(docs) >= _CHUNK_DOCS or chars >= _CHUNK_CHARS:
      yield Chunk(first, docs, progress)
      first, docs, chars, progress = first + len(docs), [], 0, 0
  if docs or progress:
    yield Chunk(first, docs, progress)
