"""The token store: a split's token stream on disk, read by position without loading it.

Format (``manifest.json`` ``format_version`` 2, written by ``prepare``). A split is a list of
shards; shard ``{split}-NNNNN-of-MMMMM.bin`` holds raw little-endian uint16 ids: each of its
documents preceded by ``_start_``, exactly as they appear in the stream ``lm.py`` packs, so
the split's stream is the concatenation of its ``.bin`` files and any window of it is one
byte range (two at a shard boundary). Beside each, ``.idx`` holds the int64 offsets (in
tokens) of its documents' markers followed by the shard's length, for readers that want
documents rather than windows.

Reading. A local path is read with ``os.pread`` (no memory map: the process's resident memory
stays the few windows it asked for, whatever the corpus size, and a memory cap on the process
does not count the corpus). A URL (``gs://``, ``s3://``, ``file://``...) is read with
tensorstore's key-value stores, which issue ranged GETs, so a host fetches only the bytes of
its own rows and never downloads a whole shard. Both keep nothing but open handles.

Checks. Opening a store checks that every shard has the size the manifest records (cheap:
one ``stat`` or two one-byte reads each). Content is checked against the manifest's sha256 by
``verify`` (``prepare --verify=DIR``), and automatically when a split is read whole
(``lm.load_tokens``) or is small enough to hash in a moment.
"""

from __future__ import annotations

import hashlib
import os
import threading

import numpy as np

TOKEN_DTYPE = np.dtype("<u2")  # ids are < 65536 (GPT-1 has 40,481)
INDEX_DTYPE = np.dtype("<i8")
PAD_ID = 0  # GPT-1 has no padding token; padded positions are masked, never learned
_MAX_OPEN = 512  # local shards kept open at once (a corpus may have thousands)


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.bin"


def index_name(shard_file: str) -> str:
  return shard_file[:-len(".bin")] + ".idx"


def is_url(path: str) -> bool:
  return "://" in path


def join(directory: str, name: str) -> str:
  return directory.rstrip("/") + "/" + name if is_url(directory) else os.path.join(directory, name)


# ----------------------------------------------------------------------------- files
class _LocalFile:

  def __init__(self, path: str):
    self.path = path
    self._fd = None
    self._lock = threading.Lock()

  def size(self) -> int | None:
    try:
      return os.stat(self.path).st_size
    except FileNotFoundError:
      return None

  def has_size(self, n: int) -> bool:
    return self.size() == n

  def read(self, offset: int, length: int) -> bytes:
    with self._lock:
      if self._fd is None:
        self._fd = os.open(self.path, os.O_RDONLY)
      fd = self._fd
    data = os.pread(fd, length, offset)
    if len(data) != length:
      raise OSError(f"{self.path}: short read ({len(data)} of {length} bytes at offset {offset}); the file "
                    f"shrank after it was checked")
    return data

  def read_all(self) -> bytes:
    with open(self.path, "rb") as f:
      return f.read()

  def close(self):
    with self._lock:
      if self._fd is not None:
        os.close(self._fd)
        self._fd = None


class _RemoteFile:
  """One object behind a tensorstore key-value store (``gs://bucket/dir/file`` etc.)."""

  def __init__(self, url: str):
    import tensorstore as ts
    self.path = url
    directory, self._key = url.rsplit("/", 1)
    self._kv = ts.KvStore.open(directory + "/").result()

  def size(self) -> int | None:
    return None if self._kv.read(self._key, byte_range=slice(0, 0)).result().state == "missing" else -1

  def has_size(self, n: int) -> bool:
    """True when the object is exactly ``n`` bytes: byte ``n - 1`` exists and byte ``n`` does not."""

    def exists(i):
      try:
        return self._kv.read(self._key, byte_range=slice(i, i + 1)).result().state == "value"
      except ValueError:  # OUT_OF_RANGE: the object ends before byte i
        return False

    return (n == 0 or exists(n - 1)) and not exists(n)

  def read_async(self, offset: int, length: int):
    return self._kv.read(self._key, byte_range=slice(offset, offset + length))

  def read(self, offset: int, length: int) -> bytes:
    return bytes(self.read_async(offset, length).result().value)

  def read_all(self) -> bytes:
    result = self._kv.read(self._key).result()
    if result.state != "value":
      raise FileNotFoundError(f"{self.path}: no such object")
    return bytes(result.value)

  def close(self):
    pass


