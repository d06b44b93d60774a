"""The paper's Table 5 in miniature: every task under the four ablation arms, several seeds, one command.

  python -m gpt1_jax.ablations --transformer=workdirs/demo/pretrain --out=workdirs/ablations \\
      --task_dirs=mrpc=../shared/data/MRPC,story_cloze=../shared/data/StoryCloze

The arms are the rows of Table 5 (Radford et al. 2018, Section 5 "Ablation studies"):

* ``full``: the pretrained transformer, fine-tuned with the auxiliary LM objective, L3 = L2 + 0.5 L1;
* ``no_pretraining``: the same transformer shape from random initialisation, lambda = 0.5;
* ``no_aux_lm``: the pretrained transformer, lambda = 0 (L2 alone);
* ``lstm``: a single-layer LSTM pretrained on the same data for the same steps, lambda = 0.5.

Every (task, arm, seed) is its own ``train_and_evaluate`` run in ``OUT/runs/TASK/ARM/seedS``; a run
that finished has ``result.json`` there and is never rerun, an interrupted one resumes from its
checkpoint, so an interrupted grid continues where it stopped. Each cell is the metric of the
final evaluation that the run logged in its ``metrics.jsonl`` (Table 5's metrics: Matthews
correlation for CoLA, F1 for MRPC and QQP, Pearson for STS-B, accuracy elsewhere), as mean and
sample standard deviation over seeds; the average column averages the tasks per seed first.
Writes ``OUT/ablations.json``, ``OUT/ablations.md`` and ``OUT/ablations.png``.

Pretrained weights: ``--transformer`` and ``--lstm`` take anything ``init.from`` reads (a run's
workdir, a weights directory, ``openai:DIR``, ``hf:PATH``); the latest checkpoint is frozen into
``OUT/weights/`` before the first run, so a pretraining run that goes on does not change the
grid under it. Without ``--transformer`` the grid pretrains ``configs/pretrain.py:<recipe>`` on
``--pretrain_data`` in ``OUT/pretrain/transformer``; without ``--lstm`` it pretrains the LSTM in
``OUT/pretrain/lstm`` with the transformer run's own data, seed, batch, schedule and step count
(from its ``config.json``), only ``model.architecture=lstm`` and ``model.lstm_units`` changed.
Both pretraining runs resume.

``--recipe=tiny`` (the default) fine-tunes with ``configs/finetune.py:<task>_tiny`` sized by
:data:`TINY_SIZES` to fit 2 CPU cores; ``--recipe=paper`` with ``configs/finetune.py:<task>`` (the
paper's hyperparameters, every training example), pretraining ``configs/pretrain.py:gpt1`` and a
2,048-unit LSTM. ``--set=KEY=VALUE`` (or ``TASK:KEY=VALUE``) overrides any key of every (or one
task's) fine-tuning config, ``--pretrain_set`` of the pretraining configs: that is how the same
command runs on a GPU or a pod (``model.dtype=bfloat16``, ``mesh.fsdp=-1``...). Every input is
checked before anything trains: unknown tasks or keys, missing task files, unreadable or
mismatched checkpoints end the command with one ``error:`` line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from gpt1_jax import project
from gpt1_jax.project import load_config

RECIPES = ("tiny", "paper")


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  label: str  # Table 5's row name
  weights: str  # "transformer", "lstm", or "none" (random init, the transformer's shape)
  lm_coef: float


ARMS = (Arm("full", "Transformer w/ aux LM (full)", "transformer", 0.5),
        Arm("no_pretraining", "Transformer w/o pre-training", "none", 0.5),
        Arm("no_aux_lm", "Transformer w/o aux LM", "transformer", 0.0),
        Arm("lstm", "LSTM w/ aux LM", "lstm", 0.5))
ARM_NAMES = tuple(a.name for a in ARMS)

# Table 5's metric per task (the paper's tables report F1 for MRPC/QQP and Pearson for STS-B);
# accuracy for the rest.
TABLE_METRIC = {"cola": "mcc", "mrpc": "f1", "qqp": "f1", "stsb": "pearson"}
METRIC_NAMES = {"mcc": "mc", "accuracy": "acc", "f1": "F1", "pearson": "pc"}

# Table 5 of the paper (x100), for the comparison in BENCHMARKS.md.
PAPER_TABLE5 = {
    "columns": ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"),
    "full": (74.7, (45.4, 91.3, 82.3, 82.0, 70.3, 81.8, 88.1, 56.0)),
    "no_pretraining": (59.9, (18.9, 84.0, 79.4, 30.9, 65.5, 75.7, 71.2, 53.8)),
    "no_aux_lm": (75.0, (47.9, 92.0, 84.9, 83.2, 69.8, 81.1, 86.9, 54.4)),
    "lstm": (69.1, (30.3, 90.5, 83.2, 71.8, 68.1, 73.7, 81.1, 54.6)),
}

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
    "*": {"log.measure_peak": False, "checkpoint.keep": 1},
    "sst2": {"task.max_train_examples": 400, "task.max_len": 32},
    "cola": {"task.max_train_examples": 400, "task.max_len": 32},
    "rte": {"task.max_train_examples": 200},
    "stsb": {"task.max_train_examples": 150, "task.max_len": 48},
    "mrpc": {"task.max_train_examples": 150},
    "story_cloze": {"task.max_train_examples": 150},
}
# --quick: a smoke test of the whole grid in minutes (numbers meaningless).
QUICK_FINETUNE = {"task.max_train_examples": 16, "train.num_steps": 3, "train.num_epochs": 0.0,
                  "train.batch_size": 8, "train.warmup_fraction": 0.0, "train.warmup_steps": 1,
                  "eval.batch_size": 8, "log.every_steps": 1, "log.tensorboard": False,
                  "log.measure_peak": False, "checkpoint.every_steps": 3, "checkpoint.keep": 1}
QUICK_PRETRAIN = {"model.n_ctx": 32, "model.n_embd": 32, "model.n_head": 2, "model.n_layer": 2,
                  "train.num_steps": 12, "train.batch_size": 8, "train.warmup_steps": 2,
                  "checkpoint.every_steps": 12, "eval.every_steps": 12, "eval.batch_size": 8,
                  "log.every_steps": 4, "log.tensorboard": False, "log.measure_peak": False}
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


def check_inputs(grid: Grid) -> dict:
  """Everything that can be wrong with the grid's inputs, checked before any work; then freezes
  the given weights into ``OUT/weights/`` and returns their model configs by name."""
  from gpt1_jax.data import tasks as tasks_lib
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
      tasks_lib.find_file(t, split, d)  # names the files it looked for
  if os.path.exists(grid.out) and not os.path.isdir(grid.out):
    raise ValueError(f"--out={grid.out} is a file, not a directory")
  for items, what in ((grid.finetune_set, "--set"), (grid.pretrain_set, "--pretrain_set")):
    for task, _, _ in parse_assignments(items, what):
      if what == "--pretrain_set" and task != "*":
        raise ValueError(f"--pretrain_set: {task}: pretraining is shared by every task; give KEY=VALUE")
      if task != "*" and task not in grid.tasks:
        raise ValueError(f"{what}: {task!r} is not in --tasks={','.join(grid.tasks)}")
  weights = {name: _read_weights(grid, name, spec) for name, spec in (("transformer", grid.transformer),
                                                                      ("lstm", grid.lstm)) if spec}
  if not grid.transformer:
    _check_pretrain_data(grid)
  # Every run's config resolves (types, values) before the first one trains.
  from gpt1_jax import config as config_lib
  shape = weights["transformer"][0] if "transformer" in weights else _pretrain_model(grid)
  lstm = weights["lstm"][0] if "lstm" in weights else _lstm_model(grid, shape)
  for t in grid.tasks:
    for arm in grid.arms:
      config_lib.resolve(finetune_config(grid, t, arm, grid.seeds[0], "none", lstm if arm.weights == "lstm" else shape))
  if not grid.transformer:
    config_lib.resolve(pretrain_config(grid, "transformer"))
  if not grid.lstm and _needs_lstm(grid):
    c = pretrain_config(grid, "lstm", shape)
    config_lib.resolve(c)
    made_here = grid.quick and not grid.pretrain_data and not grid.transformer
    if not made_here and not os.path.exists(os.path.join(c.data.dir, "manifest.json")):
      raise ValueError(f"pretraining the LSTM needs the transformer's token store, and {c.data.dir or '(none)'} "
                       f"is not one: give --pretrain_data=DIR (or a pretrained --lstm)")
  return {name: freeze() for name, (_, freeze) in weights.items()}


def _finetune_tasks():
  return project.config_module("finetune").TASKS


def _read_weights(grid: Grid, name: str, spec: str):
  """Reads ``spec``'s weights (its latest checkpoint) and checks them: ``(model config dict, freeze)``,
  where ``freeze()`` writes them to ``OUT/weights/NAME`` unless they are there already (from the same
  source: another source is refused) and returns the model config dict."""
  from gpt1_jax import checkpoint, weights
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
    if params is not None and _is_main():
      checkpoint.save_params(frozen + ".tmp", cfg, {"transformer": weights.transformer_of(params)},
                             extra_meta={"source": source, "step": meta.get("step")})
      os.replace(frozen + ".tmp", frozen)
    _barrier(f"ablations: froze {name}")
    return model

  return model, freeze


def _is_main() -> bool:
  import jax
  return jax.process_index() == 0


def _barrier(name: str):
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


def finetune_config(grid: Grid, task: str, arm: Arm, seed: int, init_from: str, model: dict):
  from gpt1_jax import transfer
  c = transfer.finetune_config(task, init_from, seed, grid.task_dirs[task], model=model, recipe=grid.recipe)
  c.task.lm_coef = arm.lm_coef
  for k, v in _overrides(grid, grid.finetune_set, task, "--set"):
    assign(c, k, v, f"--set {task}:{k}={v}")
  return c


def _pretrain_model(grid: Grid) -> dict:
  return pretrain_config(grid, "transformer").model.to_dict()


def _lstm_model(grid: Grid, transformer_model: dict) -> dict:
  return {**transformer_model, "architecture": "lstm", "lstm_units": _lstm_units(grid)}


def _lstm_units(grid: Grid) -> int:
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
    c.model.lstm_units = _lstm_units(grid)
  return c


def _transformer_run_config(grid: Grid) -> dict | None:
  """The transformer pretraining run's config.json: ``--transformer``'s when it is a run, else ours."""
  from gpt1_jax import weights
  if grid.transformer:
    kind, path = weights.parse(grid.transformer)
    path = os.path.abspath(path)
    if os.path.basename(path) == "checkpoints":
      path = os.path.dirname(path)
  else:
    path = os.path.join(os.path.abspath(grid.out), "pretrain", "transformer")
  f = os.path.join(path, "config.json")
  if not os.path.exists(f):
    return None
  with open(f) as fh:
    return json.load(fh)


# ----------------------------------------------------------------------------
# Running.

def run_once(config, workdir: str, log=print) -> dict:
  """``train_and_evaluate`` unless ``workdir/result.json`` says it finished; returns that record."""
  from gpt1_jax import checkpoint, loop
  done = os.path.join(workdir, "result.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  t0 = time.perf_counter()
  metrics = loop.train_and_evaluate(config, workdir)
  record = {"seconds": time.perf_counter() - t0, "step": int(metrics["step"]),
            "metrics": {k: v for k, v in metrics.items() if k.startswith("eval/")}}
  if _is_main():
    checkpoint.write_json(done, record)
  _barrier(f"ablations: finished {workdir}")
  return record


def _quick_corpus(grid: Grid, log) -> str:
  """--quick without --pretrain_data: the first reviews of the shipped IMDb corpus, tokenised."""
  import lzma
  from gpt1_jax.data import prepare
  root = os.path.join(os.path.abspath(grid.out), "pretrain")
  data = os.path.join(root, "data")
  if not os.path.exists(os.path.join(data, "manifest.json")) and _is_main():
    os.makedirs(root, exist_ok=True)
    text = os.path.join(root, "corpus.txt")
    with lzma.open(project.path("data", "imdb", "unlabelled.txt.xz"), "rt") as f, open(text, "w") as g:
      for _ in range(QUICK_CORPUS_REVIEWS):
        g.write(f.readline())
    log(f"tokenising {QUICK_CORPUS_REVIEWS} shipped IMDb reviews -> {data}")
    prepare.prepare(data, inputs=[text], doc_split="line", num_shards=1, valid_fraction=0.05, workers=1,
                    progress=False)
  _barrier("ablations: quick corpus")
  return data


def pretrain(grid: Grid, log=print) -> dict:
  """The weight sources of the grid: given ones as frozen by :func:`check_inputs`, others
  pretrained (resumably) and frozen; returns ``{"transformer": dir, "lstm": dir}``."""
  if grid.quick and not grid.pretrain_data and not (grid.transformer and grid.lstm):
    _quick_corpus(grid, log)
  shape = None
  for which in ("transformer", "lstm") if _needs_lstm(grid) else ("transformer",):
    if getattr(grid, which):
      continue
    workdir = os.path.join(os.path.abspath(grid.out), "pretrain", which)
    c = pretrain_config(grid, which, shape)
    log(f"pretraining the {which} ({c.train.num_steps} steps of {c.train.batch_size} x {c.model.n_ctx} tokens"
        f"{', %d LSTM units' % c.model.lstm_units if which == 'lstm' else ''}) in {workdir}")
    r = run_once(c, workdir, log)
    log(f"  {which}: held-out perplexity {r['metrics'].get('eval/perplexity', float('nan')):.1f} "
        f"({r['seconds'] / 60:.1f} min)")
    setattr(grid, which, workdir)
    _read_weights(grid, which, workdir)[1]()
    shape = c.model.to_dict()
  return {w: os.path.join(grid.out, "weights", w) for w in ("transformer", "lstm")
          if w == "transformer" or _needs_lstm(grid)}


def _needs_lstm(grid: Grid) -> bool:
  return any(a.weights == "lstm" for a in grid.arms)


def run_dir(grid: Grid, task: str, arm: str, seed: int) -> str:
  return os.path.join(os.path.abspath(grid.out), "runs", task, arm, f"seed{seed}")


def final_eval(workdir: str) -> dict:
  """The last evaluation a run logged in its ``metrics.jsonl`` (what every cell of the table shows)."""
  last = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if any(k.startswith("eval/") for k in row):
        last = row
  if not last:
    raise RuntimeError(f"{workdir}/metrics.jsonl has no evaluation")
  return last


def table_metric(task: str) -> str:
  return TABLE_METRIC.get(task, "accuracy")


def run_grid(grid: Grid, log=print) -> dict:
  """Checks the inputs, pretrains what is missing, runs every (task, arm, seed) not yet finished,
  and writes the table; returns the ``ablations.json`` record."""
  import shutil
  from gpt1_jax import checkpoint
  t0 = time.perf_counter()
  grid.out = os.path.abspath(grid.out)
  check_inputs(grid)
  os.makedirs(grid.out, exist_ok=True)
  sources = {"transformer": grid.transformer, "lstm": grid.lstm}
  weights_dirs = pretrain(grid, log)
  models = {w: checkpoint.load_params(d, with_meta=True)[2] for w, d in weights_dirs.items()}
  n = len(grid.tasks) * len(grid.arms) * len(grid.seeds)
  done = 0
  for task in grid.tasks:
    for arm in grid.arms:
      for seed in grid.seeds:
        workdir = run_dir(grid, task, arm.name, seed)
        done += 1
        if os.path.exists(os.path.join(workdir, "result.json")):
          continue
        init = "none" if arm.weights == "none" else weights_dirs[arm.weights]
        model = models["lstm" if arm.weights == "lstm" else "transformer"]["model"]
        r = run_once(finetune_config(grid, task, arm, seed, init, model), workdir, log)
        value = final_eval(workdir)[f"eval/{table_metric(task)}"]
        log(f"[{done}/{n}] {task} {arm.name} seed {seed}: {table_metric(task)} {value:.4f} "
            f"({r['seconds']:.0f} s; {(time.perf_counter() - t0) / 60:.1f} min so far)")
        if not grid.keep_weights and _is_main():
          for sub in ("checkpoints", "best"):
            shutil.rmtree(os.path.join(workdir, sub), ignore_errors=True)
  record = collect(grid, {w: models[w].get("source") or sources[w] for w in models},
                   {w: models[w].get("step") for w in models})
  record["seconds_this_invocation"] = time.perf_counter() - t0
  if _is_main():
    write(record, grid.out)
  return record


# ----------------------------------------------------------------------------
# The table.

def collect(grid: Grid, sources: dict, steps: dict) -> dict:
  cells = {}
  for arm in grid.arms:
    row = {}
    for task in grid.tasks:
      values = [100 * final_eval(run_dir(grid, task, arm.name, s))[f"eval/{table_metric(task)}"] for s in grid.seeds]
      row[task] = {"values": values, "mean": float(np.mean(values)), "std": _std(values)}
    per_seed = [float(np.mean([row[t]["values"][i] for t in grid.tasks])) for i in range(len(grid.seeds))]
    row["average"] = {"values": per_seed, "mean": float(np.mean(per_seed)), "std": _std(per_seed)}
    cells[arm.name] = row
  seconds = {}
  for task in grid.tasks:
    for arm in grid.arms:
      for s in grid.seeds:
        with open(os.path.join(run_dir(grid, task, arm.name, s), "result.json")) as f:
          seconds[f"{task}/{arm.name}/seed{s}"] = json.load(f)["seconds"]
  return {"tasks": list(grid.tasks), "metrics": {t: table_metric(t) for t in grid.tasks},
          "arms": [dataclasses.asdict(a) for a in grid.arms], "seeds": list(grid.seeds), "recipe": grid.recipe,
          "quick": grid.quick, "weights": {w: {"source": sources[w], "step": steps[w]} for w in sources},
          "lstm_units": _lstm_units(grid), "task_dirs": {t: os.path.abspath(d) for t, d in grid.task_dirs.items()},
          "set": list(grid.finetune_set), "pretrain_set": list(grid.pretrain_set), "cells": cells,
          "run_seconds": seconds, "run_seconds_total": float(sum(seconds.values()))}


def _std(values) -> float:
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def table(record: dict) -> str:
  """Table 5's layout: one row per arm, the average then one column per task (metric in the header),
  each cell mean ± standard deviation over seeds, x100."""
  tasks = record["tasks"]
  head = ["Method", "Avg. Score"] + [f"{_TASK_LABELS.get(t, t)} ({METRIC_NAMES[record['metrics'][t]]})" for t in tasks]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  labels = {a["name"]: a["label"] for a in record["arms"]}
  for arm, row in record["cells"].items():
    cells = [_cell(row["average"])] + [_cell(row[t]) for t in tasks]
    lines.append(f"| {labels[arm]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


_TASK_LABELS = {"cola": "CoLA", "sst2": "SST2", "mrpc": "MRPC", "stsb": "STSB", "rte": "RTE", "qqp": "QQP",
                "mnli": "MNLI", "qnli": "QNLI", "story_cloze": "Story Cloze"}


def _cell(c: dict) -> str:
  return f"{c['mean']:.1f} ± {c['std']:.1f}"


def write(record: dict, out: str):
  from gpt1_jax import checkpoint
  checkpoint.write_json(os.path.join(out, "ablations.json"), record)
  n = len(record["seeds"])
  with open(os.path.join(out, "ablations.md"), "w") as f:
    f.write(table(record) + f"\n\nmean ± sample standard deviation over {n} seed(s) "
            f"({', '.join(map(str, record['seeds']))}), x100; the average is over tasks, per seed.\n")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  tasks, arms = record["tasks"] + ["average"], list(record["cells"])
  labels = {a["name"]: a["label"] for a in record["arms"]}
  fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(tasks)), 4))
  width = 0.8 / len(arms)
  x = np.arange(len(tasks))
  for i, arm in enumerate(arms):
    cells = [record["cells"][arm][t] for t in tasks]
    ax.bar(x + (i - (len(arms) - 1) / 2) * width, [c["mean"] for c in cells], width,
           yerr=[c["std"] for c in cells], capsize=2, label=labels[arm])
    for j, c in enumerate(cells):  # every seed, so a spread of three is visible as three points
      ax.plot(np.full(len(c["values"]), x[j] + (i - (len(arms) - 1) / 2) * width), c["values"], "k.", ms=3)
  ax.set_xticks(x, [f"{_TASK_LABELS.get(t, t)}\n({METRIC_NAMES[record['metrics'][t]]})" if t != "average"
                    else "average" for t in tasks])
  ax.axhline(0, color="gray", lw=0.5)
  ax.set(ylabel="dev score x100", title=f"Table 5 in miniature ({n} seeds; bars: mean, whiskers: std)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "ablations.png"), dpi=120)
  plt.close(fig)


# ----------------------------------------------------------------------------
# Command line.

def grid_from_flags(f) -> Grid:
  tasks = tuple(f.tasks)
  dirs = {}
  for item in f.task_dirs:
    task, eq, d = item.partition("=")
    if not eq or not task or not d:
      raise ValueError(f"--task_dirs: {item!r}: expected TASK=DIR")
    dirs[task] = d
  for t in tasks:
    if t not in dirs and os.path.isdir(_default_task_dir(t)):
      dirs[t] = _default_task_dir(t)
  try:
    seeds = tuple(int(s) for s in f.seeds)
  except ValueError:
    raise ValueError(f"--seeds={','.join(f.seeds)}: expected integers") from None
  if f.quick and not f["seeds"].present:
    seeds = (0,)
  return Grid(out=f.out, tasks=tasks, task_dirs=dirs, seeds=seeds, recipe=f.recipe, transformer=f.transformer,
              lstm=f.lstm, pretrain_data=f.pretrain_data, lstm_units=f.lstm_units, finetune_set=tuple(f.set),
              pretrain_set=tuple(f.pretrain_set), quick=f.quick, keep_weights=f.keep_weights)


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  from absl import flags
  from gpt1_jax.report import quiet_library_logs
  quiet_library_logs()
  if flags.FLAGS.distributed:
    import jax
    jax.distributed.initialize()  # auto-detects Cloud TPU / SLURM, as gpt1_jax.main --distributed
  grid = grid_from_flags(flags.FLAGS)
  record = run_grid(grid, log=lambda m: print(m, flush=True))
  print(table(record))
  print(f"wrote {grid.out}/ablations.{{json,md,png}}")


def _define_flags():
  from absl import flags
  flags.DEFINE_string("out", None, "Output directory: runs, frozen weights, the table (resumes).", required=True)
  flags.DEFINE_list("tasks", list(DEFAULT_TASKS), "Tasks (columns of the table).")
  flags.DEFINE_list("task_dirs", [], "TASK=DIR for tasks the project does not ship (MRPC, Story Cloze) or "
                    "other copies; shipped tasks default to data/TASK.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Fine-tuning seeds (--quick: 0).")
  flags.DEFINE_string("transformer", "", "Pretrained transformer (a run, weights dir, openai:DIR or hf:PATH); "
                      "empty: pretrain one on --pretrain_data.")
  flags.DEFINE_string("lstm", "", "Pretrained LSTM run or weights; empty: pretrain one like the transformer.")
  flags.DEFINE_string("pretrain_data", "", "Token store to pretrain on when --transformer is not given.")
  flags.DEFINE_integer("lstm_units", 0, "LSTM width when pretraining it (0: 256 for tiny, 2048 for paper).")
  flags.DEFINE_enum("recipe", "tiny", RECIPES, "tiny: configs/*:tiny sized for 2 CPU cores; paper: GPT-1's.")
  flags.DEFINE_list("set", [], "KEY=VALUE or TASK:KEY=VALUE overrides of the fine-tuning configs.")
  flags.DEFINE_list("pretrain_set", [], "KEY=VALUE overrides of the pretraining configs.")
  flags.DEFINE_bool("quick", False, "A smoke test: micro models pretrained on the fly, 3 steps per run, 1 seed.")
  flags.DEFINE_bool("distributed", False, "Multi-host: jax.distributed.initialize() first; every host runs the "
                    "same command, --out on a filesystem all hosts share.")
  flags.DEFINE_bool("keep_weights", False, "Keep each run's checkpoints/ and best/ (removed once it finished).")


if __name__ == "__main__":
  from absl import app
  from gpt1_jax import errors
  _define_flags()
  app.run(errors.cli(main))
