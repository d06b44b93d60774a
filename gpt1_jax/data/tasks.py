"""The fine-tuning tasks of the paper (Section 4.2, Tables 2-4): the registry and ``load_split``.

A :class:`Task` says what a task is (its type, one of ``task_types``; its
text fields; its label names; its metrics; its splits) and how to read it,
from local files in the official formats or from tensorflow-datasets. Every
reader produces the same :class:`Example` records, so the transformation
(``transforms.py``) and the metrics never know where the data came from::

    data = load_split("rte", "validation", "data/rte")        # GLUE TSVs in a folder
    data = load_split("mnli", "validation_matched", "tfds")   # tensorflow-datasets
    data.examples[0]  # Example(texts=(premise, hypothesis), label=0, id='0', source='.../dev.tsv:2')

Label ids follow the tfds ``ClassLabel`` order (e.g. RTE ``entailment`` = 0),
so a task reads the same whichever the source.

Split names are those of tfds: ``train``, ``validation`` (``dev`` is accepted),
``test``; MNLI has ``validation_matched``/``validation_mismatched`` and
``test_matched``/``test_mismatched``. GLUE test splits have no labels
(``Example.label is None``): they are for prediction files. The Story Cloze
Test ships only a validation and a test set; like the original GPT-1 code we
fine-tune on the validation set minus a held-out fifth (1,497 / 374 stories,
the same seeded split), so ``train`` and ``validation`` both come from it.

Bad input fails loudly: a missing column, a wrong number of columns, an
unknown or out-of-range label, an empty text, or bytes that are not UTF-8
raise ``ValueError`` naming the file and the 1-based line (header counted).
With ``skip_malformed=True`` such rows are skipped instead, counted in
``SplitData.num_skipped`` and reported with ``logging.warning``. Rows without
a gold label (SNLI/MultiNLI ``-``, tfds ``-1``) are not errors: as is standard
they are excluded, counted in ``SplitData.num_no_gold`` and logged.

The formats themselves (and :class:`Example`, what every reader produces) are in
:mod:`gpt1_jax.data.task_formats`; this module says which task reads which.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
from types import MappingProxyType
from typing import Callable, Mapping, Optional

from gpt1_jax import extras
from gpt1_jax import task_types
from gpt1_jax.data.task_formats import (
    RACE_LEVELS,
    ROCSTORIES_SEED,  # noqa: F401 - re-exported
    Collector,
    Example,  # noqa: F401 - re-exported
    LocalReader,  # noqa: F401
    Malformed,  # noqa: F401 - re-exported
    SplitData,
    TfdsMapper,
    TsvFormat,
    is_race_split_dir,
    read_race,
    read_story_cloze,
    read_tsv,
    report,
    rocstories_select,
    tfds_pair_or_single,
    tfds_race,
    tfds_story_cloze)

log = logging.getLogger(__name__)

TASK_TYPES = task_types.NAMES

SPLIT_ALIASES = MappingProxyType({
    "dev": "validation",
    "dev_matched": "validation_matched",
    "dev_mismatched": "validation_mismatched"
})


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """A fine-tuning task: what it is and how to read it.

  ``files`` maps each split to the candidate names (or glob patterns) of its
  file inside a data folder, in order of preference; ``tfds`` maps each split
  to the ``(dataset, split)`` pairs it is read from (RACE ``all`` reads two).
  """

  name: str
  type: str
  fields: tuple[str, ...]  # names of Example.texts
  labels: Optional[tuple[str, ...]]  # class / candidate names; None for regression
  metrics: tuple[str, ...]
  splits: tuple[str, ...]
  files: Mapping[str, tuple[str, ...]]
  read_local: LocalReader
  tfds: Mapping[str, tuple[tuple[str, str], ...]]
  from_tfds: TfdsMapper
  num_choices: int = 0  # candidates per example (multiple choice only)
  labelled_test: bool = False  # GLUE test sets have no labels; SNLI's, SciTail's, RACE's do
  label_range: Optional[tuple[float, float]] = None  # regression targets
  tfds_manual: str = ""  # non-empty: tfds needs a manual download, here is how
  # Story Cloze: train/validation are carved from one file (see module docstring).
  select: Optional[Callable[[str, list], list]] = None

  def __post_init__(self):
    if self.type not in TASK_TYPES:
      raise ValueError(f"task {self.name!r}: type {self.type!r} is not one of {TASK_TYPES}")
    if self.kind.multiple_choice != (self.num_choices > 0):
      raise ValueError(f"task {self.name!r}: num_choices is for multiple-choice tasks only")
    object.__setattr__(self, "files", MappingProxyType(dict(self.files)))
    object.__setattr__(self, "tfds", MappingProxyType(dict(self.tfds)))

  @property
  def kind(self) -> task_types.TaskType:
    """What the task's type decides: pooling, head width, labels, predictions (``task_types``)."""
    return task_types.get(self.type)

  @property
  def num_sequences(self) -> int:
    """K, the transformed sequences per example (the model's ``[B, K, T]``)."""
    return self.kind.sequences or self.num_choices

  @property
  def num_labels(self) -> int:
    """``GPT1ForTask(num_labels=...)``: the classes, or 1 (a candidate index, a value)."""
    return self.kind.num_labels(self.labels)

  def is_labelled(self, split: str) -> bool:
    return self.labelled_test or not split.startswith("test")

  def canonical_split(self, split: str) -> str:
    s = SPLIT_ALIASES.get(split, split)
    if s not in self.splits:
      raise ValueError(f"task {self.name!r} has no split {split!r}; its splits are {', '.join(self.splits)}")
    return s


