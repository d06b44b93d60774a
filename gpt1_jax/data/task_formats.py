"""The task files' formats: every reader turns one source into the same :class:`Example` records.

Local files in the official formats (GLUE-style TSVs, the Story Cloze CSV, RACE's JSON folders) and
tensorflow-datasets records go through the same label and text checks, so a bad row fails (or, with
``skip_malformed``, is skipped) with the same message, naming ``file:line`` or ``tfds:name/split#i``,
whichever the source. Which task reads which format is the registry's business (:mod:`.tasks`).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import logging
import math
import os
import re
from typing import Callable, Iterator, Optional, Protocol, Sequence, Union

import numpy as np


class Task(Protocol):
  """What a reader needs of a task: :class:`gpt1_jax.data.tasks.Task` has all of it (the readers are
  below the registry, so they name this shape instead of importing it)."""

  name: str
  type: str
  fields: tuple
  labels: Optional[tuple]
  num_choices: int
  label_range: Optional[tuple]

  def is_labelled(self, split: str) -> bool:
    ...


log = logging.getLogger("gpt1_jax.data.tasks")  # the name these messages have always been logged under

# The Story Cloze split of the original code (datasets.py: test_size=374 of
# 1,871 rows, sklearn's train_test_split with this seed).
ROCSTORIES_SEED = 3535999445


@dataclasses.dataclass(frozen=True)
class Example:
  """One task example, whatever its source.

  ``texts`` follows ``Task.fields`` (e.g. ``(premise, hypothesis)``; for
  multiple choice the context parts, e.g. ``(article, question)``);
  ``choices`` holds the candidate answers of a multiple-choice example and
  ``label`` the index of the right one. ``label`` is ``None`` where the split
  has no labels (GLUE test sets). ``source`` is ``"file:line"`` (or
  ``"tfds:name/split#i"``), for error messages and debugging.
  """

  texts: tuple[str, ...]
  label: Union[int, float, None]
  choices: Optional[tuple[str, ...]] = None
  id: str = ""
  source: str = ""


@dataclasses.dataclass
class SplitData:
  """The examples of one split and what reading them left out."""

  task: "Task"
  split: str
  examples: list[Example]
  origin: str  # the file(s) or tfds dataset read
  skipped: list[str] = dataclasses.field(default_factory=list)  # "file:line: problem" per skipped row
  num_no_gold: int = 0  # rows without a gold label, excluded as is standard

  @property
  def num_skipped(self) -> int:
    """Malformed rows skipped (``skip_malformed=True``)."""
    return len(self.skipped)

  def __len__(self) -> int:
    return len(self.examples)

  def __iter__(self) -> Iterator[Example]:
    return iter(self.examples)

  def __getitem__(self, i):
    return self.examples[i]


class Malformed(Exception):
  """A row that breaks the file format; ``tasks.load_split`` turns it into ``ValueError`` or a skip."""


class NoGold(Exception):
  """A row whose gold label is missing ('-' / -1): excluded, not an error."""


# The signature of a local reader: (task, path, split, skip_malformed) -> SplitData.
LocalReader = Callable[["Task", str, str, bool], SplitData]
# One tfds record -> examples (several for RACE, one question each). Raises Malformed/NoGold.
TfdsMapper = Callable[["Task", dict, str, str], list]

# ----------------------------------------------------------------------------
# Labels and example checks, shared by every reader.

_INT = re.compile(r"[+-]?\d+")


def _class_label(task: Task, raw) -> int:
  names = task.labels
  if isinstance(raw, str):
    value = raw.strip()
    if value in names:
      return names.index(value)
    if not _INT.fullmatch(value):
      raise Malformed(f"bad label {raw!r}: expected one of {list(names)} or an integer class id")
    raw = int(value)
  raw = int(raw)
  if not 0 <= raw < len(names):
    raise Malformed(f"label {raw} out of range: {task.name} has {len(names)} classes {list(names)}")
  return raw


def _regression_label(task: Task, raw) -> float:
  try:
    value = float(raw)
  except (TypeError, ValueError):
    raise Malformed(f"bad label {raw!r}: expected a number") from None
  lo, hi = task.label_range
  if not (math.isfinite(value) and lo <= value <= hi):
    raise Malformed(f"label {value} out of range [{lo}, {hi}]")
  return value


def _choice_label(raw, num_choices: int, first: str) -> int:
  """A multiple-choice answer: a letter from ``first`` ('A' for RACE) or a 1-based number ('1' Story Cloze)."""
  value = str(raw).strip()
  if len(value) == 1 and value.isalpha() == first.isalpha():
    index = ord(value.upper()) - ord(first)
  else:
    raise Malformed(f"bad answer {raw!r}: expected {first!r}, {chr(ord(first) + 1)!r}, ...")
  if not 0 <= index < num_choices:
    raise Malformed(f"answer {raw!r} out of range: the example has {num_choices} candidates")
  return index


def _check_texts(task: Task, texts: Sequence[str], choices: Optional[Sequence[str]] = None):
  for name, text in zip(task.fields, texts):
    if not text.strip():
      raise Malformed(f"empty text in field {name!r}")
  if choices is not None:
    if not choices:
      raise Malformed("no candidate answers")
    if len(choices) > task.num_choices:
      raise Malformed(f"{len(choices)} candidate answers, more than {task.name}'s {task.num_choices}")
    for k, text in enumerate(choices):
      if not text.strip():
        raise Malformed(f"empty text in candidate {k}")


def _parse_label(task: Task, raw, no_gold: tuple = ()):
  if raw in no_gold:
    raise NoGold()
  return _regression_label(task, raw) if task.kind.regression else _class_label(task, raw)


# ----------------------------------------------------------------------------
# Bytes -> lines, keeping 1-based line numbers and naming bad bytes.


def _lines(path: str) -> Iterator[tuple[int, Union[str, Malformed]]]:
  """``(lineno, text)`` per line (split on ``\\n`` only, ``\\r\\n`` tolerated), or a ``Malformed`` for bad UTF-8.

  Lines are decoded one by one so an undecodable byte is reported at its own
  line and, with ``skip_malformed``, costs only that line.
  """
  with open(path, "rb") as f:
    for i, raw in enumerate(f):  # binary files split on b"\n" only
      raw = raw[:-1] if raw.endswith(b"\n") else raw
      raw = raw[:-1] if raw.endswith(b"\r") else raw
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield i + 1, Malformed(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start} of the line)")
        continue
      if i == 0 and text.startswith("\ufeff"):  # MRPC's files start with a byte-order mark
        text = text[1:]
      yield i + 1, text


class Collector:
  """Turns ``Malformed`` into ``ValueError`` naming ``file:line``, or counts and skips it."""

  def __init__(self, task: Task, split: str, origin: str, skip_malformed: bool):
    self.data = SplitData(task, split, [], origin)
    self.skip = skip_malformed

  def malformed(self, where: str, problem: Malformed):
    message = f"{where}: {problem}"
    if not self.skip:
      raise ValueError(f"{message} (pass skip_malformed=True to skip such rows)")
    self.data.skipped.append(message)

  def add(self, where: str, make: Callable[[], Union[Example, list]]):
    try:
      made = make()
    except NoGold:
      self.data.num_no_gold += 1
    except Malformed as e:
      self.malformed(where, e)
    else:
      self.data.examples.extend(made if isinstance(made, list) else [made])


# ----------------------------------------------------------------------------
# Local readers: GLUE-style TSVs, the Story Cloze CSV, RACE JSON folders.


@dataclasses.dataclass(frozen=True)
class TsvFormat:
  """Where a TSV keeps its fields: header names, or 0-based positions when ``header`` is False."""

  texts: tuple
  label: Union[str, int, None]
  ids: tuple = ()  # candidate id columns, first present wins (header files)
  header: bool = True
  num_columns: int = 0  # headerless files: the exact column count
  no_gold: tuple = ()  # label values meaning "no gold label"


def read_tsv(formats: tuple[TsvFormat, ...], task: Task, path: str, split: str, skip_malformed: bool) -> SplitData:
  """A GLUE-style TSV, quoting disabled (GLUE texts hold literal ``"``).

  The first format whose text columns all appear in the first line is read by
  header names; otherwise the first headerless format is used.
  """
  out = Collector(task, split, path, skip_malformed)
  lines = _lines(path)
  first = next(lines, None)
  if first is None:
    raise ValueError(f"{path}: the file is empty")
  lineno, head = first
  if isinstance(head, Malformed):
    raise ValueError(f"{path}:{lineno}: {head}")  # no format can be recognised: never skippable
  columns = head.split("\t")
  fmt = next((f for f in formats if f.header and all(c in columns for c in f.texts)), None)
  if fmt is None:
    fmt = next((f for f in formats if not f.header), None)
    if fmt is None:
      wanted = " or ".join("(" + ", ".join(map(repr, f.texts)) + ")" for f in formats)
      raise ValueError(f"{path}:1: missing column(s): the header {columns} lacks {wanted}")
    lines = _lines(path)  # no header: the first line is data

  if fmt.header:
    index = {c: i for i, c in enumerate(columns)}
    text_cols = [index[c] for c in fmt.texts]
    if fmt.label in index:
      label_col = index[fmt.label]
    elif task.is_labelled(split):
      raise ValueError(f"{path}:1: missing column {fmt.label!r} (the labels of split {split!r}); header {columns}")
    else:
      label_col = None
    id_col = next((index[c] for c in fmt.ids if c in index), None)
    num_columns = len(columns)
  else:
    text_cols, label_col, id_col, num_columns = list(fmt.texts), fmt.label, None, fmt.num_columns

  for row, (lineno, line) in enumerate(lines):
    where = f"{path}:{lineno}"
    if isinstance(line, Malformed):
      out.malformed(where, line)
      continue
    cells = line.split("\t")

    def make(cells=cells, row=row, where=where):
      if len(cells) != num_columns:
        what = "missing column(s)" if len(cells) < num_columns else "too many columns"
        raise Malformed(f"{what}: expected {num_columns} tab-separated columns, found {len(cells)}")
      texts = tuple(cells[i] for i in text_cols)
      _check_texts(task, texts)
      label = None if label_col is None else _parse_label(task, cells[label_col], fmt.no_gold)
      ident = cells[id_col] if id_col is not None else str(row)
      return Example(texts, label, id=ident, source=where)

    out.add(where, make)
  return out.data


def read_story_cloze(task: Task, path: str, split: str, skip_malformed: bool) -> SplitData:
  """The Story Cloze Test CSV (RFC 4180 quoting): four sentences, two endings, ``AnswerRightEnding`` (1 or 2)."""
  out = Collector(task, split, path, skip_malformed)
  text_lines = []  # (lineno, text); undecodable lines are reported and left out
  for lineno, line in _lines(path):
    if isinstance(line, Malformed):
      out.malformed(f"{path}:{lineno}", line)
    else:
      text_lines.append((lineno, line))
  if not text_lines:
    raise ValueError(f"{path}: the file is empty")
  numbers = [n for n, _ in text_lines]
  reader = csv.reader(line + "\n" for _, line in text_lines)
  header = next(reader)
  story = [f"InputSentence{i}" for i in range(1, 5)]
  endings = ["RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2"]
  missing = [c for c in ["InputStoryid"] + story + endings if c not in header]
  if missing:
    raise ValueError(f"{path}:{numbers[0]}: missing column(s) {missing}; header {header}")
  index = {c: i for i, c in enumerate(header)}
  answer = index.get("AnswerRightEnding")
  if answer is None and task.is_labelled(split):
    raise ValueError(f"{path}:{numbers[0]}: missing column 'AnswerRightEnding' (the labels of split {split!r})")
  consumed = reader.line_num
  for cells in reader:
    lineno = numbers[consumed]  # the record's first physical line
    consumed = reader.line_num
    where = f"{path}:{lineno}"

    def make(cells=cells, where=where):
      if len(cells) != len(header):
        raise Malformed(f"expected {len(header)} columns, found {len(cells)}")
      # The original joins the four sentences with single spaces (as tfds does).
      context = " ".join(cells[index[c]] for c in story)
      choices = tuple(cells[index[c]] for c in endings)
      if any(not cells[index[c]].strip() for c in story):
        raise Malformed("empty story sentence")
      _check_texts(task, (context,), choices)
      label = None if answer is None else _choice_label(cells[answer], len(choices), "1")
      return Example((context,), label, choices=choices, id=cells[index["InputStoryid"]], source=where)

    out.add(where, make)
  return out.data


RACE_LEVELS = {"race": ("middle", "high"), "race_middle": ("middle",), "race_high": ("high",)}


def _race_examples(task: Task, record: dict, name: str, where: str) -> list:
  """One RACE article (several questions) -> one Example per question."""
  for key in ("article", "questions", "options", "answers"):
    if key not in record:
      raise Malformed(f"missing key {key!r}")
  questions, options, answers = record["questions"], record["options"], record["answers"]
  if not (len(questions) == len(options) == len(answers)):
    raise Malformed(f"{len(questions)} questions, {len(options)} option lists and {len(answers)} answers")
  examples = []
  for q, (question, choices, answer) in enumerate(zip(questions, options, answers)):
    choices = tuple(choices)
    # Only the article is checked: a question may be empty (RACE's cloze
    # questions can be a bare blank; the options carry the text).
    _check_texts(task, (record["article"],), choices)
    label = _choice_label(answer, len(choices), "A")
    examples.append(
        Example((record["article"], question), label, choices=choices, id=f"{name}-{q}", source=f"{where}#q{q}"))
  return examples


def read_race(task: Task, path: str, split: str, skip_malformed: bool) -> SplitData:
  """RACE: ``path`` is a split folder (``RACE/dev``, holding ``middle/`` and ``high/``) or one file.

  Each ``*.txt``/``*.json`` file is one JSON article with ``article``,
  ``questions``, ``options``, ``answers`` (letters) and ``id``.
  """
  if os.path.isfile(path):
    files = [path]
  else:
    files = []
    for level in RACE_LEVELS[task.name]:
      folder = os.path.join(path, level)
      if not os.path.isdir(folder):
        raise ValueError(f"{task.name}: no folder {folder} (RACE keeps each split in middle/ and high/)")
      files += sorted(
          glob.glob(os.path.join(folder, "*.txt")) + glob.glob(os.path.join(folder, "*.json")), key=_natural_key)
  out = Collector(task, split, path, skip_malformed)
  for file in files:
    lines = list(_lines(file))
    bad = next(((n, t) for n, t in lines if isinstance(t, Malformed)), None)
    if bad is not None:
      out.malformed(f"{file}:{bad[0]}", bad[1])
      continue
    text = "\n".join(t for _, t in lines)
    try:
      record = json.loads(text)
    except json.JSONDecodeError as e:
      out.malformed(f"{file}:{e.lineno}", Malformed(f"not valid JSON: {e.msg}"))
      continue
    if not isinstance(record, dict):
      out.malformed(f"{file}:1", Malformed("expected a JSON object"))
      continue
    name = str(record.get("id", os.path.basename(file)))
    out.add(f"{file}:1", lambda: _race_examples(task, record, name, f"{file}:1"))
  return out.data


def _natural_key(path: str):
  return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path)]


# ----------------------------------------------------------------------------
# tensorflow-datasets mappers: one tfds record -> Examples (the same checks).


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _tfds_label(task: Task, record: dict, split: str):
  raw = record["label"]
  if task.kind.regression:
    raw = float(raw)
    if raw == -1.0 and not task.is_labelled(split):
      return None  # GLUE test sets store -1
    return _regression_label(task, raw)
  raw = int(raw)
  if raw == -1:
    if task.is_labelled(split):
      raise NoGold()  # SNLI: no annotator majority
    return None
  return _class_label(task, raw)


def tfds_pair_or_single(features: tuple[str, ...]) -> TfdsMapper:

  def mapper(task: Task, record: dict, split: str, where: str) -> list:
    texts = tuple(_text(record[f]) for f in features)
    _check_texts(task, texts)
    label = _tfds_label(task, record, split)
    ident = str(int(record["idx"])) if "idx" in record else where.rsplit("#", 1)[-1]
    return [Example(texts, label, id=ident, source=where)]

  return mapper


def tfds_race(task: Task, record: dict, split: str, where: str) -> list:
  rec = {
      "article": _text(record["article"]),
      "questions": [_text(q) for q in record["questions"]],
      "options": [[_text(o) for o in opts] for opts in record["options"]],
      "answers": [_text(a) for a in record["answers"]]
  }
  return _race_examples(task, rec, _text(record.get("example_id", where)), where)


def tfds_story_cloze(task: Task, record: dict, split: str, where: str) -> list:
  context = _text(record["context"])
  choices = tuple(_text(e) for e in record["endings"])
  _check_texts(task, (context,), choices)
  raw = int(record["label"])
  label = None if raw == -1 and not task.is_labelled(split) else _choice_label(str(raw), len(choices), "1")
  return [Example((context,), label, choices=choices, id=where.rsplit("#", 1)[-1], source=where)]


def rocstories_select(split: str, examples: list) -> list:
  """The original code's split of the validation stories: a seeded permutation, its first fifth held out.

  Equal to ``sklearn.model_selection.train_test_split(..., test_size=n // 5,
  random_state=3535999445)`` (374 of 1,871), in the same order.
  """
  if split == "test":
    return examples
  n = len(examples)
  order = np.random.RandomState(ROCSTORIES_SEED).permutation(n)
  held_out = n // 5
  chosen = order[:held_out] if split == "validation" else order[held_out:]
  return [examples[i] for i in chosen]


def report(data: SplitData) -> SplitData:
  if data.num_skipped:
    log.warning("%s/%s: skipped %d malformed row(s) of %s (first: %s)", data.task.name, data.split, data.num_skipped,
                data.origin, data.skipped[0])
  if data.num_no_gold:
    log.info("%s/%s: excluded %d example(s) without a gold label from %s", data.task.name, data.split, data.num_no_gold,
             data.origin)
  return data


def is_race_split_dir(folder: str) -> bool:
  return any(os.path.isdir(os.path.join(folder, lv)) for lv in ("middle", "high"))