def open_file(path: str):
  return _RemoteFile(path) if is_url(path) else _LocalFile(path)


def exists(path: str) -> bool:
  return open_file(path).size() is not None


def read_bytes(path: str) -> bytes:
  return open_file(path).read_all()


def sha256(path: str) -> str:
  f = open_file(path)
  digest = hashlib.sha256()
  if isinstance(f, _LocalFile):
    with open(path, "rb") as h:
      while block := h.read(16 << 20):
        digest.update(block)
  else:
    digest.update(f.read_all())
  return digest.hexdigest()


# ----------------------------------------------------------------------------- streams
class ArrayTokens:
  """A token stream held in memory (tests, small corpora, format-1 data directories)."""

  def __init__(self, stream: np.ndarray):
    self._stream = np.ascontiguousarray(stream)
    self.num_tokens = int(self._stream.size)

  def read(self, start: int, stop: int) -> np.ndarray:
    return self._stream[start:stop]

  def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
    """``[rows, length]`` tokens from each start; positions past the end are ``PAD_ID``."""
    pos = np.asarray(starts, np.int64)[:, None] + np.arange(length, dtype=np.int64)[None, :]
    out = self._stream[np.minimum(pos, self.num_tokens - 1)]
    out[pos >= self.num_tokens] = PAD_ID
    return out

  def close(self):
    pass


class TokenStore:
  """A split's stream over its shard files (see the module docstring); holds no tokens."""

  def __init__(self, paths: list[str], lengths: list[int]):
    if not paths:
      raise ValueError("a token store needs at least one shard")
    self.paths = list(paths)
    self._files = [None] * len(paths)
    self._open: list[int] = []  # local shards with an open descriptor, oldest first
    self._lock = threading.Lock()
    self._bounds = np.concatenate([[0], np.cumsum(np.asarray(lengths, np.int64))])
    self.num_tokens = int(self._bounds[-1])

  def _file(self, i: int):
    with self._lock:
      f = self._files[i]
      if f is None:
        f = self._files[i] = open_file(self.paths[i])
        if isinstance(f, _LocalFile):
          self._open.append(i)
          if len(self._open) > _MAX_OPEN:
            old = self._open.pop(0)
            self._files[old].close()
            self._files[old] = None
      return f

  def _pieces(self, start: int, stop: int):
    """(shard, byte offset, byte count, position in the output) of the range [start, stop)."""
    first = int(np.searchsorted(self._bounds, start, side="right")) - 1
    pos = start
    while pos < stop:
      end = min(stop, int(self._bounds[first + 1]))
      yield first, 2 * (pos - int(self._bounds[first])), 2 * (end - pos), pos - start
      pos, first = end, first + 1

  def read(self, start: int, stop: int) -> np.ndarray:
    start, stop = max(0, int(start)), min(int(stop), self.num_tokens)
    out = np.empty(max(0, stop - start), TOKEN_DTYPE)
    for shard, offset, count, at in self._pieces(start, stop):
      out[at:at + count // 2] = np.frombuffer(self._file(shard).read(offset, count), TOKEN_DTYPE)
    return out

  def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
    """``[rows, length]`` tokens from each start; positions past the end are ``PAD_ID``.

    Remote reads of all rows are issued at once and awaited together (one round trip of
    latency per batch, not per row).
    """
    starts = np.asarray(starts, np.int64)
    out = np.full((len(starts), length), PAD_ID, TOKEN_DTYPE)
    pending = []
    for row, s in enumerate(starts.tolist()):
      for shard, offset, count, at in self._pieces(s, min(s + length, self.num_tokens)):
        f = self._file(shard)
        if isinstance(f, _RemoteFile):
          pending.append((row, at, count, f.read_async(offset, count)))
        else:
          out[row, at:at + count // 2] = np.frombuffer(f.read(offset, count), TOKEN_DTYPE)
    for row, at, count, future in pending:
      out[row, at:at + count // 2] = np.frombuffer(bytes(future.result().value), TOKEN_DTYPE)
    return out

  def close(self):
    with self._lock:
      for f in self._files:
        if f is not None:
          f.close()
      self._files = [None] * len(self.paths)
      self._open = []
