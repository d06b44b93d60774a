"""The grid's inputs: the arms (Table 5's rows), :class:`Grid`, the recipes' sizes, the checks of
every input before anything trains (and the freezing of the given weights), and each run's config.

Run directories are ``OUT/runs/TASK/ARM/seedS``, frozen weights ``OUT/weights/NAME``, pretraining
runs ``OUT/pretrain/{transformer,lstm}`` (usage: the package docstring).
"""

from __future__ import annotations

import dataclasses
import os

from gpt1_jax import checkpoint, project, transfer, weights
from gpt1_jax import config as config_lib
from gpt1_jax.data import tasks as tasks_lib
from gpt1_jax.project import load_config

RECIPES = ("tiny", "paper")


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  label: str  # Table 5's row name
  weights: str  # "transformer", "lstm", or "none" (random init, the transformer's shape)
  lm_coef: float


ARMS = (Arm("full", "Transformer w/ aux LM (full)", "transformer",
            0.5), Arm("no_pretraining", "Transformer w/o pre-training", "none",
                      0.5), Arm("no_aux_lm", "Transformer w/o aux LM", "transformer",
                                0.0), Arm("lstm", "LSTM w/ aux LM", "lstm", 0.5))
ARM_NAMES = tuple(a.name for a in ARMS)

DEFAULT_TASKS = ("sst2", "cola", "stsb", "rte", "mrpc", "story_cloze")
LSTM_UNITS = {"tiny": 256, "paper": 2048}

# The tiny recipe's sizing: what fits the 72 runs of six tasks x four arms x three seeds in about
# two hours on 2 shared CPU cores, keeping configs/finetune.py:<task>_tiny's schedule (batch 32,
# 6 epochs, lr 3e-3, 10% warmup). With a 40k vocabulary the auxiliary LM's output layer over every
# input position is ~90% of a lambda = 0.5 step (~10x a lambda = 0 step, ~1,200 positions/s on
# the loaded cores), so the budget is task *positions*: examples x sequences per example (2 for
# STS-B, MRPC, Story Cloze: both orders, both endings) x length. Single sentences are cut to 32
# tokens and STS-B pairs to 48 (few lose tokens; the loop logs how many).
TINY_SIZES = {
    "*": {
        "log.measure_peak": False,
        "checkpoint.keep": 1
    },
    "sst2": {
        "task.max_train_examples": 400,
        "task.max_len": 32
    },
    "cola": {
        "task.max_train_examples": 400,
        "task.max_len": 32
    },
    "rte": {
        "task.max_train_examples": 200
    },
    "stsb": {
        "task.max_train_examples": 150,
        "task.max_len": 48
    },
    "mrpc": {
        "task.max_train_examples": 150
    },
    "story_cloze": {
        "task.max_train_examples": 150
    },
}
# --quick: a smoke test of the whole grid in minutes (numbers meaningless).
QUICK_FINETUNE = {
    "task.max_train_examples": 16,
    "train.num_steps": 3,
    "train.num_epochs": 0.0,
    "train.batch_size": 8,
    "train.warmup_fraction": 0.0,
    "train.warmup_steps": 1,
    "eval.batch_size": 8,
    "log.every_steps": 1,
    "log.tensorboard": False,
    "log.measure_peak": False,
    "checkpoint.every_steps": 3,
    "checkpoint.keep": 1
}
QUICK_PRETRAIN = {
    "model.n_ctx": 32,
    "model.n_embd": 32,
    "model.n_head": 2,
    "model.n_layer": 2,
    "train.num_steps": 12,
    "train.batch_size": 8,
    "train.warmup_steps": 2,
    "checkpoint.every_steps": 12,
    "eval.every_steps": 12,
    "eval.batch_size": 8,
    "log.every_steps": 4,
    "log.tensorboard": False,
    "log.measure_peak": False
}
QUICK_LSTM_UNITS = 32
QUICK_CORPUS_REVIEWS = 600

# ----------------------------------------------------------------------------
# The grid's inputs, checked before anything trains.


@dataclasses.dataclass
class Grid:
  out: str
  tasks: tuple
  task_dirs: dict  # task -> directory
  seeds: tuple
  arms: tuple = ARMS
  recipe: str = "tiny"
  transformer: str = ""  # weight source; "" = pretrain it
  lstm: str = ""
  pretrain_data: str = ""
  lstm_units: int = 0  # 0: LSTM_UNITS[recipe]
  finetune_set: tuple = ()  # "KEY=VALUE" / "TASK:KEY=VALUE"
  pretrain_set: tuple = ()
  quick: bool = False
  keep_weights: bool = False


