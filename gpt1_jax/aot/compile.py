"""Compile a run's train and eval steps for a TPU slice on any machine, and report what XLA:TPU says.

``compile_for(config, "v5e-8")`` resolves the config exactly as ``gpt1_jax.main`` does, builds
the mesh from the slice's compile-only devices (``jax.experimental.topologies``; libtpu must be
installed: ``pip install -e '.[aot]'``), takes the batch shapes from the config alone
(``jobs.shapes_job``), sets up the state with ``state.setup`` and compiles ``loop.train_step_fn``
and the eval step with the real XLA:TPU compiler. The report holds the compiler's memory per
chip, its FLOPs (loops counted fully), the collectives of the compiled program and a roofline
*estimate* of the step time from the chip's published figures.

A step that does not fit raises ``HBMError`` (a ``MemoryError``: one ``error:`` line from the CLI)
with the compiler's figure, the chip's HBM and what to change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import tempfile
import time
from typing import Optional

import jax
import jax.numpy as jnp

from gpt1_jax import config as config_lib
from gpt1_jax import jobs, loop, perf
from gpt1_jax import state as state_lib
from gpt1_jax.aot import hlo, topology
from gpt1_jax.train import make_optimizer

ESTIMATE_NOTE = ("estimate, not a measurement: a roofline from XLA's per-chip FLOPs and bytes and the "
                 "collectives' bytes against the chip's published peak FLOP/s, HBM, ICI and DCN bandwidths, "
                 "assuming perfect overlap (the slowest of the four is the step time)")


class HBMError(MemoryError):
  """The compiled step needs more memory per chip than the chip's HBM has."""


@contextlib.contextmanager
def quiet_stderr():
  """libtpu writes start-up warnings (TPU_ACCELERATOR_TYPE, TPU_WORKER_HOSTNAMES) straight to file
  descriptor 2 when it is loaded off a TPU VM; they say nothing about compiling. Hidden here, kept
  for the error message if loading fails."""
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield
    except BaseException as e:
      os.dup2(saved, 2)
      tmp.seek(0)
      e.add_note(tmp.read().decode(errors="replace")[-2000:])
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def require_libtpu():
  import importlib.util
  if importlib.util.find_spec("libtpu") is None:
    raise ImportError("compiling for TPU needs libtpu, which is not installed: pip install -e '.[aot]' "
                      "(JAX's own `tpu` extra, at the version of the installed JAX)")
  # libtpu takes /tmp/libtpu_lockfile so that two processes never drive one TPU; compiling drives
  # nothing, and the sweep's workers (or a test beside a running compile) each load it.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def topology_devices(s: topology.Slice, num_slices: int) -> list:
  """The compile-only devices of ``num_slices`` slices of type ``s`` (one per chip)."""
  require_libtpu()
  from jax.experimental import topologies
  kwargs = {"chips_per_host_bounds": s.chips_per_host_bounds}
  if s.megacore:
    kwargs["chip_config_name"] = "megacore"
  if num_slices > 1:
    kwargs["num_slices"] = num_slices
  with quiet_stderr():
    return list(topologies.get_topology_desc(topology_name=s.topology_name, platform="tpu", **kwargs).devices)


