"""``train_and_evaluate(config, workdir)``: pretraining and fine-tuning, in the order of a run.

Resolve the config into typed values (``config.py``); check and lock the workdir; build the
mesh; read and check the data (``jobs.py``); derive the state's shardings from
``jax.eval_shape`` and refuse a model that cannot fit (``state.py``); restore the latest complete
checkpoint or create the state already sharded, from other weights if ``init.weights`` says so
(``weights.py``); compile the step ahead of time; then train, logging asynchronously fetched
metrics every ``log.every_steps``, evaluating (``evaluate.py``) and checkpointing in the
background. SIGTERM/SIGINT save and exit with ``EXIT_PREEMPTED``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import time
from typing import Optional

import jax
import numpy as np

from gpt1_jax import checkpoint as ckpt_lib
from gpt1_jax import config as config_lib
from gpt1_jax import interrupts, jobs, perf, resume, sharding, weights
from gpt1_jax import state as state_lib
from gpt1_jax import workdir as workdir_lib
from gpt1_jax.data import pipeline
from gpt1_jax.report import MetricWriter, Progress
from gpt1_jax.train import make_optimizer, train_step

EXIT_PREEMPTED = interrupts.EXIT_PREEMPTED  # the job saved and can be restarted as is


class NonFiniteError(RuntimeError):
  pass


class Preempted(SystemExit):

  def __init__(self, step):
    super().__init__(EXIT_PREEMPTED)
    self.step = step


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) the job in ``config`` (a ConfigDict from ``configs/``) in ``workdir``;
  returns the final metrics.

  The config is resolved and checked first, then the workdir is checked and locked for the
  whole run: a second run on it is refused, naming this one, before it reads any data.
  """
  run = config_lib.resolve(config)
  workdir_lib.check(workdir)
  with workdir_lib.Lock(workdir):
    return _run(run, workdir)


def _run(run: config_lib.Run, workdir: str) -> dict:
  t_start = time.perf_counter()
  mesh, rules = make_mesh(run)
  job = jobs.make(run)
  validate(run, mesh, rules, job)
  tx, schedule = make_optimizer(run.train, job.num_steps)
  setup = state_lib.setup(job.objective, tx, job.batch_spec, run.train.batch_size, mesh, rules)
  limit = perf.device_memory_limit()
  state_lib.check_memory_plan(setup, limit)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
  rd = workdir_lib.RunDir(workdir)
  ck = ckpt_lib.Checkpoints(rd.checkpoints, keep=run.checkpoint.keep, keep_period=run.checkpoint.keep_period or None,
                            async_save=run.checkpoint.async_save)
  state, meta, start_step = restore_or_create(run, job, setup, ck, workdir)
  if jax.process_index() == 0:
    # Only once the run is accepted (checkpoint, data position and init weights all fit): a
    # refused config must not overwrite the record of the run it was refused for. Atomic.
    ckpt_lib.write_json(rd.config_file, run.to_dict())

  compiled = setup.compile(train_step_fn(run, job, tx, schedule))
  state_lib.check_compiled_memory(compiled, limit)
  if job.evaluator is not None:
    job.evaluator.compile(setup, eval_batch_size(run))
  logging.info("compiled in %.1fs since start", time.perf_counter() - t_start)
  return _train(run, job, setup, ck, compiled, (state, meta, start_step), workdir)


# ----------------------------------------------------------------------------
# Before anything is compiled.


def make_mesh(run: config_lib.Run, devices=None):
  """``(mesh, rules)`` over ``devices`` (default: every device of the job; ``gpt1_jax.aot`` passes a
  TPU slice's compile-only devices)."""
  n = run.mesh.num_devices
  if n and jax.process_count() > 1:
    raise ValueError("mesh.num_devices (a subset of devices) is for single-process runs only")
  devices = list(jax.devices() if devices is None else devices)
  if n > len(devices):
    raise ValueError(f"mesh.num_devices={n} but only {len(devices)} devices are visible")
  return sharding.make_mesh(run.mesh, devices[:n] if n else devices), sharding.rules_from_config(run.mesh.rules)


