"""The run's config, resolved once: an ``ml_collections.ConfigDict`` -> frozen, typed sections.

``configs/*.py`` stay ConfigDicts (overridable from the command line, locked against typos);
``resolve`` turns one into a ``Run`` of frozen dataclasses right at the start of a run, checking
every key and value that can be checked without devices or data, and everything below the entry
point takes these values, never the dict. Defaults are stated once, in these dataclasses (and
``model.ModelConfig``): ``defaults()`` is the ConfigDict they make, which the config files start
from and set what differs. ``Run.to_dict()`` is the record: a run writes it to ``RUN_DIR/config.json``
and to each checkpoint's metadata, ``resume`` compares it, and ``load(run_dir)`` reads a finished
run back (a config saved by an earlier version included: ``upgraded``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Optional

import ml_collections

from gpt1_jax.model import ModelConfig
from gpt1_jax.workdir import RunDir

SCHEDULES = ("cosine", "linear", "constant")
ON_NONFINITE = ("stop", "skip")


@dataclasses.dataclass(frozen=True)
class Train:
  """The defaults are the paper's pretraining (Section 4.1): Adam, max lr 2.5e-4, linear warmup over
  2000 updates then cosine annealing to 0, minibatches of 64 x 512 tokens, modified L2 w = 0.01."""

  num_steps: int = 100_000  # fine-tuning: 0 means num_epochs over the training set
  num_epochs: float = 0.0
  batch_size: int = 64  # global
  grad_accum_steps: int = 1
  learning_rate: float = 2.5e-4
  warmup_steps: int = 2000
  warmup_fraction: float = 0.0  # > 0: warm up over this fraction of the steps instead
  schedule: str = "cosine"
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.01
  grad_clip: float = 1.0
  on_nonfinite: str = "stop"  # or "skip": keep the old state for that step and count it
  # Positions per chunk of the LM loss's output layer (0: all at once); must divide the sequence
  # length. Saves the [B, T, 40k] logits' memory.
  lm_loss_chunk: int = 0
  # Pretraining only, > 0: a sampled softmax over this many candidates drawn from the corpus unigram
  # (shared by the batch) instead of the whole vocabulary; evaluation always uses the full softmax.
  softmax_samples: int = 0

  def __post_init__(self):
    _one_of(self, "schedule", SCHEDULES)
    _one_of(self, "on_nonfinite", ON_NONFINITE)
    _at_least(self, 0, "num_steps", "lm_loss_chunk", "softmax_samples", "warmup_steps")
    _at_least(self, 1, "batch_size", "grad_accum_steps")
    if self.batch_size % self.grad_accum_steps:
      raise ValueError(f"train.batch_size={self.batch_size} is not divisible by train.grad_accum_steps="
                       f"{self.grad_accum_steps}")
    _positive(self, "learning_rate", "eps", "grad_clip")
    _non_negative(self, "num_epochs", "weight_decay")
    # b2 = 1 never forgets the first gradients' scale; b1 = 1 never moves.
    _fraction(self, "b1", "b2", "warmup_fraction")


@dataclasses.dataclass(frozen=True)
class Data:
  dir: str = ""  # output of `python -m gpt1_jax.data.prepare`
  seq_len: int = 0  # 0: model.n_ctx
  check_tokenizer: bool = True  # the manifest's tokenizer fingerprint must match GPT1Tokenizer's

  def __post_init__(self):
    _at_least(self, 0, "seq_len")


@dataclasses.dataclass(frozen=True)
class Task:
  name: str = "lm"
  source: str = ""
  train_split: str = "train"
  eval_split: str = "dev"
  max_len: int = 0
  lm_coef: float = 0.5  # lambda, the auxiliary LM loss's weight (Section 3.2; 0.5 in Section 4.1)
  clf_pdrop: float = 0.1  # dropout before the classifier (Section 4.1)
  skip_malformed: bool = False
  max_train_examples: int = 0

  def __post_init__(self):
    _at_least(self, 0, "max_len", "max_train_examples")
    _non_negative(self, "lm_coef")
    _fraction(self, "clf_pdrop")

  @property
  def is_lm(self) -> bool:
    return self.name == "lm"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  every_steps: int = 1000
  keep: int = 3
  keep_period: int = 0
  every_minutes: float = 0.0
  async_save: bool = True
  allow_fallback: bool = False
  # Resume even when the config changes the run (gpt1_jax/resume.py says which changes are
  # accepted without it).
  allow_config_change: bool = False

  def __post_init__(self):
    _at_least(self, 1, "every_steps", "keep")
    _at_least(self, 0, "keep_period")
    _non_negative(self, "every_minutes")


@dataclasses.dataclass(frozen=True)
class Log:
  every_steps: int = 50
  tensorboard: bool = True
  measure_peak: bool = True
  peak_flops_per_device: float = 0.0

  def __post_init__(self):
    _at_least(self, 1, "every_steps")
    _non_negative(self, "peak_flops_per_device")


@dataclasses.dataclass(frozen=True)
class Eval:
  every_steps: int = 1000  # 0: only at the end (fine-tuning) / never (pretraining)
  batch_size: int = 0  # 0: train.batch_size

  def __post_init__(self):
    _at_least(self, 0, "every_steps", "batch_size")


@dataclasses.dataclass(frozen=True)
class Mesh:
  """Sizes of the mesh axes (data, fsdp, tensor); -1 fills the devices. dcn_* multiply across TPU slices."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  dcn_data: int = 1
  dcn_fsdp: int = 1
  dcn_tensor: int = 1
  num_devices: int = 0  # first N devices only (0: all)
  rules: Optional[tuple] = None  # None: sharding.DEFAULT_RULES

  def __post_init__(self):
    for key in ("data", "fsdp", "tensor"):
      value = getattr(self, key)
      if value != -1 and value < 1:
        raise ValueError(f"mesh.{key}={value!r}: expected -1 (fill the devices) or a size >= 1")
    _at_least(self, 1, "dcn_data", "dcn_fsdp", "dcn_tensor")
    _at_least(self, 0, "num_devices")