def parse_assignments(items, what: str) -> list[tuple[str, str, str]]:
  """``["KEY=VALUE", "TASK:KEY=VALUE"]`` -> ``[(task or "*", key, value)]``."""
  out = []
  for item in items:
    key, eq, value = item.partition("=")
    if not eq or not key:
      raise ValueError(f"{what}={item}: expected KEY=VALUE or TASK:KEY=VALUE")
    task, colon, key = key.rpartition(":") if ":" in key else ("*", "", key)
    out.append((task or "*", key.strip(), value.strip()))
  return out


def assign(config, key: str, value, where: str):
  """``config[a][b]... = value``, converted to the existing field's type; a missing key is an error."""
  *path, last = key.split(".")
  node = config
  for p in path:
    if p not in node:
      raise ValueError(f"{where}: the config has no key {key!r} (no section {p!r})")
    node = node[p]
  if last not in node:
    raise ValueError(f"{where}: the config has no key {key!r}; {'.'.join(path) or 'the config'} has "
                     f"{sorted(node.keys())}")
  old = node[last]
  if isinstance(value, str):
    try:
      if isinstance(old, bool):
        if value.lower() not in ("true", "false", "1", "0"):
          raise ValueError
        value = value.lower() in ("true", "1")
      elif isinstance(old, int):
        value = int(value)
      elif isinstance(old, float):
        value = float(value)
    except ValueError:
      raise ValueError(f"{where}: {key} expects a {type(old).__name__}, got {value!r}") from None
  node[last] = value


def _default_task_dir(task: str) -> str:
  return project.path("data", task, must_exist=False)


def task_dirs_with_defaults(tasks, given: dict) -> dict:
  """``given`` (``--task_dirs``) plus the checkout's ``data/TASK`` for each of ``tasks`` it holds."""
  dirs = dict(given)
  for t in tasks:
    if t not in dirs and os.path.isdir(_default_task_dir(t)):
      dirs[t] = _default_task_dir(t)
  return dirs


def tasks_with_data(tasks, task_dirs: dict) -> tuple[tuple, tuple]:
  """``(kept, left_out)``: the default task list cut to the tasks that have a data directory.

  Two of Table 5's tasks (MRPC, Story Cloze) cannot be shipped, so a fresh clone holds no data for
  them: the default grid runs without them and says how to add them (:func:`left_out_message`),
  where an explicit ``--tasks`` list is taken as it is and refused by :func:`check_inputs`.
  """
  kept = tuple(t for t in tasks if t in task_dirs)
  left_out = tuple(t for t in tasks if t not in task_dirs)
  if not kept:
    raise ValueError(f"no data for any of the default tasks ({', '.join(tasks)}) under "
                     f"{project.path('data', must_exist=False)}: run from a clone (or set GPT1_JAX_HOME to one), "
                     f"or pass --tasks=TASK --task_dirs=TASK=DIR")
  return kept, left_out


def left_out_message(left_out) -> str:
  """One line: which default tasks the grid runs without, and the flag that adds them."""
  dirs = ",".join(f"{t}=DIR" for t in left_out)
  return (f"left out {', '.join(left_out)}: no data directory (the project cannot ship "
          f"{'it' if len(left_out) == 1 else 'them'}); add with --task_dirs={dirs}")


