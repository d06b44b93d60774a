"""``train_and_evaluate(config, workdir)``: pretraining and fine-tuning.

The order of a run: validate the config; build the mesh; read and check the
data; derive the state's shardings from ``jax.eval_shape`` (nothing is
allocated); print the memory plan; restore the latest complete checkpoint or
create the state already sharded; compile the step ahead of time (a model
that cannot fit fails here, in seconds); then train, logging asynchronously
fetched metrics every ``log.every_steps`` and checkpointing in the background.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gpt1_jax import checkpoint as ckpt_lib
from gpt1_jax import perf, resume, sharding
from gpt1_jax import workdir as workdir_lib
from gpt1_jax.model import ModelConfig, stack_layers, unstack_layers
from gpt1_jax.train import (LMObjective, TaskObjective, abstract_with_shardings, eval_step, init_state_fn,
                            make_optimizer, train_step)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again" — the job saved and can be restarted as is


class NonFiniteError(RuntimeError):
  pass


class Preempted(SystemExit):
  def __init__(self, step):
    super().__init__(EXIT_PREEMPTED)
    self.step = step


# ----------------------------------------------------------------------------
# Config checks: everything that can be known before compiling.

def model_config(config) -> ModelConfig:
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = set(config.model.keys()) - fields
  if unknown:
    raise ValueError(f"config.model has unknown keys {sorted(unknown)}; ModelConfig fields are {sorted(fields)}")
  return ModelConfig(**dict(config.model))


def validate(config, model_cfg: ModelConfig, mesh, rules, num_steps: int, seq_len: int):
  tc = config.train
  gb = int(tc.batch_size)
  accum = int(tc.get("grad_accum_steps", 1))
  n_batch = sharding.batch_axis_size(mesh, rules)
  if gb <= 0:
    raise ValueError(f"train.batch_size must be positive, got {gb}")
  if gb % accum:
    raise ValueError(f"train.batch_size={gb} is not divisible by train.grad_accum_steps={accum}")
  if (gb // accum) % n_batch:
    raise ValueError(f"the micro-batch {gb // accum} (train.batch_size={gb} / grad_accum_steps={accum}) does not "
                     f"divide over the batch mesh axes of size {n_batch} (mesh {dict(mesh.shape)})")
  eb = int(config.eval.get("batch_size", 0) or gb)
  if eb % n_batch:
    raise ValueError(f"eval.batch_size={eb} does not divide over the batch mesh axes of size {n_batch}")
  if seq_len > model_cfg.n_ctx:
    raise ValueError(f"sequence length {seq_len} exceeds model.n_ctx={model_cfg.n_ctx} (the position table)")
  if num_steps <= 0:
    raise ValueError(f"train.num_steps resolves to {num_steps}; it must be positive")
  chunk = int(tc.get("lm_loss_chunk", 0) or 0)
  if chunk < 0 or (chunk and seq_len % chunk):
    raise ValueError(f"train.lm_loss_chunk={chunk} must be 0 (off) or a positive divisor of the sequence "
                     f"length {seq_len}")
  for key in ("every_steps",):
    if int(config.checkpoint.get(key, 1)) <= 0 or int(config.log.get(key, 1)) <= 0:
      raise ValueError(f"checkpoint.{key} and log.{key} must be positive")
  if config.train.get("on_nonfinite", "stop") not in ("stop", "skip"):
    raise ValueError(f"train.on_nonfinite={config.train.on_nonfinite!r}: expected 'stop' or 'skip'")


# ----------------------------------------------------------------------------
# Jobs: what differs between pretraining and fine-tuning.

@dataclasses.dataclass
class Job:
  objective: Any
  num_steps: int
  seq_len: int
  train_batches: Callable  # (Rows, start_step) -> iterator of this host's rows (dicts of NumPy arrays)
  eval_batches: Optional[Callable]  # (Rows) -> iterator over one pass
  data_state: dict
  dummy: dict  # a tiny batch for init
  batch_avals: dict  # name -> (shape without batch, dtype)
  tokens_per_example: int
  task: Any = None
  eval_examples: Any = None
  eval_split: str = ""
  eval_labels: Any = None


def lm_job(config, model_cfg: ModelConfig) -> Job:
  from gpt1_jax.data import lm
  from gpt1_jax.tokenizer import GPT1Tokenizer
  fingerprint = GPT1Tokenizer().fingerprint if config.data.get("check_tokenizer", True) else None
  n_ctx = int(config.data.get("seq_len", 0) or model_cfg.n_ctx)
  if not config.data.dir:
    raise ValueError("data.dir is empty: point it at the output of `python -m gpt1_jax.data.prepare`")
  manifest = lm.load_manifest(config.data.dir, fingerprint)
  train = lm.LMData.load(config.data.dir, "train", n_ctx, manifest=manifest)
  valid = None
  if config.eval.get("every_steps", 0) and manifest["splits"].get("valid", {}).get("tokens", 0):
    valid = lm.LMData.load(config.data.dir, "valid", n_ctx, manifest=manifest)
  elif config.eval.get("every_steps", 0):
    logging.warning("eval.every_steps=%d but %s has no held-out ('valid') split: there will be no evaluation. "
                    "Prepare the data with --valid_fraction > 0, or set eval.every_steps=0 to silence this",
                    int(config.eval.every_steps), config.data.dir)
  seed = int(config.seed)
  objective = LMObjective(model_cfg, loss_chunk=int(config.train.get("lm_loss_chunk", 0) or 0))
  return Job(
      objective=objective, num_steps=int(config.train.num_steps), seq_len=n_ctx,
      train_batches=lambda rows, start: train.train_batches(rows, seed=seed, start_step=start),
      eval_batches=valid.eval_batches if valid is not None else None,
      data_state=train.data_state(int(config.train.batch_size), seed),
      dummy=objective.dummy_batch(1, min(n_ctx, 8)),
      batch_avals={"inputs": ((n_ctx,), np.int32), "targets": ((n_ctx,), np.int32),
                   "loss_mask": ((n_ctx,), np.float32)},
      tokens_per_example=n_ctx)


def task_job(config, model_cfg: ModelConfig) -> Job:
  from gpt1_jax.data import pipeline, tasks, transforms
  from gpt1_jax.tokenizer import GPT1Tokenizer
  tc = config.task
  if int(config.train.num_steps) < 0:  # before reading any data; 0 is the documented "use epochs"
    raise ValueError(f"train.num_steps={int(config.train.num_steps)} is negative: give a positive step count, "
                     f"or 0 to train for train.num_epochs={float(config.train.num_epochs)}")
  task = tasks.get_task(tc.name)
  tok = transforms.memoized(GPT1Tokenizer())
  skip = bool(tc.get("skip_malformed", False))
  train_ex = tasks.load_split(task, tc.get("train_split", "train"), tc.source, skip_malformed=skip).examples
  eval_split = tc.get("eval_split", "dev")
  eval_ex = tasks.load_split(task, eval_split, tc.source, skip_malformed=skip).examples
  if tc.get("max_train_examples", 0):
    train_ex = train_ex[:int(tc.max_train_examples)]
  cap = min(int(tc.get("max_len", 0) or model_cfg.n_ctx), model_cfg.n_ctx)
  seq_len = transforms.fit_length(task, tok, train_ex, eval_ex, cap=cap)
  for split, examples in ((tc.get("train_split", "train"), train_ex), (eval_split, eval_ex)):
    t = transforms.truncation(task, examples, tok, seq_len)
    if t["truncated"]:
      logging.warning("%s %s: %d of %d examples are longer than %d tokens and were truncated (by %.1f tokens on "
                      "average, at most %d); raise task.max_len (up to model.n_ctx=%d) to keep more", task.name,
                      split, t["truncated"], t["examples"], seq_len, t["mean_tokens_cut"], t["max_tokens_cut"],
                      model_cfg.n_ctx)
  train_arr = transforms.encode_examples(task, train_ex, tok, seq_len)
  eval_arr = transforms.encode_examples(task, eval_ex, tok, seq_len)
  n = len(train_ex)
  gb = int(config.train.batch_size)
  num_steps = int(config.train.num_steps)
  if num_steps <= 0:
    num_steps = math.ceil(float(config.train.num_epochs) * n / gb)
  seed = int(config.seed)
  num_seqs = train_arr["input_ids"].shape[1]
  objective = TaskObjective(model_cfg, task.type, task.num_labels, lm_coef=float(tc.lm_coef),
                            clf_pdrop=float(tc.clf_pdrop))
  fetch_keys = ("input_ids", "attention_mask", "cls_index", "choice_mask", "label")
  train_fetch = pipeline.gather_fetch({k: train_arr[k] for k in fetch_keys})
  eval_fetch = pipeline.gather_fetch({k: eval_arr[k] for k in fetch_keys + ("example_index",)})
  label_dtype = np.float32 if task.type == "regression" else np.int32
  return Job(
      objective=objective, num_steps=num_steps, seq_len=seq_len,
      train_batches=lambda rows, start: pipeline.train_dataset(
          train_fetch, n, rows, seed=seed, start_step=start).as_numpy_iterator(),
      eval_batches=lambda rows: pipeline.eval_dataset(eval_fetch, len(eval_ex), rows).as_numpy_iterator(),
      data_state={**pipeline.state_dict(n, gb, seed), "task": task.name},
      dummy=objective.dummy_batch(1, num_seqs, min(seq_len, 8)),
      batch_avals={"input_ids": ((num_seqs, seq_len), np.int32), "attention_mask": ((num_seqs, seq_len), np.int32),
                   "cls_index": ((num_seqs,), np.int32), "choice_mask": ((num_seqs,), np.float32),
                   "label": ((), label_dtype)},
      tokens_per_example=num_seqs * seq_len, task=task, eval_examples=eval_ex, eval_split=eval_split,
      eval_labels=eval_arr["label"])


# ----------------------------------------------------------------------------
# Sharded state and compiled step (also used directly by tests and the benchmark).

def state_layout(objective, tx, dummy, mesh, rules):
  """``(init_fn, abstract state, shardings)`` from ``jax.eval_shape``: nothing is allocated."""
  init_fn = init_state_fn(objective, tx, dummy)
  with sharding.activate(mesh, rules):
    boxed = jax.eval_shape(init_fn, jax.random.key(0))
  shardings = sharding.logical_to_sharding(boxed, mesh, rules)
  abstract = nn.meta.unbox(boxed)
  sharding.check_divisible(abstract, shardings, "model parameters / optimiser state")
  return init_fn, abstract, shardings


def create_state(init_fn, shardings, mesh, rules, seed: int):
  """The state created directly in its shardings: no device ever holds a full copy."""
  with sharding.activate(mesh, rules):
    return jax.jit(lambda r: nn.meta.unbox(init_fn(r)), out_shardings=shardings)(jax.random.key(seed))


def compile_train_step(step_fn, abstract_state, abstract_batch, mesh, rules):
  """Ahead-of-time compiled step: state donated, metrics replicated."""
  state_sh = jax.tree.map(lambda a: a.sharding, abstract_state)
  batch_sh = {k: v.sharding for k, v in abstract_batch.items()}
  with sharding.activate(mesh, rules):
    return jax.jit(step_fn, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, sharding.replicated(mesh)),
                   donate_argnums=0).lower(abstract_state, abstract_batch).compile()


def split_init_from_flag(argv: list[str]) -> tuple[list[str], Optional[str]]:
  """Takes ``--config.init.from=X`` out of ``argv``: ``from`` is a Python keyword, which
  ml_collections' override parser rejects ("Could not parse 'init.from'"); ``main``
  applies the value to the parsed config instead."""
  flag, out, value, i = "--config.init.from", [], None, 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(flag + "="):
      value = arg[len(flag) + 1:]
    elif arg == flag and i + 1 < len(argv):
      value = argv[i + 1]
      i += 1
    else:
      out.append(arg)
    i += 1
  return out, value


# ----------------------------------------------------------------------------
# Initialisation from other weights (fine-tuning's `init.from`).

def load_init_params(spec: str, model_cfg: ModelConfig):
  """``init.from``: a gpt1_jax checkpoint dir, ``openai:DIR``, ``hf:PATH`` -> (ModelConfig, transformer params)."""
  from gpt1_jax import convert
  if spec.startswith("openai:"):
    cfg, params = convert.from_openai_release(spec[len("openai:"):])
  elif spec.startswith("hf:"):
    cfg, params = convert.from_hf_pretrained(spec[len("hf:"):], n_head=model_cfg.n_head)
  else:
    cfg, params = ckpt_lib.load_params(spec)
  return cfg, params["transformer"] if "transformer" in params else params


def adapt_params(src_cfg: ModelConfig, src: dict, dst_cfg: ModelConfig, dst_abstract: dict, where: str) -> dict:
  """Converts a transformer param tree to the destination's layout (scan, vocab padding) or explains why not."""
  diff = ckpt_lib.config_diff(ckpt_lib.model_config_to_dict(src_cfg), ckpt_lib.model_config_to_dict(dst_cfg),
                              keys=("n_ctx", "n_embd", "n_head", "n_layer", "architecture", "lstm_units"))
  if src_cfg.vocab_size != dst_cfg.vocab_size:
    diff.append(f"  model.vocab_size: checkpoint {src_cfg.vocab_size} != config {dst_cfg.vocab_size}")
  if diff:
    raise ValueError(f"{where}: weights do not fit the configured model:\n" + "\n".join(diff))
  src = jax.tree.map(np.asarray, src)
  if src_cfg.scan_layers and not dst_cfg.scan_layers:
    src = unstack_layers(src)
  elif dst_cfg.scan_layers and not src_cfg.scan_layers:
    src = stack_layers(src, dst_cfg.n_layer)
  tokens = src["embed"]["tokens"][:dst_cfg.vocab_size]
  pad = dst_cfg.padded_vocab_size - tokens.shape[0]
  src["embed"]["tokens"] = np.concatenate([tokens, np.zeros((pad, tokens.shape[1]), tokens.dtype)]) if pad else tokens
  want = jax.tree_util.tree_structure(dst_abstract)
  if jax.tree_util.tree_structure(src) != want:
    raise ValueError(f"{where}: parameter tree differs from the model's")
  return src