@dataclasses.dataclass(frozen=True)
class Debug:
  """Fault injection for the reliability suite: a NaN loss at a step; a preemption (as on SIGTERM:
  save, exit 75) at a step."""

  nan_at_step: int = -1
  preempt_at_step: int = -1

  def __post_init__(self):
    _at_least(self, -1, "nan_at_step", "preempt_at_step")


@dataclasses.dataclass(frozen=True)
class Init:
  # A fresh run's transformer: "none" (random), a gpt1_jax run or save_params directory, openai:DIR
  # (the original release) or hf:PATH (a Hugging Face openai-gpt save); gpt1_jax.weights reads it.
  # Ignored on resume: the weights come from the checkpoint.
  weights: str = "none"

  def __post_init__(self):
    if self.weights in ("", "None"):  # an unset value
      object.__setattr__(self, "weights", "none")


@dataclasses.dataclass(frozen=True)
class Run:
  """A run's whole config; ``Run()`` is every default."""

  seed: int = 0
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  task: Task = dataclasses.field(default_factory=Task)
  data: Data = dataclasses.field(default_factory=Data)
  train: Train = dataclasses.field(default_factory=Train)
  checkpoint: Checkpoint = dataclasses.field(default_factory=Checkpoint)
  log: Log = dataclasses.field(default_factory=Log)
  eval: Eval = dataclasses.field(default_factory=Eval)
  mesh: Mesh = dataclasses.field(default_factory=Mesh)
  init: Init = dataclasses.field(default_factory=Init)
  debug: Debug = dataclasses.field(default_factory=Debug)

  def to_dict(self) -> dict:
    """Every key as plain values, sections as dicts: ``resolve(run.to_dict()) == run``."""
    out = {"seed": self.seed, "model": dataclasses.asdict(self.model)}
    out.update((name, dataclasses.asdict(getattr(self, name))) for name in _SECTIONS)
    return out

  @property
  def max_seq_len(self) -> int:
    """The longest sequence a step sees. Pretraining: every window's length (``data.seq_len``, 0:
    ``model.n_ctx``). A task: the upper bound (``task.max_len``, 0: ``model.n_ctx``, never more),
    which the job fits to the data."""
    if self.task.is_lm:
      return self.data.seq_len or self.model.n_ctx
    return min(self.task.max_len or self.model.n_ctx, self.model.n_ctx)


_SECTIONS = {
    "task": Task,
    "data": Data,
    "train": Train,
    "checkpoint": Checkpoint,
    "log": Log,
    "eval": Eval,
    "mesh": Mesh,
    "init": Init,
    "debug": Debug
}

# Keys renamed since runs were saved, old -> new: saved configs (config.json, a checkpoint's
# metadata) and the command line (``--config.init.from=...``) may still spell them the old way.
RENAMED = {"init.from": "init.weights"}

FILE_NAME = RunDir.CONFIG  # RUN_DIR/FILE_NAME: Run.to_dict(), written once the run is accepted


def defaults() -> ml_collections.ConfigDict:
  """Every key of a run's config at its dataclass default: what ``configs/*.py`` start from."""
  c = ml_collections.ConfigDict(Run().to_dict())
  # A tuple of (logical axis, mesh axes) pairs once set; None: gpt1_jax.sharding.DEFAULT_RULES.
  c.mesh.rules = ml_collections.FieldReference(None, field_type=tuple)
  return c


def resolve(config) -> Run:
  """A ConfigDict (or plain dict) -> ``Run``; errors name the key and the allowed values."""
  raw = renamed(config.to_dict() if hasattr(config, "to_dict") else dict(config))
  unknown = set(raw) - set(_SECTIONS) - {"seed", "model"}
  if unknown:
    raise ValueError(f"config has unknown sections {sorted(unknown)}")
  sections = {name: section(cls, raw.get(name) or {}, name) for name, cls in _SECTIONS.items()}
  model = model_config(raw.get("model") or {})
  samples = sections["train"].softmax_samples
  if samples >= model.vocab_size:
    # A "sample" as large as the vocabulary costs more than the full softmax it approximates.
    raise ValueError(f"train.softmax_samples={samples}: expected 0 (the full softmax) or fewer candidates "
                     f"than model.vocab_size={model.vocab_size}")
  return Run(seed=int(raw.get("seed", 0)), model=model, **sections)