def check_inputs(grid: Grid) -> dict:
  """Everything that can be wrong with the grid's inputs, checked before any work; then freezes
  the given weights into ``OUT/weights/`` and returns their model configs by name."""
  known = sorted(set(tasks_lib.TASKS) & set(_finetune_tasks()))
  if grid.recipe not in RECIPES:
    raise ValueError(f"--recipe={grid.recipe}: choose one of {RECIPES}")
  if not grid.tasks:
    raise ValueError("--tasks is empty")
  for t in grid.tasks:
    if t not in known:
      raise ValueError(f"--tasks: unknown task {t!r}; choose from {', '.join(known)}")
  if len(set(grid.tasks)) != len(grid.tasks):
    raise ValueError(f"--tasks lists a task twice: {list(grid.tasks)}")
  if not grid.seeds:
    raise ValueError("--seeds is empty")
  for t in grid.task_dirs:
    if t not in grid.tasks:
      raise ValueError(f"--task_dirs names {t!r}, which is not in --tasks={','.join(grid.tasks)}")
  for t in grid.tasks:
    d = grid.task_dirs.get(t)
    if d is None:
      raise ValueError(f"{t}: no data directory: the project ships none for {t}; pass --task_dirs={t}=DIR")
    if not os.path.isdir(d):
      raise ValueError(f"--task_dirs: {t}={d} is not a directory")
    cfg = load_config("finetune", f"{t}_tiny")
    for split in (cfg.task.train_split, cfg.task.eval_split):
      tasks_lib.find_file(tasks_lib.get_task(t), split, d)  # names the files it looked for
  if os.path.exists(grid.out) and not os.path.isdir(grid.out):
    raise ValueError(f"--out={grid.out} is a file, not a directory")
  for items, what in ((grid.finetune_set, "--set"), (grid.pretrain_set, "--pretrain_set")):
    for task, _, _ in parse_assignments(items, what):
      if what == "--pretrain_set" and task != "*":
        raise ValueError(f"--pretrain_set: {task}: pretraining is shared by every task; give KEY=VALUE")
      if task != "*" and task not in grid.tasks:
        raise ValueError(f"{what}: {task!r} is not in --tasks={','.join(grid.tasks)}")
  weights = {
      name: read_weights(grid, name, spec)
      for name, spec in (("transformer", grid.transformer), ("lstm", grid.lstm))
      if spec
  }
  if not grid.transformer:
    _check_pretrain_data(grid)
  # Every run's config resolves (types, values) before the first one trains.
  shape = weights["transformer"][0] if "transformer" in weights else _pretrain_model(grid)
  lstm = weights["lstm"][0] if "lstm" in weights else _lstm_model(grid, shape)
  for t in grid.tasks:
    for arm in grid.arms:
      config_lib.resolve(finetune_config(grid, t, arm, grid.seeds[0], "none", lstm if arm.weights == "lstm" else shape))
  if not grid.transformer:
    config_lib.resolve(pretrain_config(grid, "transformer"))
  if not grid.lstm and needs_lstm(grid):
    c = pretrain_config(grid, "lstm", shape)
    config_lib.resolve(c)
    made_here = grid.quick and not grid.pretrain_data and not grid.transformer
    if not made_here and not os.path.exists(os.path.join(c.data.dir, "manifest.json")):
      raise ValueError(f"pretraining the LSTM needs the transformer's token store, and {c.data.dir or '(none)'} "
                       f"is not one: give --pretrain_data=DIR (or a pretrained --lstm)")
  return {name: freeze() for name, (_, freeze) in weights.items()}


def _finetune_tasks():
  return project.config_module("finetune").TASKS


def read_weights(grid: Grid, name: str, spec: str):
  """Reads ``spec``'s weights (its latest checkpoint) and checks them: ``(model config dict, freeze)``,
  where ``freeze()`` writes them to ``OUT/weights/NAME`` unless they are there already (from the same
  source: another source is refused) and returns the model config dict."""
  kind, path = weights.parse(spec)
  if kind == "gpt1_jax" and not os.path.isdir(path):
    raise ValueError(f"--{name}={spec}: no such directory")
  frozen = os.path.join(grid.out, "weights", name)
  source = os.path.abspath(path) if kind == "gpt1_jax" else spec
  want = "lstm" if name == "lstm" else "transformer"
  if os.path.isdir(frozen):
    cfg, _, meta = checkpoint.load_params(frozen, with_meta=True)
    if meta.get("source") != source:
      raise ValueError(f"--{name}={spec}: {grid.out} was made with --{name}={meta.get('source')} "
                       f"(step {meta.get('step')}); give another --out, or remove {frozen} and the runs using it")
    params = None
  else:
    try:
      if kind == "gpt1_jax":
        cfg, params, meta = checkpoint.load_params(path, with_meta=True)
      else:
        (cfg, params), meta = weights.load(spec), {}
    except (OSError, ValueError, RuntimeError) as e:
      raise ValueError(f"--{name}={spec}: cannot read the weights: {e}") from None
  if cfg.architecture != want:
    raise ValueError(f"--{name}={spec}: model.architecture is {cfg.architecture!r}, expected {want!r}")
  model = checkpoint.model_config_to_dict(cfg)

  def freeze() -> dict:
    if params is not None and is_main():
      checkpoint.save_params(frozen + ".tmp", cfg, {"transformer": weights.transformer_of(params)}, extra_meta={
          "source": source,
          "step": meta.get("step")
      })
      os.replace(frozen + ".tmp", frozen)
    barrier(f"ablations: froze {name}")
    return model

  return model, freeze