# ----------------------------------------------------------------------------
# The registry.


def _glue_tsv(texts, label, ids=("index",), no_gold=()):
  return TsvFormat(tuple(texts), label, tuple(ids), no_gold=tuple(no_gold))


def _tsv_reader(*formats: TsvFormat) -> LocalReader:
  return lambda task, path, split, skip: read_tsv(formats, task, path, split, skip)


_GLUE_FILES = {"train": ("train.tsv",), "validation": ("dev.tsv",), "test": ("test.tsv",)}
_GLUE_SPLITS = ("train", "validation", "test")
_NLI = ("entailment", "neutral", "contradiction")


def _glue_tfds(name: str, splits=_GLUE_SPLITS) -> dict:
  return {s: ((name, s),) for s in splits}


def _make_tasks() -> dict[str, Task]:
  acc = ("accuracy",)
  nli_tsv = _tsv_reader(_glue_tsv(("sentence1", "sentence2"), "gold_label", ("index", "pairID"), no_gold=("-",)))
  mnli_splits = ("train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched")
  tasks = [
      Task("sst2", "classification", ("sentence",), ("negative", "positive"), acc, _GLUE_SPLITS, _GLUE_FILES,
           _tsv_reader(_glue_tsv(("sentence",), "label")), _glue_tfds("glue/sst2"), tfds_pair_or_single(("sentence",))),
      Task(
          "cola",
          "classification",
          ("sentence",),
          ("unacceptable", "acceptable"),
          ("accuracy", "mcc"),
          _GLUE_SPLITS,
          _GLUE_FILES,
          # train/dev: no header, ``source  label  star  sentence``; test: header ``index  sentence``.
          _tsv_reader(_glue_tsv(("sentence",), "label"), TsvFormat((3,), 1, header=False, num_columns=4)),
          _glue_tfds("glue/cola"),
          tfds_pair_or_single(("sentence",))),
      Task(
          "mnli", "entailment", ("premise", "hypothesis"), _NLI, acc, mnli_splits, {
              "train": ("train.tsv", "multinli_1.0_train.txt"),
              "validation_matched": ("dev_matched.tsv", "multinli_1.0_dev_matched.txt"),
              "validation_mismatched": ("dev_mismatched.tsv", "multinli_1.0_dev_mismatched.txt"),
              "test_matched": ("test_matched.tsv",),
              "test_mismatched": ("test_mismatched.tsv",)
          }, nli_tsv, _glue_tfds("glue/mnli", mnli_splits), tfds_pair_or_single(("premise", "hypothesis"))),
      Task(
          "snli", "entailment", ("premise", "hypothesis"), _NLI, acc, _GLUE_SPLITS, {
              "train": ("train.tsv", "snli_1.0_train.txt"),
              "validation": ("dev.tsv", "snli_1.0_dev.txt"),
              "test": ("test.tsv", "snli_1.0_test.txt")
          }, nli_tsv, _glue_tfds("snli"), tfds_pair_or_single(("premise", "hypothesis")), labelled_test=True),
      Task("qnli", "entailment", ("question", "sentence"), ("entailment", "not_entailment"), acc, _GLUE_SPLITS,
           _GLUE_FILES, _tsv_reader(_glue_tsv(("question", "sentence"), "label")), _glue_tfds("glue/qnli"),
           tfds_pair_or_single(("question", "sentence"))),
      Task("rte", "entailment", ("premise", "hypothesis"), ("entailment", "not_entailment"), acc, _GLUE_SPLITS,
           _GLUE_FILES, _tsv_reader(_glue_tsv(("sentence1", "sentence2"), "label")), _glue_tfds("glue/rte"),
           tfds_pair_or_single(("sentence1", "sentence2"))),
      Task(
          "scitail",
          "entailment",
          ("premise", "hypothesis"),
          ("entails", "neutral"),
          acc,
          _GLUE_SPLITS,
          {
              "train": ("scitail_1.0_train.tsv", "train.tsv"),
              "validation": ("scitail_1.0_dev.tsv", "dev.tsv"),
              "test": ("scitail_1.0_test.tsv", "test.tsv")
          },
          # SciTail's tsv_format has no header: ``premise  hypothesis  label``.
          _tsv_reader(_glue_tsv(("sentence1", "sentence2"), "label"), _glue_tsv(("premise", "hypothesis"), "label"),
                      TsvFormat((0, 1), 2, header=False, num_columns=3)),
          _glue_tfds("sci_tail"),
          tfds_pair_or_single(("premise", "hypothesis")),
          labelled_test=True),
      Task(
          "mrpc", "similarity", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("accuracy", "f1"),
          _GLUE_SPLITS, {
              "train": ("train.tsv", "msr_paraphrase_train.txt"),
              "validation": ("dev.tsv",),
              "test": ("test.tsv", "msr_paraphrase_test.txt")
          }, _tsv_reader(_glue_tsv(("#1 String", "#2 String"), "Quality")), _glue_tfds("glue/mrpc"),
          tfds_pair_or_single(("sentence1", "sentence2"))),
      Task("qqp", "similarity", ("question1", "question2"), ("not_duplicate", "duplicate"), ("accuracy", "f1"),
           _GLUE_SPLITS, _GLUE_FILES, _tsv_reader(_glue_tsv(("question1", "question2"), "is_duplicate", ("id",))),
           _glue_tfds("glue/qqp"), tfds_pair_or_single(("question1", "question2"))),
      Task("stsb", "regression", ("sentence1", "sentence2"), None, ("pearson", "spearman"), _GLUE_SPLITS, _GLUE_FILES,
           _tsv_reader(_glue_tsv(("sentence1", "sentence2"), "score")), _glue_tfds("glue/stsb"),
           tfds_pair_or_single(("sentence1", "sentence2")), label_range=(0.0, 5.0)),
  ]
  race_dirs = {"train": ("train",), "validation": ("dev",), "test": ("test",)}
  for name, levels in RACE_LEVELS.items():
    tfds_splits = {
        s: tuple((f"race/{lv}", t) for lv in levels)
        for s, t in (("train", "train"), ("validation", "dev"), ("test", "test"))
    }
    tasks.append(
        Task(name, "multiple_choice", ("article", "question"), ("A", "B", "C", "D"), acc, _GLUE_SPLITS, race_dirs,
             read_race, tfds_splits, tfds_race, num_choices=4, labelled_test=True))
  val = ("cloze_test_val__spring2016.csv", "cloze_test_val__spring2016 - cloze_test_ALL_val.csv",
         "cloze_test_val__spring2016*.csv")
  tasks.append(
      Task(
          "story_cloze", "multiple_choice", ("story",), ("1", "2"), acc, _GLUE_SPLITS, {
              "train": val,
              "validation": val,
              "test": ("cloze_test_test__spring2016.csv", "cloze_test_test__spring2016 - cloze_test_ALL_test.csv",
                       "cloze_test_test__spring2016*.csv")
          }, read_story_cloze, {
              "train": (("story_cloze/2016", "validation"),),
              "validation": (("story_cloze/2016", "validation"),),
              "test": (("story_cloze/2016", "test"),)
          }, tfds_story_cloze, num_choices=2, labelled_test=True, select=rocstories_select,
          tfds_manual=("tfds 'story_cloze' needs a manual download: request the Story Cloze Test files at "
                       "https://www.cs.rochester.edu/nlp/rocstories/, save them as cloze_test_val__spring2016.csv and "
                       "cloze_test_test__spring2016.csv in <data_dir>/downloads/manual/, or skip tfds and pass the "
                       "folder holding the CSVs as task.source (fine-tuning: --config.task.source=DIR; zeroshot: "
                       "--source=story_cloze=DIR)")))
  return {t.name: t for t in tasks}


