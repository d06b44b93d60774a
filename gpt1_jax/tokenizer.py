"""GPT-1's tokenizer, id-for-id with OpenAI's ``text_utils.py`` (finetune-transformer-lm).

The pipeline of the original, step by step:

1. ``ftfy.fix_text`` repairs mojibake, HTML entities, curly quotes, odd widths.
2. :func:`text_standardize`: dashes and ``…``/``´`` to ASCII, spaces around runs of
   ``- ~ ! " ; ? + , ) ( \\ / * [ ] } { | _``, every whitespace run holding a newline
   becomes ``" \\n "``, other whitespace runs a single space, then strip.
3. spaCy's rule-based English tokenizer (``spacy.blank("en")``; the original loaded the
   ``en`` model with everything but the tokenizer disabled, which is the same rules).
4. Each token is lowercased and split by byte-pair encoding with the 40,000 merges,
   ``</w>`` marking the end of a word.
5. Each BPE piece becomes its id in ``encoder_bpe_40000.json``; a piece that is not in the
   vocabulary becomes id 0 (``<unk>``), as the original's ``encoder.get(t, 0)`` did. GPT-1's
   vocabulary has no byte fallback, so characters it never saw are lost here; every such
   piece is counted in :attr:`GPT1Tokenizer.unk_count` and :attr:`GPT1Tokenizer.unk_pieces`.

The fine-tuning tokens of the paper (section 3.3) follow the vocabulary: ``_start_``
40478, ``_delimiter_`` 40479, ``_classify_`` 40480, so the embedding has 40,481 rows.

Speed comes from never repeating work, not from changing the algorithm: texts made only of
printable ASCII skip ftfy (it would return them unchanged, see :func:`fix_text`), every space-separated chunk
of standardised text is tokenised by spaCy and BPE once and remembered, and BPE results
are remembered per word. See :class:`GPT1Tokenizer` for why chunk-wise spaCy is exact.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib.resources
import itertools
import json
import os
import re
from typing import Iterable

from gpt1_jax import extras

ENCODER_FILE = "encoder_bpe_40000.json"
MERGES_FILE = "vocab_40000.bpe"
SPECIAL_TOKENS = ("_start_", "_delimiter_", "_classify_")
END_OF_WORD = "</w>"
NEWLINE_PIECE = "\n" + END_OF_WORD

# Characters in which ftfy.fix_text can find nothing to change: printable ASCII plus tab
# and newline, minus "&" (HTML entities). Every fixer of ftfy 6 needs something outside
# this set (non-ASCII, "&", "\x1b", "\r", or a control character it deletes), so such text
# comes back unchanged and ftfy, the slowest step, can be skipped.
_FTFY_MAY_CHANGE = re.compile(r"[^\t\n\x20-\x25\x27-\x7e]")

# The original wrote one alternative per character, ``(-+|~+|...|_+)``; at any position at
# most one of them can match and it takes the whole run of that character, so a class with
# a back-reference pads exactly the same runs, about six times faster.
_PUNCT_RUN = re.compile(r"""([-~!";?+,)(\\/*\[\]}{|_])\1*""")
_NEWLINE_RUN = re.compile(r"\s*\n\s*")
_SPACE_RUN = re.compile(r"[^\S\n]+")
_ASCII_STANDARDIZE = str.maketrans({"—": "-", "–": "-", "―": "-", "…": "...", "´": "'"})


def fix_text(text: str) -> str:
  """``ftfy.fix_text`` with its default settings, skipped where it cannot change anything."""
  if text.isascii() and _FTFY_MAY_CHANGE.search(text) is None:
    return text
  # Here, not at the top: ids, decoding and the fingerprint work where ftfy is not installed.
  ftfy = extras.require("ftfy", "tokenizer", "encoding non-ASCII text")
  return ftfy.fix_text(text)


def text_standardize(text: str) -> str:
  """The original's ``text_standardize``: the fixes its authors needed for spaCy on BooksCorpus."""
  return " ".join(_standard_chunks(text))


def _standard_chunks(text: str) -> list[str]:
  """``text_standardize(text).split(" ")``, and ``[]`` for an empty result."""
  if not text.isascii():
    text = text.translate(_ASCII_STANDARDIZE)
  # A function replacement: Python 3.11 expands a template like r" \g<0> " per match,
  # which made this line the slowest of the whole warm path.
  text = _PUNCT_RUN.sub(_pad_with_spaces, text)
  if "\n" in text:
    text = _SPACE_RUN.sub(" ", _NEWLINE_RUN.sub(" \n ", text)).strip()
    return text.split(" ") if text else []
  # Without a newline, collapsing whitespace runs and stripping is str.split: it splits
  # on exactly the characters regex \s matches (str.isspace), checked on all code points.
  return text.split()


def _pad_with_spaces(match: re.Match) -> str:
  return " " + match.group() + " "


def _asset_text(name: str) -> str:
  return importlib.resources.files("gpt1_jax").joinpath("assets", name).read_text(encoding="utf-8")


def _read_text(path: str | os.PathLike | None, default_asset: str) -> str:
  if path is None:
    return _asset_text(default_asset)
  with open(path, encoding="utf-8") as f:
    return f.read()


def _parse_merges(text: str) -> list[tuple[str, ...]]:
  lines = text.split("\n")[1:]  # the first line is "#version: ..."
  # The original dropped the last line unconditionally (``[1:-1]``) because the file ends
  # with a newline; dropping only an empty last line gives the same merges for that file
  # and does not lose a merge from a file saved without the final newline.
  if lines and lines[-1] == "":
    lines.pop()
  return [tuple(line.split()) for line in lines]


def _cross_space_tables(tokenizer) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
  """Where spaCy's special-case pass could tie two space-separated chunks together.

  After splitting, spaCy 3 re-scans the Doc with a PhraseMatcher whose patterns are the
  affix-split tokens of each special case that has an affix (``a.m.`` -> ``a.m``, ``.``;
  ``:o`` -> ``:``, ``o``). A match may straddle a space; no rule applies to it then, but it
  can shadow an overlapping match inside a word, so a word can tokenise differently in
  context: alone ``o.O.`` is ``o.``, ``O.``, after ``N.J.:`` it is ``o``, ``.``, ``O.``.

  If a pattern ``p`` matches across the space between chunks ``left`` and ``right``
  between its tokens ``j - 1`` and ``j``, then ``right`` starts with ``p[j]``, and either
  ``left`` ends with ``"".join(p[:j])`` (the match starts in ``left``) or ``left`` is
  ``"".join(p[a:j])`` for some ``0 < a < j`` (``left`` lies wholly inside the match). The
  two tables map those strings to the tokens ``p[j]`` that may then start ``right``.
  """
  # The patterns are tokenised by the same rules minus the special cases (spaCy builds
  # them with its special cases switched off), so a rule-free twin reproduces them.
  from spacy.tokenizer import Tokenizer

  twin = Tokenizer(
      tokenizer.vocab,
      prefix_search=tokenizer.prefix_search,
      suffix_search=tokenizer.suffix_search,
      infix_finditer=tokenizer.infix_finditer,
      token_match=tokenizer.token_match,
      url_match=tokenizer.url_match,
  )
  ends: dict[str, set[str]] = collections.defaultdict(set)
  inner: dict[str, set[str]] = collections.defaultdict(set)
  for key in tokenizer.rules:
    # With faster_heuristics (the default) only these rules enter the matcher
    # (spacy/tokenizer.pyx, add_special_case); without it, all of them do.
    if getattr(tokenizer, "faster_heuristics", False) and not (tokenizer.find_prefix(key) or tokenizer.find_infix(key)
                                                               or tokenizer.find_suffix(key) or " " in key):
      continue
    pattern = [token.text for token in twin(key)]
    for j in range(1, len(pattern)):
      ends["".join(pattern[:j])].add(pattern[j])
      for a in range(1, j):
        inner["".join(pattern[a:j])].add(pattern[j])
  freeze = lambda table: {s: tuple(sorted(starts)) for s, starts in table.items()}  # noqa: E731
  return freeze(ends), freeze(inner)


def _batched(iterable: Iterable[str], n: int):
  it = iter(iterable)
  while batch := list(itertools.islice(it, n)):
    yield batch


class GPT1Tokenizer:
  """Text to GPT-1 ids and back, exactly as OpenAI's original ``TextEncoder``.

  Args:
    encoder_path: token -> id JSON; default the packaged ``encoder_bpe_40000.json``.
    bpe_path: merges file (a ``#version`` line, then one merge per line in rank order);
      default the packaged ``vocab_40000.bpe``.
    cache_size: entries kept in each memo before it is emptied, so a tokenizer that
      streams a huge corpus holds bounded memory (~150 MB when all are full; word
      frequencies are Zipfian, so the hit rate stays high).

  Ids: 0 .. 40477 are the BPE vocabulary (0 is ``<unk>``, 40477 the newline ``\\n</w>``),
  then :attr:`start_id`, :attr:`delimiter_id`, :attr:`classify_id`. :attr:`pad_id` is 0,
  the same id as ``<unk>``: GPT-1 has no padding token, so padded positions must be
  masked, never read.

  Unknown pieces: a BPE piece outside the vocabulary (a character GPT-1 never saw, e.g.
  most CJK) encodes to 0 like the original. :attr:`unk_count` is the running number of
  such pieces emitted by :meth:`encode`/:meth:`encode_batch`, :attr:`unk_pieces` counts
  them by piece, and :meth:`reset_unk_stats` zeroes both.

  Why remembering chunks is exact: spaCy splits text on single spaces and tokenises each
  space-free span on its own, so the tokens of a standardised text are the tokens of its
  space-separated chunks, each of which we tokenise once. The one link between chunks is
  spaCy's special-case pass (see :func:`_cross_space_tables`); neighbours it could link
  are tokenised together, as one span, which is again exactly what spaCy does.
  """

  def __init__(
      self,
      encoder_path: str | os.PathLike | None = None,
      bpe_path: str | os.PathLike | None = None,
      *,
      cache_size: int = 1 << 18,
  ):
    self.encoder: dict[str, int] = json.loads(_read_text(encoder_path, ENCODER_FILE))
    self.merges = _parse_merges(_read_text(bpe_path, MERGES_FILE))
    # dict(zip(...)) as in the original: a repeated merge keeps its last rank.
    self.bpe_ranks = dict(zip(self.merges, range(len(self.merges))))
    n = len(self.encoder)
    if sorted(self.encoder.values()) != list(range(n)):
      raise ValueError(f"encoder ids must be exactly 0..{n - 1}")
    self.start_id, self.delimiter_id, self.classify_id = n, n + 1, n + 2
    self.vocab_size = n + len(SPECIAL_TOKENS)
    self.pad_id = 0
    self.special_tokens = dict(zip(SPECIAL_TOKENS, range(n, n + len(SPECIAL_TOKENS))))
    self.decoder: dict[int, str] = {i: t for t, i in self.encoder.items()}
    self.decoder.update({i: t for t, i in self.special_tokens.items()})

    # spaCy loads on first encode: fingerprint, decode and the id maps do not need it.
    self._nlp = None
    self._ends: dict[str, tuple[str, ...]] = {}
    self._inner: dict[str, tuple[str, ...]] = {}
    self._max_end = 0
    self._cache_size = cache_size
    self._bpe_cache: dict[str, tuple[str, ...]] = {}
    self._word_cache: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {}
    # span -> (ids, unknown pieces, starts of a next chunk that spaCy's special-case
    # pass could tie to this one)
    self._span_cache: dict[str, tuple[tuple[int, ...], tuple[str, ...], tuple[str, ...]]] = {}
    self._fingerprint: str | None = None
    self.unk_count = 0
    self.unk_pieces: collections.Counter[str] = collections.Counter()

  # ----------------------------------------------------------------------- BPE
  def bpe(self, word: str) -> tuple[str, ...]:
    """The BPE pieces of one lowercased spaCy token: the original's ``bpe(word).split(' ')``."""
    pieces = self._bpe_cache.get(word)
    if pieces is not None:
      return pieces
    symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
    ranks = self.bpe_ranks
    while len(symbols) > 1:
      best_rank, best = None, None
      for pair in zip(symbols, symbols[1:]):
        rank = ranks.get(pair)
        if rank is not None and (best_rank is None or rank < best_rank):
          best_rank, best = rank, pair
      if best is None:
        break
      first, second = best
      merged, i, last = [], 0, len(symbols) - 1
      # Left to right and non-overlapping, like the original's word.index scan.
      while i <= last:
        if i < last and symbols[i] == first and symbols[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = merged
    # The original joined the pieces with spaces and split them again when looking up
    # ids, so a token holding a space splits further; we keep that round trip. Its one
    # special case is spaCy's newline token "\n " (spaCy attaches the space after a
    # newline to it): pieces "\n", " </w>" join to "\n  </w>", which it mapped to the
    # vocabulary's newline "\n</w>" (id 40477).
    joined = " ".join(symbols)
    if joined == "\n  " + END_OF_WORD:
      joined = NEWLINE_PIECE
    pieces = tuple(joined.split(" "))
    if len(self._bpe_cache) >= self._cache_size:
      self._bpe_cache.clear()
    self._bpe_cache[word] = pieces
    return pieces

  def _word(self, token_text: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    lowered = token_text.lower()
    entry = self._word_cache.get(lowered)
    if entry is None:
      pieces = self.bpe(lowered)
      ids = tuple(self.encoder.get(p, 0) for p in pieces)
      entry = (ids, tuple(p for p, i in zip(pieces, ids) if i == 0))
      if len(self._word_cache) >= self._cache_size:
        self._word_cache.clear()
      self._word_cache[lowered] = entry
    return entry

  # -------------------------------------------------------------------- chunks
  def _load_spacy(self):
    if self._nlp is None:
      # ids, decoding and the fingerprint work without spaCy: only encoding text needs it.
      spacy = extras.require("spacy", "tokenizer", "encoding text", name="spaCy")

      nlp = spacy.blank("en")
      self._ends, self._inner = _cross_space_tables(nlp.tokenizer)
      self._max_end = max(map(len, self._ends), default=0)
      self._nlp = nlp
    return self._nlp

  def _add_spans(self, spans: Iterable[str]) -> None:
    # A standardised text holds a newline only as the chunk "\n". Tokenised alone it is
    # the token "\n"; inside a text spaCy makes it "\n " (see bpe); both are id 40477.
    ordered = sorted(spans)  # deterministic order; results do not depend on it
    # Lexemes spaCy creates in a memory zone are freed when it closes (spaCy >= 3.8), so
    # streaming a large corpus does not grow spaCy's vocabulary without bound; we keep
    # only plain strings and ints.
    nlp = self._load_spacy()
    zone = getattr(nlp, "memory_zone", contextlib.nullcontext)
    with zone():
      for span, doc in zip(ordered, nlp.tokenizer.pipe(ordered, batch_size=1000)):
        ids: list[int] = []
        unknown: list[str] = []
        for token in doc:
          word_ids, word_unknown = self._word(token.text)
          ids.extend(word_ids)
          unknown.extend(word_unknown)
        ties: set[str] = set(self._inner.get(span, ()))
        for n in range(1, min(len(span), self._max_end) + 1):
          ties.update(self._ends.get(span[-n:], ()))
        self._span_cache[span] = (tuple(ids), tuple(unknown), tuple(ties))

  def _spans(self, chunks: list[str]) -> list[str]:
    """The chunks, with those spaCy's special-case pass could link joined into one span."""
    cache = self._span_cache
    ties: tuple[str, ...] = ()
    for k, chunk in enumerate(chunks):
      if ties and chunk.startswith(ties):
        break
      ties = cache[chunk][2]
    else:
      return chunks
    spans = chunks[:k - 1]
    group = [chunks[k - 1]]
    for chunk in chunks[k:]:
      if ties and chunk.startswith(ties):
        group.append(chunk)
      else:
        spans.append(" ".join(group))
        group = [chunk]
      ties = cache[chunk][2]
    spans.append(" ".join(group))
    return spans

  def _count_unknown(self, pieces: list[str]) -> None:
    self.unk_count += len(pieces)
    self.unk_pieces.update(pieces)

  def reset_unk_stats(self) -> None:
    self.unk_count = 0
    self.unk_pieces.clear()

  # ----------------------------------------------------------------------- API
  def encode(self, text: str) -> list[int]:
    """The ids of one text (no special tokens added)."""
    return self.encode_batch([text])[0]

  def encode_batch(self, texts: Iterable[str], batch_size: int = 1024) -> list[list[int]]:
    """``[encode(t) for t in texts]``; spaCy sees each new span of a batch once, via ``pipe``."""
    out: list[list[int]] = []
    for batch in _batched(texts, batch_size):
      if len(self._span_cache) > self._cache_size:
        self._span_cache.clear()
      chunk_lists = [_standard_chunks(fix_text(t)) for t in batch]
      results = [self._encode_remembered(chunks) for chunks in chunk_lists]
      slow = [k for k, ids in enumerate(results) if ids is None]
      if slow:
        cache = self._span_cache
        new = {c for k in slow for c in chunk_lists[k] if c not in cache}
        if new:
          self._add_spans(new)
        span_lists = {k: self._spans(chunk_lists[k]) for k in slow}
        new = {s for spans in span_lists.values() for s in spans if s not in cache}
        if new:
          self._add_spans(new)
        for k, spans in span_lists.items():
          results[k] = self._encode_remembered(spans, joined=True)
      out.extend(results)
    return out

  def _encode_remembered(self, spans: list[str], joined: bool = False) -> list[int] | None:
    """Ids from the memo alone; None if a span is new or (unless ``joined``) chunks tie."""
    cache = self._span_cache
    ids: list[int] = []
    unknown: list[str] = []
    ties: tuple[str, ...] = ()
    for span in spans:
      entry = cache.get(span)
      if entry is None or (ties and not joined and span.startswith(ties)):
        return None
      ids += entry[0]
      if entry[1]:
        unknown += entry[1]
      ties = entry[2]
    if unknown:
      self._count_unknown(unknown)
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """Concatenate the pieces of ``ids``; each ``</w>`` becomes a space.

    Special ids decode as the words ``_start_``, ``_delimiter_``, ``_classify_``; id 0
    (``<unk>``, also :attr:`pad_id`) as ``<unk>``. The space after the last word is
    dropped, so the result is the lowercased, standardised spaCy tokens joined by single
    spaces, the newline token appearing as ``"\\n"``. What encoding discarded (case, ftfy's
    fixes, the original spacing, characters that became ``<unk>``) stays lost.
    """
    words = []
    for i in ids:
      token = self.id_to_token(int(i))
      words.append(token + END_OF_WORD if int(i) >= self.start_id else token)
    text = "".join(words).replace(END_OF_WORD, " ")
    return text[:-1] if text.endswith(" ") else text

  def id_to_token(self, i: int) -> str:
    """The BPE piece (``"hello</w>"``) or special token (``"_start_"``) of an id."""
    try:
      return self.decoder[i]
    except KeyError:
      raise ValueError(f"id {i} is outside the vocabulary of {self.vocab_size}") from None

  def token_to_id(self, token: str) -> int:
    """Id of a BPE piece (``"hello</w>"``) or special token (``"_start_"``); KeyError if none."""
    if token in self.special_tokens:
      return self.special_tokens[token]
    return self.encoder[token]

  def __len__(self) -> int:
    return self.vocab_size

  def __getstate__(self) -> dict:
    # Worker processes rebuild spaCy and the memos; shipping them would cost more.
    state = self.__dict__.copy()
    state.update(_nlp=None, _bpe_cache={}, _word_cache={}, _span_cache={})
    return state

  @property
  def fingerprint(self) -> str:
    """sha256 hex of the vocabulary, the merges in rank order and the special tokens.

    Stable across processes and machines; data manifests store it so that a corpus
    tokenised with another vocabulary is caught before training on it.
    """
    if self._fingerprint is None:
      canonical = json.dumps(
          {
              "encoder": sorted(self.encoder.items(), key=lambda kv: kv[1]),
              "merges": [list(m) for m in self.merges],
              "special_tokens": sorted(self.special_tokens.items(), key=lambda kv: kv[1]),
          },
          ensure_ascii=False,
          separators=(",", ":"),
      )
      self._fingerprint = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return self._fingerprint


__all__ = ["GPT1Tokenizer", "SPECIAL_TOKENS", "fix_text", "text_standardize"]