def is_main() -> bool:
  import jax
  return jax.process_index() == 0


def barrier(name: str):
  """Multi-host runs (``--distributed``): every host waits for process 0's files."""
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _check_pretrain_data(grid: Grid):
  if grid.quick and not grid.pretrain_data:
    return  # --quick tokenises a sample of the shipped IMDb corpus itself
  d = grid.pretrain_data
  if not d:
    raise ValueError("no --transformer and no --pretrain_data: give a pretrained run, or a token store to "
                     "pretrain on (python -m gpt1_jax.data.prepare, or the demo's workdirs/demo/data)")
  if not os.path.exists(os.path.join(d, "manifest.json")):
    raise ValueError(f"--pretrain_data={d}: no manifest.json; not a directory written by gpt1_jax.data.prepare")


def needs_lstm(grid: Grid) -> bool:
  return any(a.weights == "lstm" for a in grid.arms)


def run_dir(grid: Grid, task: str, arm: str, seed: int) -> str:
  return os.path.join(os.path.abspath(grid.out), "runs", task, arm, f"seed{seed}")


# ----------------------------------------------------------------------------
# Configs.


def _overrides(grid: Grid, items, task: str, what: str) -> list[tuple[str, object]]:
  out = []
  if what == "--set":
    base = dict(QUICK_FINETUNE) if grid.quick else {}
    if grid.recipe == "tiny" and not grid.quick:
      base = {**TINY_SIZES.get("*", {}), **TINY_SIZES.get(task, {})}
    out = list(base.items())
  elif grid.quick:
    out = list(QUICK_PRETRAIN.items())
  return out + [(k, v) for t, k, v in parse_assignments(items, what) if t in ("*", task)]


def finetune_config(grid: Grid, task: str, arm: Arm, seed: int, weights: str, model: dict):
  c = transfer.finetune_config(task, weights, seed, grid.task_dirs[task], model=model, recipe=grid.recipe)
  c.task.lm_coef = arm.lm_coef
  for k, v in _overrides(grid, grid.finetune_set, task, "--set"):
    assign(c, k, v, f"--set {task}:{k}={v}")
  return c


def _pretrain_model(grid: Grid) -> dict:
  return pretrain_config(grid, "transformer").model.to_dict()


def _lstm_model(grid: Grid, transformer_model: dict) -> dict:
  return {**transformer_model, "architecture": "lstm", "lstm_units": lstm_units_of(grid)}


def lstm_units_of(grid: Grid) -> int:
  return grid.lstm_units or (QUICK_LSTM_UNITS if grid.quick else LSTM_UNITS[grid.recipe])


def pretrain_config(grid: Grid, which: str, transformer_model: dict | None = None):
  """The recipe's pretraining config; the LSTM's copies the transformer run's data, seed, train
  section and model (when ``--transformer`` is a run with a ``config.json``) and changes only the body."""
  c = load_config("pretrain", "tiny" if grid.recipe == "tiny" else "gpt1")
  for k, v in _overrides(grid, grid.pretrain_set, "*", "--pretrain_set"):
    assign(c, k, v, f"--pretrain_set {k}={v}")
  c.data.dir = os.path.abspath(grid.pretrain_data) if grid.pretrain_data else (
      os.path.join(os.path.abspath(grid.out), "pretrain", "data") if grid.quick else "")
  if which == "lstm":
    run_cfg = _transformer_run_config(grid)
    if run_cfg:
      c.seed = run_cfg["seed"]
      c.data.dir = run_cfg["data"]["dir"]
      c.train.update({k: v for k, v in run_cfg["train"].items() if k in c.train})
      transformer_model = run_cfg["model"]
    if transformer_model:
      c.model.update({k: v for k, v in transformer_model.items() if k in c.model})
    c.model.architecture = "lstm"
    c.model.lstm_units = lstm_units_of(grid)
  return c


def _transformer_run_config(grid: Grid) -> dict | None:
  """The transformer pretraining run's config (as a dict): ``--transformer``'s when it is a run, else ours."""
  if grid.transformer:
    kind, path = weights.parse(grid.transformer)
    path = os.path.abspath(path)
    if os.path.basename(path) == "checkpoints":
      path = os.path.dirname(path)
  else:
    path = os.path.join(os.path.abspath(grid.out), "pretrain", "transformer")
  try:
    return config_lib.load(path).to_dict()
  except FileNotFoundError:
    return None