# ----------------------------------------------------------------------------

class _SignalFlag:
  """SIGTERM/SIGINT -> finish the step, save, exit(EXIT_PREEMPTED). A second SIGINT aborts at once."""

  def __init__(self):
    self.received = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. inside some test runners)
        pass
    return self

  def _handle(self, signum, frame):
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name
    logging.warning("received %s: finishing the current step, then saving a checkpoint", self.received)

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _host_scalars(metrics_list):
  """Fetches the per-step metrics accumulated since the last log (one transfer)."""
  fetched = jax.device_get(metrics_list)
  return [(s, {k: np.asarray(v) for k, v in m.items()}) for s, m in fetched]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the job in ``config`` in ``workdir``; returns the final metrics.

  The workdir is checked first and locked for the whole run: a second run on it
  is refused, naming this one, before it reads any data.
  """
  workdir_lib.check(workdir)
  with workdir_lib.Lock(workdir):
    return _run(config, workdir)


def _run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  t_start = time.perf_counter()
  model_cfg = model_config(config)
  num_devices = int(config.mesh.get("num_devices", 0) or 0)
  if num_devices and jax.process_count() > 1:
    raise ValueError("mesh.num_devices (a subset of devices) is for single-process runs only")
  if num_devices > jax.device_count():
    raise ValueError(f"mesh.num_devices={num_devices} but only {jax.device_count()} devices are visible")
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:num_devices] if num_devices else None)
  rules = sharding.rules_from_config(config.mesh.get("rules"))
  job = lm_job(config, model_cfg) if config.get("task", None) is None or config.task.name == "lm" \
      else task_job(config, model_cfg)
  validate(config, model_cfg, mesh, rules, job.num_steps, job.seq_len)
  tc = config.train
  gb = int(tc.batch_size)
  eval_gb = int(config.eval.get("batch_size", 0) or gb)
  tx, schedule = make_optimizer(tc, job.num_steps)
  is_main = jax.process_index() == 0
  if is_main:
    os.makedirs(workdir, exist_ok=True)

  init_fn, abstract, state_shardings = state_layout(job.objective, tx, job.dummy, mesh, rules)
  abstract_state = abstract_with_shardings(abstract, state_shardings)
  batch_shardings = {k: sharding.batch_sharding(mesh, rules, 1 + len(shape)) for k, (shape, _) in
                     job.batch_avals.items()}
  abstract_batch = {k: jax.ShapeDtypeStruct((gb,) + shape, dtype, sharding=batch_shardings[k])
                    for k, (shape, dtype) in job.batch_avals.items()}
  _log_memory_plan(abstract, state_shardings, model_cfg, gb, job.seq_len, mesh)

  # Restore or create.
  ck = ckpt_lib.Checkpoints(os.path.join(workdir, "checkpoints"), keep=int(config.checkpoint.keep),
                            keep_period=int(config.checkpoint.get("keep_period", 0)) or None,
                            async_save=bool(config.checkpoint.get("async_save", True)))
  model_dict = ckpt_lib.model_config_to_dict(model_cfg)

  def check_resume(meta, step):
    # Everything that can refuse a resume, before anything in the workdir changes.
    from gpt1_jax.data import pipeline
    resume.check(meta.get("config", {}), config, saved_num_steps=meta.get("num_steps"), num_steps=job.num_steps,
                 step=step, where=ck.step_dir(step))
    pipeline.check_state(meta.get("data", {}), job.data_state, f"resuming {workdir} at step {step}")

  state, meta, start_step = ck.restore_latest(abstract_state, model_dict, check=check_resume,
                                              allow_fallback=bool(config.checkpoint.get("allow_fallback", False)))
  if state is not None:
    logging.info("resumed from %s at step %d", ck.step_dir(start_step), start_step)
  else:
    start_step = 0
    init_from = str(config.get("init", {}).get("from", "none") or "none")
    src = None
    if init_from != "none":
      src = load_init_params(init_from, model_cfg)  # before compiling: fail fast on bad weights
    state = create_state(init_fn, state_shardings, mesh, rules, int(config.seed))
    if src is not None:
      params = adapt_params(src[0], src[1], model_cfg, abstract["params"]["transformer"], f"init.from={init_from}")
      state["params"]["transformer"] = jax.tree.map(
          lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx, x=x: x[idx]), params,
          state_shardings["params"]["transformer"])
      logging.info("initialised the transformer from %s", init_from)
  if is_main:
    # Only once the run is accepted (checkpoint, data position and init weights all fit): a
    # refused config must not overwrite the record of the run it was refused for. Atomic.
    ckpt_lib.write_json(os.path.join(workdir, "config.json"), config.to_dict())

  # Compile ahead of the loop.
  step_fn = functools.partial(
      train_step, objective=job.objective, tx=tx, schedule=schedule, seed=int(config.seed),
      grad_accum_steps=int(tc.get("grad_accum_steps", 1)), skip_nonfinite=tc.get("on_nonfinite", "stop") == "skip",
      nan_at_step=int(config.get("debug", {}).get("nan_at_step", -1)))
  repl = sharding.replicated(mesh)
  compiled = compile_train_step(step_fn, abstract_state, abstract_batch, mesh, rules)
  _log_compiled_memory(compiled)
  eval_compiled = None
  if job.eval_batches is not None:
    eval_abstract_batch = {k: jax.ShapeDtypeStruct((eval_gb,) + v.shape[1:], v.dtype, sharding=v.sharding)
                           for k, v in abstract_batch.items()}
    eval_abstract_batch["example_mask"] = jax.ShapeDtypeStruct((eval_gb,), np.float32,
                                                               sharding=sharding.batch_sharding(mesh, rules, 1))
    eval_shardings = {k: v.sharding for k, v in eval_abstract_batch.items()}
    if isinstance(job.objective, TaskObjective):
      eval_abstract_batch["example_index"] = eval_abstract_batch["example_mask"].update(dtype=np.int32)
      eval_shardings["example_index"] = eval_abstract_batch["example_index"].sharding
    with sharding.activate(mesh, rules):
      eval_compiled = jax.jit(
          lambda p, b: eval_step(p, {k: v for k, v in b.items() if k != "example_index"}, objective=job.objective),
          in_shardings=(state_shardings["params"], eval_shardings), out_shardings=repl).lower(
              abstract_state["params"], eval_abstract_batch).compile()
  logging.info("compiled in %.1fs since start", time.perf_counter() - t_start)

  # Data, from exactly the step we resume at.
  rows = sharding.host_rows(mesh, rules, gb)
  train_iter = iter(job.train_batches(rows, start_step))
  writer = _writer(workdir, start_step, config)
  progress = None
  from gpt1_jax.report import Progress
  progress = Progress(job.num_steps, start_step)
  lm_head = not isinstance(job.objective, TaskObjective) or job.objective.lm_coef != 0
  flops = perf.flops_per_token(model_cfg, job.seq_len, lm_head=lm_head) * job.tokens_per_example * gb
  peak = _peak_flops(config, model_cfg) * jax.device_count()
  log_every = int(config.log.every_steps)
  ckpt_every = int(config.checkpoint.every_steps)
  ckpt_minutes = float(config.checkpoint.get("every_minutes", 0) or 0)
  eval_every = int(config.eval.get("every_steps", 0) or 0)
  best = {"value": -math.inf, "step": None}
  last_ckpt_time = time.monotonic()
  pending, t_log, steps_since_log = [], time.perf_counter(), 0
  last_saved = start_step if meta is not None else None
  final = {}

  if meta is not None and meta.get("pending_metrics"):
    # Steps after the last log line of the interrupted run: restored so the
    # next logged means cover the same steps as an uninterrupted run's.
    pending = [(int(s), {k: np.asarray(v) for k, v in m.items()}) for s, m in meta["pending_metrics"]]
    steps_since_log = len(pending)

  def meta_now(step):
    host = _host_scalars(pending)
    return {"model": model_dict, "data": job.data_state, "config": config.to_dict(), "step": int(step),
            "num_steps": int(job.num_steps),
            "pending_metrics": [(s, {k: np.asarray(v).item() for k, v in m.items()}) for s, m in host]}

  def save(step, force=False):
    nonlocal last_saved, last_ckpt_time
    if ck.save(step, state, meta_now(step), force=force):
      last_saved, last_ckpt_time = step, time.monotonic()

  step = start_step
  with _SignalFlag() as sig:
    try:
      while step < job.num_steps:
        batch = sharding.global_batch(next(train_iter), mesh, rules, gb)
        state, metrics = compiled(state, batch)
        step += 1
        pending.append((step, metrics))
        steps_since_log += 1
        if step % log_every == 0 or step == job.num_steps:
          scalars = _flush(pending, job, config, ck, last_saved, flops, peak, t_log, steps_since_log, gb)
          pending, t_log, steps_since_log = [], time.perf_counter(), 0
          writer.write(step, scalars)
          progress.update(step, scalars)
          final.update(scalars)
        if eval_compiled is not None and (eval_every and step % eval_every == 0 or step == job.num_steps):
          ev = _evaluate(eval_compiled, state["params"], job, mesh, rules, eval_gb, workdir, step)
          writer.write(step, ev)
          final.update(ev)
          if job.task is not None:
            best = _keep_best(workdir, job, ev, best, step, model_cfg, state["params"])
        stop = sig.received is not None or step == int(config.get("debug", {}).get("preempt_at_step", -1))
        time_due = bool(ckpt_minutes) and time.monotonic() - last_ckpt_time > 60 * ckpt_minutes
        if jax.process_count() > 1:
          # Hosts see signals and clocks at different steps; they act only on
          # a decision they all share (taken at log steps, already a sync
          # point), else one would save while the others train on.
          if step % log_every == 0 or step == job.num_steps:
            stop, time_due = _any_host(stop), _any_host(time_due)
          else:
            stop = time_due = False
        preempted = stop or ck.manager.reached_preemption(step)
        if preempted or step % ckpt_every == 0 or step == job.num_steps or time_due:
          # Never checkpoint a state whose metrics were not checked; the
          # steps stay pending so the logged means do not depend on when we save.
          _check_finite(_host_scalars(pending), config, ck, last_saved, gb)
          save(step, force=True)
        if preempted:
          ck.wait()
          logging.warning("preempted (%s): saved step %d in %s; exiting with status %d", sig.received or
                          "preemption notice", step, ck.step_dir(step), EXIT_PREEMPTED)
          raise Preempted(step)
    finally:
      try:
        ck.close()  # waits for async saves; raises if one failed
      finally:
        writer.close()
        progress.close()
        getattr(train_iter, "close", lambda: None)()  # stops the LM pipeline's prefetch thread
  final = {**_logged_metrics(workdir, step), **final, "step": step}
  if best["step"] is not None:
    final["best_step"] = best["step"]
  return final


def _any_host(flag: bool) -> bool:
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _logged_metrics(workdir: str, step: int) -> dict:
  """The latest value of every metric in ``metrics.jsonl`` up to ``step`` (what a finished run reports)."""
  out = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        row = json.loads(line)
        if row["step"] <= step:
          out.update(row)
  return out


def _writer(workdir, start_step, config):
  from gpt1_jax.report import MetricWriter
  return MetricWriter(workdir, start_step, tensorboard=bool(config.log.get("tensorboard", True)))


def _flush(pending, job, config, ck, last_saved, flops, peak, t_log, steps, gb):
  """Host-side view of the steps since the last log; stops on the first non-finite step."""
  host = _host_scalars(pending)
  _check_finite(host, config, ck, last_saved, gb)
  elapsed = max(time.perf_counter() - t_log, 1e-9)
  # float64 means of the float32 step values: the same result whether a value
  # came from the device or from a checkpoint's JSON (exact resume of the log).
  mean = lambda k: float(np.mean(np.asarray([m[k] for _, m in host if bool(m["finite"])] or [np.nan], np.float64)))
  out = {"train/loss": mean("loss"), "train/grad_norm": mean("grad_norm"), "train/lr": float(host[-1][1]["lr"]),
         "train/nonfinite_steps": int(sum(not bool(m["finite"]) for _, m in host))}
  for k in host[-1][1]:
    if k.endswith("_loss"):
      out[f"train/{k}"] = mean(k)
  tokens = job.tokens_per_example * gb * steps
  out["perf/tokens_per_sec"] = tokens / elapsed
  out["perf/steps_per_sec"] = steps / elapsed
  out["perf/mfu"] = flops * steps / elapsed / peak if peak else float("nan")
  return out


def _check_finite(host, config, ck, last_saved, gb):
  for s, m in host:
    if not bool(m["finite"]):
      if config.train.get("on_nonfinite", "stop") == "skip":
        logging.warning("step %d: non-finite loss/grad norm (loss=%s, grad_norm=%s): update skipped", s,
                        m["loss"], m["grad_norm"])
        continue
      raise NonFiniteError(
          f"non-finite loss or gradient norm at step {s} (loss={float(m['loss'])}, grad_norm="
          f"{float(m['grad_norm'])}); the batch was global batch #{s - 1} of the data stream "
          f"(examples {(s - 1) * gb}..{s * gb - 1} of seed {config.seed}'s order); last good checkpoint: "
          f"{ck.step_dir(last_saved) if last_saved is not None else 'none'}. Set train.on_nonfinite='skip' "
          f"to skip such updates instead")


def _evaluate(eval_compiled, params, job, mesh, rules, eval_gb, workdir, step):
  rows = sharding.host_rows(mesh, rules, eval_gb)
  sums = {}
  preds, idx, mask = [], [], []
  for local in job.eval_batches(rows):
    batch = sharding.global_batch(local, mesh, rules, eval_gb)
    out = jax.device_get(eval_compiled(params, batch))
    for k, v in out.items():
      if k.endswith("_sum") or k == "count":
        sums[k] = sums.get(k, 0.0) + float(v)
    if job.task is not None:
      preds.append(np.asarray(out["predictions"]))
      idx.append(np.asarray(jax.device_get(_gather_replicated(batch["example_index"]))))
      mask.append(np.asarray(jax.device_get(_gather_replicated(batch["example_mask"]))))
  count = max(sums.get("count", 0.0), 1.0)
  result = {"eval/loss": sums["loss_sum"] / count}
  if job.task is None:
    result["eval/perplexity"] = float(math.exp(min(result["eval/loss"], 50.0)))
    return result
  from gpt1_jax import metrics as task_metrics
  preds, idx, mask = np.concatenate(preds), np.concatenate(idx), np.concatenate(mask) > 0
  order = np.argsort(idx[mask], kind="stable")
  predictions = preds[mask][order]
  if len(predictions) != len(job.eval_labels):
    raise RuntimeError(f"evaluation produced {len(predictions)} predictions for {len(job.eval_labels)} examples")
  scores = task_metrics.compute_metrics(job.task, predictions, job.eval_labels)
  result.update({f"eval/{k}": float(v) for k, v in scores.items()})
  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, "predictions")
    os.makedirs(out_dir, exist_ok=True)
    # The index column is each example's own id (GLUE's index column; Story Cloze's InputStoryid),
    # so a prediction can be traced to its source line whatever order the split was read in.
    task_metrics.write_glue_predictions(job.task, predictions, out_dir, split=job.eval_split,
                                        ids=[e.id or str(i) for i, e in enumerate(job.eval_examples)])
  return result


def _gather_replicated(x):
  """A batch-sharded array -> the full array on every host (small eval vectors only)."""
  from jax.experimental import multihost_utils
  if jax.process_count() == 1:
    return x
  return multihost_utils.process_allgather(x, tiled=True)


def _keep_best(workdir, job, ev, best, step, model_cfg, params):
  from gpt1_jax import metrics as task_metrics
  key = f"eval/{task_metrics.main_metric(job.task)}"
  value = ev.get(key)
  if value is not None and value > best["value"]:
    best = {"value": value, "step": step}
    ckpt_lib.save_params(os.path.join(workdir, "best"), model_cfg, {"transformer": params["transformer"],
                                                                     "head": params["head"]},
                         extra_meta={"step": step, "metric": key, "value": value, "task": job.task.name})
    logging.info("new best %s = %.4f at step %d (saved to %s/best)", key, value, step, workdir)
  return best


def _peak_flops(config, model_cfg):
  value = float(config.log.get("peak_flops_per_device", 0) or 0)
  if value:
    return value
  sheet = perf.device_peak_flops(model_cfg.dtype)
  if sheet:
    return sheet
  if config.log.get("measure_peak", True):
    return perf.measure_matmul_peak(model_cfg.dtype)
  return 0.0


def _log_memory_plan(abstract, shardings, model_cfg, gb, seq_len, mesh):
  params_b = perf.tree_bytes_per_device(abstract["params"], shardings["params"])
  opt_b = perf.tree_bytes_per_device(abstract["opt_state"], shardings["opt_state"])
  n_batch = max(1, jax.device_count() // mesh.shape.get("tensor", 1))
  local_b = max(1, gb // n_batch)
  item = jnp.dtype(model_cfg.dtype).itemsize
  # Per layer the backward pass keeps ~ (qkv, attn probs, mlp hidden, residuals) per token.
  act = local_b * seq_len * (model_cfg.n_layer * (16 * model_cfg.n_embd * item + 2 * model_cfg.n_head * seq_len * 4)
                             + 2 * model_cfg.vocab_size * 4 / mesh.shape.get("tensor", 1))
  limit = perf.device_memory_limit()
  logging.info("memory plan per device: params %s, optimiser %s, gradients %s, activations ~%s%s",
               perf.fmt_bytes(params_b), perf.fmt_bytes(opt_b), perf.fmt_bytes(params_b), perf.fmt_bytes(act),
               f" (device limit {perf.fmt_bytes(limit)})" if limit else "")
  if limit and 2 * params_b + opt_b > limit:
    raise MemoryError(f"parameters, gradients and optimiser state need {perf.fmt_bytes(2 * params_b + opt_b)} per "
                      f"device, more than the {perf.fmt_bytes(limit)} available: shard over more devices "
                      f"(mesh.fsdp) or use a smaller model")


def _log_compiled_memory(compiled):
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend reports it
    return
  if m is None:
    return
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  logging.info("compiled step memory per device: arguments %s, outputs %s (aliased %s), temporaries %s; total %s",
               perf.fmt_bytes(m.argument_size_in_bytes), perf.fmt_bytes(m.output_size_in_bytes),
               perf.fmt_bytes(m.alias_size_in_bytes), perf.fmt_bytes(m.temp_size_in_bytes), perf.fmt_bytes(total))
  limit = perf.device_memory_limit()
  if limit and total > limit:
    raise MemoryError(f"the compiled train step needs {perf.fmt_bytes(total)} per device but only "
                      f"{perf.fmt_bytes(limit)} is available: lower train.batch_size, raise "
                      f"train.grad_accum_steps, set model.remat='full', or shard over more devices")