TASKS: Mapping[str, Task] = MappingProxyType(_make_tasks())


def get_task(name: str) -> Task:
  """The task called ``name``: what a CLI or a config turns its string into, once."""
  try:
    return TASKS[name]
  except (KeyError, TypeError):
    raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None


def resolve(task_or_name: Task | str) -> Task:
  """A :class:`Task` as is, a name by :func:`get_task`: for the documented entry points that take
  either (:func:`load_split`); everything below them takes a ``Task``."""
  return task_or_name if isinstance(task_or_name, Task) else get_task(task_or_name)


# ----------------------------------------------------------------------------
# Entry points.


def find_file(task: Task, split: str, folder: str) -> str:
  """The file (RACE: the folder) of ``split`` inside ``folder``, by the official names."""
  split = task.canonical_split(split)
  if task.name in RACE_LEVELS and os.path.isdir(os.path.join(folder, "RACE")):
    folder = os.path.join(folder, "RACE")
  for name in task.files[split]:
    found = sorted(glob.glob(os.path.join(glob.escape(folder), name))) if "*" in name else (
        [os.path.join(folder, name)] if os.path.exists(os.path.join(folder, name)) else [])
    if len(found) > 1:
      raise ValueError(f"{task.name}/{split}: several files match {name!r} in {folder}: {found}")
    if found:
      return found[0]
  raise ValueError(f"{task.name}/{split}: none of {list(task.files[split])} in {folder}")