def load(run_dir: str) -> Run:
  """The run in ``run_dir`` as it ran, from its ``config.json`` (one an earlier version wrote too)."""
  path = os.path.join(run_dir, FILE_NAME)
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"{run_dir}: no {FILE_NAME} (not a run directory, or its run was refused before "
                            f"it began)") from None
  return resolve(saved)


def upgraded(saved: dict) -> dict:
  """A config as any version saved it (``config.json``, a checkpoint's metadata) in today's keys: each
  renamed key under its new name, each key added since at its default. A key is added with the default
  that does what the code did before it, so a run saved without the key ran as its default does
  (tests/test_config_record.py pins the defaults: changing one changes how such runs read back)."""
  out = Run().to_dict()
  for key, value in renamed(saved).items():
    out[key] = {**out[key], **value} if isinstance(out.get(key), dict) and isinstance(value, dict) else value
  return out


def renamed(raw: dict) -> dict:
  """``raw`` (a config as nested dicts) with each old key of ``RENAMED`` under its new name."""
  out = dict(raw)
  for old, new in RENAMED.items():
    (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
    if old_key not in (out.get(old_section) or {}):
      continue
    values = dict(out[old_section])
    value = values.pop(old_key)
    out[old_section] = values
    if new_key in (out.get(new_section) or {}):
      raise ValueError(f"config sets both {old} (the old name) and {new}: keep {new}")
    out[new_section] = {**(out.get(new_section) or {}), new_key: value}
  return out


def renamed_flags(argv: list[str]) -> list[str]:
  """``argv`` with ``--config.OLD`` of ``RENAMED`` spelt ``--config.NEW``, for absl to parse: ``from`` is
  a Python keyword, which ml_collections' override parser cannot take ("Could not parse 'init.from'")."""
  names = {f"{dashes}config.{old}": f"{dashes}config.{new}" for old, new in RENAMED.items() for dashes in ("-", "--")}
  end = argv.index("--") if "--" in argv else len(argv)
  flags = [names.get(name, name) + eq + value for name, eq, value in (a.partition("=") for a in argv[:end])]
  return flags + argv[end:]


def section(cls, values: dict, name: str):
  """One section as ``cls``: unknown keys refused, each value converted to its field's type."""
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = set(values) - set(fields)
  if unknown:
    raise ValueError(f"config.{name} has unknown keys {sorted(unknown)}; known: {sorted(fields)}")
  kwargs = {}
  for key, value in values.items():
    kind = fields[key].type
    try:
      kwargs[key] = _convert(value, kind)
    except (TypeError, ValueError):
      raise ValueError(f"config.{name}.{key}={value!r}: expected {kind}") from None
  return cls(**kwargs)


def model_config(values) -> ModelConfig:
  values = dict(values)
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = set(values) - fields
  if unknown:
    raise ValueError(f"config.model has unknown keys {sorted(unknown)}; ModelConfig fields are {sorted(fields)}")
  return ModelConfig(**values)


def _convert(value: Any, kind: str):
  if kind == "int":
    if isinstance(value, float) and not value.is_integer():
      raise ValueError
    return int(value)
  if kind == "float":
    return float(value)
  if kind == "bool":
    if not isinstance(value, (bool, int)):
      raise TypeError
    return bool(value)
  if kind == "str":
    return str(value)
  if value is None:
    return None
  return tuple(tuple(x) if isinstance(x, list) else x for x in value)  # mesh.rules


def _refuse(obj, field: str, allowed: str):
  raise ValueError(f"{type(obj).__name__.lower()}.{field}={getattr(obj, field)!r}: expected {allowed}")


def _at_least(obj, low: int, *fields: str):
  for field in fields:
    if getattr(obj, field) < low:
      _refuse(obj, field, f"an integer >= {low}")


def _positive(obj, *fields: str):
  for field in fields:
    value = getattr(obj, field)
    if not (math.isfinite(value) and value > 0):
      _refuse(obj, field, "a finite number > 0")


def _non_negative(obj, *fields: str):
  for field in fields:
    value = getattr(obj, field)
    if not (math.isfinite(value) and value >= 0):
      _refuse(obj, field, "a finite number >= 0")


def _fraction(obj, *fields: str):
  for field in fields:
    if not 0 <= getattr(obj, field) < 1:  # NaN fails both comparisons
      _refuse(obj, field, "a number in [0, 1)")


def _one_of(obj, field: str, allowed: tuple):
  value = getattr(obj, field)
  if value not in allowed:
    section = type(obj).__name__.lower()
    raise ValueError(f"{section}.{field}={value!r}: expected one of {', '.join(allowed)}")