def train_step_fn(run: config_lib.Run, job: jobs.Job, tx, schedule):
  """The step this run compiles (``gpt1_jax.aot`` compiles the same one for a TPU slice)."""
  return functools.partial(train_step, objective=job.objective, tx=tx, schedule=schedule, seed=run.seed,
                           grad_accum_steps=run.train.grad_accum_steps, skip_nonfinite=run.train.on_nonfinite == "skip",
                           nan_at_step=run.debug.nan_at_step)


def eval_batch_size(run: config_lib.Run) -> int:
  return run.eval.batch_size or run.train.batch_size


def validate(run: config_lib.Run, mesh, rules, job: jobs.Job):
  """What the config alone cannot say: the batch over the mesh, the sequence over the model."""
  gb, accum = run.train.batch_size, run.train.grad_accum_steps
  n_batch = sharding.batch_axis_size(mesh, rules)
  if (gb // accum) % n_batch:
    raise ValueError(f"the micro-batch {gb // accum} (train.batch_size={gb} / grad_accum_steps={accum}) does not "
                     f"divide over the batch mesh axes of size {n_batch} (mesh {dict(mesh.shape)})")
  if eval_batch_size(run) % n_batch:
    raise ValueError(f"eval.batch_size={eval_batch_size(run)} does not divide over the batch mesh axes of size "
                     f"{n_batch}")
  if job.seq_len > run.model.n_ctx:
    raise ValueError(f"sequence length {job.seq_len} exceeds model.n_ctx={run.model.n_ctx} (the position table)")
  if job.num_steps <= 0:
    raise ValueError(f"train.num_steps resolves to {job.num_steps}; it must be positive")
  chunk = run.train.lm_loss_chunk
  if chunk and job.seq_len % chunk:
    raise ValueError(f"train.lm_loss_chunk={chunk} must be 0 (off) or a positive divisor of the sequence "
                     f"length {job.seq_len}")


def restore_or_create(run: config_lib.Run, job: jobs.Job, setup: state_lib.Setup, ck, workdir: str):
  """``(state, checkpoint meta or None, start step)``: the latest checkpoint this config may
  continue, else a fresh state (its transformer from ``init.weights`` when given)."""
  model_dict = ckpt_lib.model_config_to_dict(run.model)

  def check_resume(meta, step):
    # Everything that can refuse a resume, before anything in the workdir changes.
    resume.check(meta.get("config", {}), run, saved_num_steps=meta.get("num_steps"), num_steps=job.num_steps, step=step,
                 where=ck.step_dir(step))
    pipeline.check_state(meta.get("data", {}), job.data_state, f"resuming {workdir} at step {step}")

  state, meta, step = ck.restore_latest(setup.abstract_state, model_dict, check=check_resume,
                                        allow_fallback=run.checkpoint.allow_fallback)
  if state is not None:
    logging.info("resumed from %s at step %d", ck.step_dir(step), step)
    return state, meta, step
  src = None
  if run.init.weights != "none":
    src = weights.load(run.init.weights, n_head=run.model.n_head)  # before creating the state: fail fast
  state = setup.create(run.seed)
  if src is not None:
    params = weights.transformer_in_layout(src[0], src[1], run.model, where=f"init.weights={run.init.weights}",
                                           like=setup.abstract["params"]["transformer"])
    state["params"]["transformer"] = jax.tree.map(
        lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx, x=x: x[idx]), params,
        setup.shardings["params"]["transformer"])
    logging.info("initialised the transformer from %s", run.init.weights)
  return state, None, 0


# ----------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class _Pending:
  """Per-step metrics since the last log line, still on device (fetched once per log).

  After a resume, the first ``restored`` steps are the interrupted run's: they count in the logged
  means (so the log is an uninterrupted run's) but not in the speed, which times only the steps run
  since ``since``.
  """
  steps: list = dataclasses.field(default_factory=list)
  restored: int = 0
  since: float = dataclasses.field(default_factory=lambda: time.perf_counter())