def read_file(task: Task, split: str, path: str, *, skip_malformed: bool = False) -> SplitData:
  """The examples of one local file (a RACE split folder or file) read as ``split``."""
  split = task.canonical_split(split)
  if not os.path.exists(path):
    raise ValueError(f"{task.name}/{split}: no such file {path}")
  data = task.read_local(task, path, split, skip_malformed)
  if task.select is not None:
    data.examples = task.select(split, data.examples)
  return report(data)


def load_tfds(task: Task, split: str, data_dir: Optional[str] = None, *, skip_malformed: bool = False,
              download: bool = True, dataset: Optional[str] = None) -> SplitData:
  """The examples of ``split`` from tensorflow-datasets (prepared under ``data_dir``, or downloaded).

  ``dataset`` replaces the task's tfds dataset by one with the same features,
  e.g. ``"multi_nli"`` for ``mnli`` (which defaults to ``glue/mnli``, the one
  with the GLUE test splits).
  """
  tfds = extras.require("tensorflow_datasets", "tasks", "reading a task from tensorflow-datasets")  # slow: only here

  split = task.canonical_split(split)
  sources = task.tfds[split]
  if dataset is not None:
    if len(sources) != 1:
      raise ValueError(f"{task.name}/{split} reads {len(sources)} tfds datasets; dataset= cannot replace them")
    sources = ((dataset, sources[0][1]),)
  origin = " + ".join(f"tfds:{name}/{s}" for name, s in sources)
  out = Collector(task, split, origin, skip_malformed)
  for name, tfds_split in sources:
    ds = _tfds_dataset(task, split, name, tfds_split, data_dir, download)
    for i, record in enumerate(tfds.as_numpy(ds)):
      where = f"tfds:{name}/{tfds_split}#{i}"
      out.add(where, lambda: task.from_tfds(task, record, split, where))
  data = out.data
  if task.select is not None:
    data.examples = task.select(split, data.examples)
  return report(data)