@functools.lru_cache(maxsize=None)
def hbm_available(accelerator_type: str) -> Optional[int]:
  """The HBM the compiler lets a program use per chip, in bytes: read from its own refusal of a
  program too large for any chip (a fraction of a second to compile). None if it cannot be read."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  dev = topology_devices(topology.parse(accelerator_type), 1)[0]
  mesh = jax.sharding.Mesh([dev], ("x",))
  big = jax.ShapeDtypeStruct((2**38,), jnp.float32, sharding=NamedSharding(mesh, P()))
  try:
    with quiet_stderr():
      jax.jit(lambda a: (a * 2, a + 1)).lower(big).compile()
  except Exception as e:  # noqa: BLE001 - the refusal is what we want
    avail = _hbm_figures(str(e))[1]
    return avail
  return None


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _hbm_figures(message: str) -> tuple[Optional[int], Optional[int]]:
  """``(needed, available)`` bytes from XLA:TPU's ``Ran out of memory ... (86.78G) exceeds available
  HBM (15.75G)``; either may be None."""
  found = [float(v) * _UNITS[u] for v, u in re.findall(r"\(([\d.]+)([KMGT])\)", message)]
  if len(found) >= 2:
    return int(found[0]), int(found[-1])
  return None, None


def _hbm_error(e: Exception, s: topology.Slice, run: config_lib.Run, what: str) -> HBMError:
  needed, avail = _hbm_figures(str(e))
  first = str(e).splitlines()[0].strip()
  gb = run.train.batch_size
  return HBMError(f"{what} does not fit in HBM on {topology.describe(s)}: the compiler needs "
                  f"{perf.fmt_bytes(needed) if needed else '?'} per chip, the chip's HBM has "
                  f"{perf.fmt_bytes(avail) if avail else perf.fmt_bytes(s.chip.hbm_bytes)} ({first[:200]}). Change: "
                  f"model.remat=full (recompute activations), a larger mesh.fsdp (shard the state), "
                  f"train.grad_accum_steps={2 * run.train.grad_accum_steps} (smaller micro-batches), "
                  f"a smaller train.batch_size (now {gb}), or model.dtype=bfloat16; `--sweep` tries these")


@contextlib.contextmanager
def compiling(s: topology.Slice, run: config_lib.Run, what: str):
  """Compiles ``what`` quietly (:func:`quiet_stderr`); the compiler's out-of-memory refusal becomes
  one ``HBMError`` saying what to change, every other error stays as it is."""
  try:
    with quiet_stderr():
      yield
  except Exception as e:  # noqa: BLE001 - only the compiler's out-of-memory refusal is ours to explain
    if "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e):
      raise _hbm_error(e, s, run, what) from None
    raise


def resolve_slices(run: config_lib.Run, num_slices: int) -> config_lib.Run:
  """``--num_slices`` against the config's ``mesh.dcn_*``: equal when set, else data-parallel."""
  m = run.mesh
  dcn = m.dcn_data * m.dcn_fsdp * m.dcn_tensor
  if num_slices < 1:
    raise ValueError(f"--num_slices={num_slices} must be at least 1")
  if dcn == 1 and num_slices > 1:
    return dataclasses.replace(run, mesh=dataclasses.replace(m, dcn_data=num_slices))
  if dcn != num_slices:
    raise ValueError(f"mesh.dcn_data x dcn_fsdp x dcn_tensor = {m.dcn_data} x {m.dcn_fsdp} x {m.dcn_tensor} = "
                     f"{dcn}, but --num_slices={num_slices}: they must be equal (leave mesh.dcn_* at 1 for "
                     f"data parallelism across slices)")
  return run


def compile_for(config, accelerator_type: str, num_slices: int = 1, with_eval: bool = True,
                hlo_path: Optional[str] = None) -> dict:
  """Compiles ``config``'s train (and eval) step for ``num_slices`` slices of ``accelerator_type``;
  returns the report (``aot.json``'s content). ``hlo_path``: also write the optimised HLO there."""
  s = topology.parse(accelerator_type)
  run = config_lib.resolve(config) if not isinstance(config, config_lib.Run) else config
  run = resolve_slices(run, num_slices)
  t0 = time.perf_counter()
  devices = topology_devices(s, num_slices)
  mesh, rules = loop.make_mesh(run, devices)
  job = jobs.shapes_job(run)
  loop.validate(run, mesh, rules, job)
  tx, schedule = make_optimizer(run.train, job.num_steps)
  setup = state_lib.setup(job.objective, tx, job.batch_spec, run.train.batch_size, mesh, rules)
  hbm = hbm_available(s.accelerator_type)
  state_lib.check_memory_plan(setup, hbm)
  with compiling(s, run, "the train step"):
    lowered = setup.lower(loop.train_step_fn(run, job, tx, schedule))
    compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  if hlo_path:
    with open(hlo_path, "w") as f:
      f.write(compiled.as_text())
  eval_report = None
  if with_eval and job.evaluator is not None:
    t1 = time.perf_counter()
    with compiling(s, run, "the eval step"):
      job.evaluator.compile(setup, loop.eval_batch_size(run))
      ev = job.evaluator.compiled
    eval_report = {
        "batch_size": loop.eval_batch_size(run),
        "memory_per_chip": _memory(ev),
        "compile_s": round(time.perf_counter() - t1, 2)
    }
  return report(run, s, num_slices, mesh, job, compiled, hbm, compile_s, eval_report, lowered.as_text(dialect="hlo"))


