"""Tokenise a pretraining corpus once into a token store and a manifest (read by ``lm.py``).

Usage::

  python -m gpt1_jax.data.prepare --input='corpus/*.txt' --output=/data/books
  python -m gpt1_jax.data.prepare --input=data/sst2/unlabelled.txt --doc_split=line \\
      --output=workdirs/sst2_lm
  python -m gpt1_jax.data.prepare --tfds=lm1b:train --output=gs://bucket/lm1b

Files ending in ``.gz``, ``.xz`` or ``.bz2`` are decompressed as they are read.

Documents. ``--doc_split`` says what one document is: a whole file (or tfds example),
each non-empty line, or each paragraph between blank lines (``blank_line``, alias
``paragraph``). Documents are numbered in corpus order (files sorted within each glob,
globs in flag order); document ``i`` is held out for ``valid`` when ``splitmix64(i) /
2**64 < --valid_fraction``, so the held-out set is stable across runs and worker counts.
A document that tokenises to nothing is skipped and counted.

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
settings match the manifest, and whose shards all match their sha256 (a few ms for the
demo's IMDb corpus), does nothing; one with a damaged shard rebuilds the store, so rerunning
the same command repairs what ``--verify`` or training reports as corrupt. The output is
locked (``OUTPUT/.lock``, as the trainer locks its workdir) from before tokenising to the
end: a second run on it is refused with the first's pid and host.

The tokenised corpus is held in memory until it is written (2 bytes a token; the trainer,
which reads windows by offset, never holds it); text is streamed through a worker pool.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import multiprocessing
import os
import sys
import time
from typing import Callable, Iterator, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tqdm

from gpt1_jax.data import lm, store_writer
from gpt1_jax.data.store_writer import existing_manifest, identity, migrate, RECORD, SPLITS, synthetic, write_output
from gpt1_jax.tokenizer import GPT1Tokenizer
from gpt1_jax.data.corpus import (
    DOC_SPLIT_ALIASES,
    DOC_SPLITS,
    ERRORS,
    Chunk,
    PrepareError,  # noqa: F401
    chunks,
    decode,
    file_source,
    heldout,
    read_bytes,
    resolve_inputs,  # noqa: F401 - re-exported
    split_documents,  # noqa: F401 - re-exported
    tfds_source)

_BYTES_PER_WORKER = 4 << 20  # default --workers: at most one per this much input text

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


def _tokenise(chunks: Iterator[Chunk], tokenizer_factory, workers: int):
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


def _tokenised_splits(data: dict, num_shards: int, valid_fraction: float, start_id: int):
  split_shards = {"train": num_shards, "valid": max(1, int(np.ceil(num_shards * valid_fraction)))}

  def write_split(split, tmp_dir):
    shards = store_writer.write_split(split, data[split], split_shards[split], tmp_dir, start_id)
    counts = {"documents": data[split].documents, "tokens": data[split].tokens_count}
    data[split] = None  # free its tokens
    return shards, counts

  return write_split


def _default_tokenizer():
  return GPT1Tokenizer()


# ----------------------------------------------------------------------------- main
def prepare(output: str, *, inputs: Sequence[str] = (), tfds_name: str | None = None, tfds_text_key: str | None = None,
            tfds_data_dir: str | None = None, doc_split: str = "file", valid_fraction: float = 0.01,
            num_shards: int = 16, errors: str = "strict", workers: int | None = None, force: bool = False,
            tokenizer_factory: Callable | None = None, progress: bool = True) -> dict:
  """Tokenises the corpus into ``output`` (see the module docstring); returns the manifest.

  ``tokenizer_factory`` builds the tokenizer in each worker (default ``GPT1Tokenizer``).
  """
  if bool(inputs) == bool(tfds_name):
    raise PrepareError("give exactly one of --input (file globs) and --tfds (a tfds dataset)")
  doc_split = DOC_SPLIT_ALIASES.get(doc_split, doc_split)  # the manifest records the canonical name
  if doc_split not in DOC_SPLITS:
    raise PrepareError(f"--doc_split={doc_split!r}: expected one of {DOC_SPLITS} "
                       f"(or {', '.join(DOC_SPLIT_ALIASES)})")
  if errors not in ERRORS:
    raise PrepareError(f"--errors={errors!r}: expected one of {ERRORS}")
  if not 0 <= valid_fraction < 1:
    raise PrepareError(f"--valid_fraction={valid_fraction}: expected a fraction in [0, 1)")
  if num_shards < 1:
    raise PrepareError(f"--num_shards={num_shards}: expected at least 1")
  # Before TensorFlow (the file source's gfile), the tokenizer or any tokenising: a second run on
  # this output is refused at once, and a new output refused for bad input is not left behind.
  with store_writer.locked(output):
    tokenizer_factory = tokenizer_factory or _default_tokenizer
    started = time.time()

    source = file_source(inputs) if inputs else tfds_source(tfds_name, tfds_text_key, tfds_data_dir)
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
        "record": RECORD,
        "sources": source.description,
        "doc_split": doc_split,
        "valid_fraction": valid_fraction,
        "num_shards": num_shards,
        "errors": {
            "mode": errors,
            "replacements": 0
        },
    }
    del tokenizer  # the workers build their own
    old = existing_manifest(output)
    if (old is not None and not force and old.get("format_version") == 1 and identity(old) == identity({
        **manifest, "format_version": 1
    })):
      logging.info("%s holds these inputs in format 1 (TFRecord): migrating it instead of re-tokenising", output)
      return migrate(output)
    if old is not None and not force and identity(old) == identity(manifest):
      try:
        # Content, not only sizes: a same-size corruption must be rebuilt by rerunning this command,
        # as every "corrupt shard" error advises. Hashing costs little next to tokenising (the IMDb
        # demo corpus: 8 ms for its 11.5 MB of shards, against 31 s to tokenise it on one core).
        lm.verify(output)
        logging.info("%s is up to date (same inputs, tokenizer and settings): nothing to do", output)
        return old
      except (OSError, ValueError) as e:
        logging.warning("%s matches these inputs but is damaged (%s): rebuilding", output, e)

    if inputs and errors == "strict":
      # Fail in seconds, not after hours of tokenising, if some file is not UTF-8.
      for entry in source.description["files"]:
        decode(read_bytes(entry["path"]), entry["path"], "strict")

    replaced: collections.Counter = collections.Counter()
    data = {split: _SplitTokens() for split in SPLITS}
    empty = unknown = documents = 0
    # disable=None: tqdm's own test, a bar only on a terminal (a scheduler's log gets the summary lines)
    bar = tqdm.tqdm(total=source.total or None, unit=source.unit, unit_scale=True, desc="tokenising",
                    disable=None if progress else True)
    tokenising = time.time()
    with bar:
      for chunk, (flat, lengths, unk) in _tokenise(chunks(source.items(doc_split, errors, replaced)), tokenizer_factory,
                                                   workers):
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
      logging.warning("no document was held out for valid (%d documents, --valid_fraction=%g)", documents - empty,
                      valid_fraction)
    if empty:
      logging.warning("skipped %d empty documents (no tokens) of %d", empty, documents)
    for where, n in replaced.most_common(10):
      logging.warning("%s: %d invalid UTF-8 sequences replaced by U+FFFD", where, n)
    manifest["errors"]["replacements"] = sum(replaced.values())
    manifest["empty_documents_skipped"] = empty
    manifest["unknown_pieces"] = unknown

    write_output(output, manifest, _tokenised_splits(data, num_shards, valid_fraction, manifest["start_id"]))
    seconds = time.time() - started
    total = sum(manifest["splits"][split]["tokens"] for split in SPLITS)
    for split in SPLITS:
      info = manifest["splits"][split]
      logging.info("%s: %d documents, %d tokens, %d shards", split, info["documents"], info["tokens"],
                   len(info["shards"]))
    logging.info(
        "wrote %s in %.1f s: %d tokens, tokenised at %.0f tokens/s by %d workers; %d unknown pieces, "
        "%d replacements", output, seconds, total, total / max(tokenising, 1e-9), workers, unknown,
        manifest["errors"]["replacements"])
    return manifest


def define_flags():
  flags.DEFINE_list("input", [], "Comma-separated globs of UTF-8 text files ('**' recurses).")
  flags.DEFINE_string("tfds", None, "A tensorflow-datasets corpus instead of files: NAME[:SPLIT] (default train).")
  flags.DEFINE_string("tfds_text_key", None, "Feature holding the text (default: 'text', or the only *text* one).")
  flags.DEFINE_string("tfds_data_dir", None, "tensorflow-datasets data_dir.")
  flags.DEFINE_string("output", None, "Directory for the shards and manifest.json.")
  flags.DEFINE_string(
      "migrate", None, "Rewrite this format-1 (TFRecord) data directory as a token store in "
      "place (no re-tokenising; batches and data fingerprint unchanged), then exit.")
  flags.DEFINE_float(
      "synthetic_tokens", 0, "Instead of a corpus: write a token store of this many random ids "
      "to --output (documents of ~1,000 tokens), for measuring the input path at scale.")
  flags.DEFINE_string(
      "verify", None, "Check every shard of this data directory against its manifest "
      "(sha256, counts, document index), then exit.")
  flags.DEFINE_enum(
      "doc_split", "file", DOC_SPLITS + tuple(DOC_SPLIT_ALIASES),
      "What one document is: a whole file, each non-empty line, or blank-line separated paragraphs "
      "(blank_line, alias paragraph).")
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
      raise PrepareError("give exactly one of --output (prepare a corpus), --migrate=DIR and --verify=DIR" +
                         (f" (got {', '.join('--' + m for m in modes)})" if modes else ""))
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
      prepare(f.output, inputs=f.input, tfds_name=f.tfds, tfds_text_key=f.tfds_text_key, tfds_data_dir=f.tfds_data_dir,
              doc_split=f.doc_split, valid_fraction=f.valid_fraction, num_shards=f.num_shards, errors=f.errors,
              workers=f.workers, force=f.force)
  except PrepareError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