def _train(run: config_lib.Run, job: jobs.Job, setup: state_lib.Setup, ck, compiled, restored: tuple,
           workdir: str) -> dict:
  """Steps ``compiled`` from the restored ``(state, checkpoint meta, start step)`` to the end."""
  state, meta, start_step = restored
  mesh, rules = setup.mesh, setup.rules
  gb = run.train.batch_size
  rows = sharding.host_rows(mesh, rules, gb)
  train_iter = iter(job.train_batches(rows, start_step))  # from exactly the step we resume at
  writer = MetricWriter(workdir, start_step, tensorboard=run.log.tensorboard)
  progress = Progress(job.num_steps, start_step, desc=os.path.basename(os.path.normpath(workdir)))
  flops = job.objective.flops_per_token(job.seq_len) * job.tokens_per_example * gb
  peak_per_device, peak_source = perf.peak_flops(run.model.dtype, run.log.peak_flops_per_device, run.log.measure_peak)
  peak = peak_per_device * jax.device_count()
  logging.info("MFU divides by a peak of %.4g FLOP/s per device (%s)", peak_per_device, peak_source)
  peak_row = {"perf/peak_flops_per_device": peak_per_device}  # in this process's first logged row
  model_dict = ckpt_lib.model_config_to_dict(run.model)
  last_ckpt_time = time.monotonic()
  last_saved = start_step if meta is not None else None
  pending = _Pending()
  if meta is not None and meta.get("pending_metrics"):
    # Steps after the last log line of the interrupted run: restored so the
    # next logged means cover the same steps as an uninterrupted run's.
    pending.steps = [(int(s), {k: np.asarray(v) for k, v in m.items()}) for s, m in meta["pending_metrics"]]
    pending.restored = len(pending.steps)
  final = {}
  step = start_step
  with _SignalFlag() as sig:
    try:
      while step < job.num_steps:
        local = next(train_iter)
        if step == start_step:  # the producer's rows are what the step was compiled for
          job.batch_spec.check(local, "the train pipeline's first batch", rows.count)
        batch = sharding.global_batch(local, mesh, rules, gb)
        state, metrics = compiled(state, batch)
        step += 1
        pending.steps.append((step, metrics))
        ck.check()  # a failed background save stops the run now (a flag read; never waits for a save)
        at_log = step % run.log.every_steps == 0 or step == job.num_steps
        if at_log:
          scalars = _log_scalars(pending, job, run, ck, last_saved, flops, peak)
          scalars, peak_row = {**scalars, **peak_row}, {}
          pending = _Pending()
          writer.write(step, scalars)
          progress.update(step, scalars)
          final.update(scalars)
        if job.evaluator is not None and (run.eval.every_steps and step % run.eval.every_steps == 0 or
                                          step == job.num_steps):
          ev = job.evaluator.run(state["params"], step, workdir)
          writer.write(step, ev)
          final.update(ev)
        stop = sig.received is not None or step == run.debug.preempt_at_step
        minutes = run.checkpoint.every_minutes
        time_due = bool(minutes) and time.monotonic() - last_ckpt_time > 60 * minutes
        if jax.process_count() > 1:
          # Hosts see signals and clocks at different steps; they act only on
          # a decision they all share (taken at log steps, already a sync
          # point), else one would save while the others train on.
          stop, time_due = (_any_host(stop), _any_host(time_due)) if at_log else (False, False)
        preempted = stop or ck.manager.reached_preemption(step)
        if preempted or step % run.checkpoint.every_steps == 0 or step == job.num_steps or time_due:
          # Never checkpoint a state whose metrics were not checked; the
          # steps stay pending so the logged means do not depend on when we save.
          host = _host_scalars(pending.steps)
          _check_finite(host, run, ck, last_saved)
          meta_now = {
              "model": model_dict,
              "data": job.data_state,
              "config": run.to_dict(),
              "step": step,
              "num_steps": job.num_steps,
              "pending_metrics": [(s, {
                  k: np.asarray(v).item() for k, v in m.items()
              }) for s, m in host]
          }
          if ck.save(step, state, meta_now, force=True):
            last_saved, last_ckpt_time = step, time.monotonic()
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
  return {
      **workdir_lib.RunDir(workdir).latest(step),
      **final, "step": step,
      **(job.evaluator.summary() if job.evaluator is not None else {})
  }