# tfds retries a failed download 10 times with exponential backoff: with no network it gave up
# only after 3.5 minutes (RACE, measured). Three tries fail in about a second and still ride
# out a transient error.
_TFDS_DOWNLOAD_TRIES = 3


@contextlib.contextmanager
def _tfds_download_tries(tries: int):
  from tensorflow_datasets.core.download import downloader  # tfds is imported by the caller already
  saved = getattr(downloader, "MAX_RETRIES", None)
  if saved is None:  # another tfds version: keep its own policy
    yield
    return
  downloader.MAX_RETRIES = tries
  try:
    yield
  finally:
    downloader.MAX_RETRIES = saved


def _tfds_dataset(task: Task, split: str, name: str, tfds_split: str, data_dir: Optional[str], download: bool):
  """``name``'s ``tfds_split`` as a tf.data dataset, prepared (downloaded) first if it is not.

  Data that cannot be had (nothing prepared, no network, a manual download missing) is one
  ``RuntimeError`` line naming the task, where tfds looked, and how to read local files instead.
  """
  tfds = extras.require("tensorflow_datasets", "tasks", "reading a task from tensorflow-datasets")  # slow: only here
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    if task.tfds_manual:
      advice = task.tfds_manual
    else:
      advice = (f"point task.source at a folder holding {' or '.join(task.files[split])} in the official format "
                f"(fine-tuning: --config.task.source=DIR; zeroshot: --source={task.name}=DIR), or at "
                f"tfds:DATA_DIR where {name} is prepared")
    if not download:
      raise RuntimeError(f"{task.name}: tfds {name} is not prepared in {builder.data_dir} and downloading is off; "
                         f"{advice}")
    try:
      with _tfds_download_tries(_TFDS_DOWNLOAD_TRIES):
        builder.download_and_prepare()
    except Exception as e:  # noqa: BLE001 - tfds raises assorted types (network, manual files, checksums)
      while (e.__cause__ or e.__context__) is not None:  # the root: "Failed to resolve 'host'", not 3 wrappers
        e = e.__cause__ or e.__context__
      why = " ".join(str(e).split())
      why = why if len(why) <= 240 else why[:240] + "..."
      raise RuntimeError(f"{task.name}: tfds {name} is not prepared in {builder.data_dir} and preparing it "
                         f"failed ({type(e).__name__}: {why}); {advice}") from None
  return builder.as_dataset(split=tfds_split, shuffle_files=False)


def load_split(task: Task, split: str, source: str, *, skip_malformed: bool = False) -> SplitData:
  """The examples of ``split`` from ``source``: ``"tfds"``, ``"tfds:DATA_DIR"``, a folder with the official
  file names (``train.tsv``, ``dev.tsv``, ...), or one file. ``task``: a :class:`Task`, or its name."""
  task = resolve(task)
  if source == "tfds" or source.startswith("tfds:"):
    return load_tfds(task, split, source[5:] or None, skip_malformed=skip_malformed)
  path = source
  if os.path.isdir(source) and not (task.name in RACE_LEVELS and is_race_split_dir(source)):
    path = find_file(task, split, source)
  return read_file(task, split, path, skip_malformed=skip_malformed)