def _memory(compiled) -> dict:
  m = perf.compiled_memory(compiled)
  return {k: m[k] for k in ("arguments", "outputs", "temporaries", "aliased", "total")} if m else {}


def report(run, s: topology.Slice, num_slices: int, mesh, job, compiled, hbm: Optional[int], compile_s: float,
           eval_report: Optional[dict], lowered_text: str) -> dict:
  chips = topology.total_chips(s, num_slices)
  slice_of = [getattr(d, "slice_index", 0) for d in mesh.devices.flat]
  analysis = hlo.analyse(compiled.as_text(), slice_of, num_slices)
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else {}
  xla_flops = float(cost.get("flops", 0.0))
  xla_bytes = float(cost.get("bytes accessed", 0.0))
  # XLA counts the body of the step's own loops (scan over layers, gradient accumulation) once:
  # add the matmul FLOPs of the iterations it missed, exact from the lowered program's dots (whole
  # batch: spread over the chips), and scale its bytes by the same factor (a loop body's bytes
  # are mostly its matmuls' operands).
  full, counted, unknown = hlo.loop_matmul_flops(lowered_text)
  extra = (full - counted) / chips
  flops_chip = xla_flops + extra
  bytes_chip = xla_bytes * (flops_chip / xla_flops if xla_flops else 1.0)
  gb = run.train.batch_size
  model_flops = job.objective.flops_per_token(job.seq_len) * job.tokens_per_example * gb
  memory = _memory(compiled)
  limit = hbm or int(s.chip.hbm_bytes)
  tokens = job.tokens_per_example * gb
  return {
      "topology": s.accelerator_type,
      "topology_name": s.topology_name,
      "num_slices": num_slices,
      "num_chips": chips,
      "hosts_per_slice": s.hosts,
      "device_kind": s.chip.device_kind,
      "mesh": {
          k: int(v) for k, v in mesh.shape.items()
      },
      "config": {
          "model": {
              "dtype": run.model.dtype,
              "remat": run.model.remat,
              "scan_layers": run.model.scan_layers,
              "n_layer": run.model.n_layer,
              "n_embd": run.model.n_embd
          },
          "batch_size": gb,
          "seq_len": job.seq_len,
          "grad_accum_steps": run.train.grad_accum_steps
      },
      "hbm_per_chip_bytes": int(limit),
      "hbm_source": "compiler" if hbm else "datasheet",
      "memory_per_chip": memory,
      "fits": bool(memory and memory["total"] <= limit),
      "compiler_flops_per_step": flops_chip * chips,
      "model_flops_per_step": model_flops,
      "xla_cost_analysis": {
          "flops_per_chip": xla_flops,
          "bytes_accessed_per_chip": xla_bytes,
          "loop_matmul_flops_added_per_chip": extra,
          "unknown_trip_counts": unknown + analysis.unknown_trip_counts
      },
      "collectives": analysis.collectives,
      "estimate": estimate(s.chip, flops_chip, bytes_chip, analysis.collectives, tokens, model_flops, chips),
      "compile_s": round(compile_s, 2),
      "eval": eval_report,
      "chip_figures": dataclasses.asdict(s.chip),
  }


def estimate(chip: topology.Chip, flops_chip: float, bytes_chip: float, collectives: list, tokens: int,
             model_flops: float, chips: int) -> dict:
  """Roofline step time: the slowest of compute, HBM traffic, ICI and DCN traffic (an estimate)."""
  ici = sum(c["bytes"] for c in collectives if c["over"] == "ici")
  dcn = sum(c["bytes"] for c in collectives if c["over"] == "dcn")
  # A chip sends over its ports at half its bidirectional bandwidth.
  times = {
      "compute": flops_chip / chip.peak_bf16_flops,
      "hbm": bytes_chip / chip.hbm_bytes_per_s,
      "ici": ici / (chip.ici_bytes_per_s / 2),
      "dcn": dcn / chip.dcn_bytes_per_s
  }
  bound = max(times, key=times.get)
  step = max(times[bound], 1e-12)
  return {
      "step_s": step,
      "tokens_per_s": tokens / step,
      "mfu": model_flops / (step * chips * chip.peak_bf16_flops),
      "bound": bound,
      "times_s": times,
      "note": ESTIMATE_NOTE
  }