class _SignalFlag:
  """SIGTERM/SIGINT -> finish the step, save, exit(EXIT_PREEMPTED). A second SIGINT aborts at once
  (``gpt1_jax.interrupts`` exits 130 under the CLI; a library caller gets ``KeyboardInterrupt``)."""

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
      if interrupts.watching():
        return  # its thread has already exited, or is exiting, with one line
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


def _any_host(flag: bool) -> bool:
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _log_scalars(pending: _Pending, job, run, ck, last_saved: Optional[int], flops: float, peak: float) -> dict:
  """Host-side view of the steps since the last log; stops on the first non-finite step."""
  host = _host_scalars(pending.steps)
  _check_finite(host, run, ck, last_saved)
  elapsed = max(time.perf_counter() - pending.since, 1e-9)
  steps = len(host) - pending.restored  # run in this window by this process
  # float64 means of the float32 step values: the same result whether a value
  # came from the device or from a checkpoint's JSON (exact resume of the log).
  mean = lambda k: float(np.mean(np.asarray([m[k] for _, m in host if bool(m["finite"])] or [np.nan], np.float64)))
  out = {
      "train/loss": mean("loss"),
      "train/grad_norm": mean("grad_norm"),
      "train/lr": float(host[-1][1]["lr"]),
      "train/nonfinite_steps": int(sum(not bool(m["finite"]) for _, m in host))
  }
  for k in host[-1][1]:
    if k.endswith("_loss"):
      out[f"train/{k}"] = mean(k)
  out["perf/tokens_per_sec"] = job.tokens_per_example * run.train.batch_size * steps / elapsed
  out["perf/steps_per_sec"] = steps / elapsed
  out["perf/mfu"] = flops * steps / elapsed / peak if peak else float("nan")
  return out


def _check_finite(host, run, ck, last_saved):
  gb = run.train.batch_size
  for s, m in host:
    if not bool(m["finite"]):
      if run.train.on_nonfinite == "skip":
        logging.warning("step %d: non-finite loss/grad norm (loss=%s, grad_norm=%s): update skipped", s, m["loss"],
                        m["grad_norm"])
        continue
      batch = (f"the batch was global batch #{s - 1} of the data stream (examples {(s - 1) * gb}..{s * gb - 1} "
               f"of seed {run.seed}'s order)")
      suspects = _suspicious_settings(run) if s <= _EARLY_STEPS else []
      if suspects:
        blame = (f"this early, with {'; '.join(suspects)}, the settings rather than the data are the likely cause "
                 f"({batch})")
        advice = "Correct those settings and rerun"
      else:
        blame, advice = batch, "Set train.on_nonfinite='skip' to skip such updates instead"
      raise NonFiniteError(f"non-finite loss or gradient norm at step {s} (loss={float(m['loss'])}, grad_norm="
                           f"{float(m['grad_norm'])}); {blame}; last good checkpoint: "
                           f"{ck.step_dir(last_saved) if last_saved is not None else 'none'}. {advice}")


# A divergence this early (warmup included: an absurd peak rate reaches the weights within tens of
# steps) is the settings' doing rather than one batch's.
_EARLY_STEPS = 100
_EXTREME = 1e6  # no float setting of this trainer is plausible beyond it


def _suspicious_settings(run) -> list[str]:
  """``section.key=value`` (with the reason) for each setting that alone can make a loss non-finite."""
  out = []
  if run.train.learning_rate > 0.1:
    # Adam moves every weight by about the learning rate each step, whatever the gradient's scale.
    out.append(f"train.learning_rate={run.train.learning_rate:g} (Adam moves every weight by about that much per "
               f"step; GPT-1 used 2.5e-4)")
  for section in ("train", "task", "model"):
    obj = getattr(run, section)
    for field in dataclasses.fields(obj):
      value = getattr(obj, field.name)
      named = f"{section}.{field.name}"
      if isinstance(value, float) and not abs(value) <= _EXTREME and named != "train.learning_rate":  # NaN too
        out.append(f"{named}={value:g}")
  return out
