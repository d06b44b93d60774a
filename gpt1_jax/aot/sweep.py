"""``--sweep``: the settings a user would otherwise try by hand, compiled and ranked.

Candidates are meshes ``data x fsdp x tensor`` over one slice's chips, micro-batches
(``train.grad_accum_steps``) for the config's global batch, ``model.remat`` and
``model.scan_layers``. A GPT-1 compile takes minutes on a small machine, so candidates are
refused without compiling when their shapes cannot work (the heads or the batch do not divide
over the mesh) and compiled in rounds, each only where the last left a question:

1. every valid mesh, no remat, whole batch per step;
2. meshes that did not fit: ``remat=full``;
3. still not fitting: 2, 4, 8... micro-batches;
4. the best so far with ``scan_layers`` (one compiled block: faster compiles, same step).

A variant that can only be slower than one that already fits (remat or micro-batches on a mesh
that fits without them) is skipped. Rounds stop starting compiles when ``budget_s`` is spent.
Compiles run in parallel worker processes where cores and memory allow.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import multiprocessing
import os
import time

from gpt1_jax import config as config_lib
from gpt1_jax.aot import topology
from gpt1_jax.aot.compile import compile_for, HBMError, resolve_slices

COMPILE_MEMORY_BYTES = 6 * 2**30  # a GPT-1 compile's peak host memory, with room to spare


@dataclasses.dataclass(frozen=True)
class Candidate:
  data: int
  fsdp: int
  tensor: int
  grad_accum_steps: int = 1
  remat: str = "none"
  scan_layers: bool = False

  def overrides(self) -> dict:
    return {
        "mesh.data": self.data,
        "mesh.fsdp": self.fsdp,
        "mesh.tensor": self.tensor,
        "train.grad_accum_steps": self.grad_accum_steps,
        "model.remat": self.remat,
        "model.scan_layers": self.scan_layers
    }

  def flags(self) -> list[str]:
    return [f"--config.{k}={v}" for k, v in self.overrides().items()]


def meshes(chips: int) -> list[tuple[int, int, int]]:
  out = []
  for tensor in (t for t in range(1, chips + 1) if chips % t == 0):
    rest = chips // tensor
    for fsdp in (f for f in range(1, rest + 1) if rest % f == 0):
      out.append((rest // fsdp, fsdp, tensor))
  return out


def refusal(run: config_lib.Run, c: Candidate, dcn_batch: int) -> str:
  """Why a candidate cannot run, from shapes alone ('' when it may)."""
  m = run.model
  if m.n_head % c.tensor or (4 * m.n_embd) % c.tensor:
    return f"{m.n_head} heads / FFN {4 * m.n_embd} do not divide over tensor={c.tensor}"
  micro = run.train.batch_size // c.grad_accum_steps
  batch_axes = c.data * c.fsdp * dcn_batch
  if run.train.batch_size % c.grad_accum_steps or micro % batch_axes:
    return (f"micro-batch {micro} does not divide over the {batch_axes} batch shards (data x fsdp"
            f"{' x dcn' if dcn_batch > 1 else ''}); on a slice this large use tensor or a larger train.batch_size")
  if m.n_embd % c.fsdp:
    return f"n_embd {m.n_embd} does not divide over fsdp={c.fsdp}"
  return ""


def _apply(config_dict: dict, c: Candidate) -> dict:
  d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config_dict.items()}
  for key, value in c.overrides().items():
    section, name = key.split(".")
    d[section][name] = value
  return d


def _compile_one(config_dict: dict, accelerator_type: str, num_slices: int, c: Candidate) -> dict:
  """Runs in a worker process: one candidate's compile, as a small dict."""
  t = time.perf_counter()
  try:
    r = compile_for(_apply(config_dict, c), accelerator_type, num_slices, with_eval=False)
  except HBMError as e:
    return {
        "status": "compiled",
        "fits": False,
        "reason": str(e).split(": the compiler needs")[-1][:160],
        "compile_s": round(time.perf_counter() - t, 1)
    }
  except (ValueError, MemoryError) as e:
    return {"status": "refused", "reason": str(e)[:200], "compile_s": round(time.perf_counter() - t, 1)}
  e = r["estimate"]
  return {
      "status": "compiled",
      "fits": r["fits"],
      "memory_total": r["memory_per_chip"].get("total"),
      "tokens_per_s": e["tokens_per_s"],
      "mfu": e["mfu"],
      "bound": e["bound"],
      "compile_s": r["compile_s"],
      "collectives": r["collectives"]
  }


def default_workers() -> int:
  try:
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError):
    avail = COMPILE_MEMORY_BYTES
  return max(1, min(os.cpu_count() or 1, avail // COMPILE_MEMORY_BYTES))


def run_sweep(config, accelerator_type: str, num_slices: int = 1, *, budget_s: float = 1800, workers: int = 0,
              config_label: str = "config") -> dict:
  s = topology.parse(accelerator_type)
  config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  run = config_lib.resolve(config_dict)
  run = resolve_slices(run, num_slices)
  dcn_batch = run.mesh.dcn_data * run.mesh.dcn_fsdp
  config_dict["mesh"] = {**config_dict.get("mesh", {}), "dcn_data": run.mesh.dcn_data}
  start = time.perf_counter()
  rows: dict[Candidate, dict] = {}
  workers = workers or default_workers()
  ctx = multiprocessing.get_context("spawn")  # JAX is not fork-safe

  def compile_round(cands: list[Candidate]):
    todo = []
    for c in cands:
      if c in rows:
        continue
      why = refusal(run, c, dcn_batch)
      if why:
        rows[c] = {"status": "skipped", "reason": why}
      else:
        todo.append(c)
    if not todo:
      return
    with cf.ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
      pending = {}
      queue = list(todo)
      while queue or pending:
        while queue and len(pending) < workers:
          if time.perf_counter() - start > budget_s:
            for c in queue:
              rows[c] = {"status": "not compiled", "reason": "time budget spent"}
            queue = []
            break
          c = queue.pop(0)
          logging.info("sweep: compiling %s", c)
          pending[pool.submit(_compile_one, config_dict, accelerator_type, num_slices, c)] = c
        if not pending:
          break
        done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
        for f in done:
          rows[pending.pop(f)] = f.result()

  fits = lambda c: rows.get(c, {}).get("fits") is True  # noqa: E731
  base = [Candidate(*m) for m in meshes(s.chips)]
  compile_round(base)
  no_fit = [c for c in base if rows[c].get("status") == "compiled" and not fits(c)]
  compile_round([dataclasses.replace(c, remat="full") for c in no_fit])
  still = [dataclasses.replace(c, remat="full") for c in no_fit if not fits(dataclasses.replace(c, remat="full"))]
  for accum in (2, 4, 8, 16):
    cands = [
        dataclasses.replace(c, grad_accum_steps=accum)
        for c in still
        if run.train.batch_size % accum == 0 and run.train.batch_size // accum >= 1
    ]
    compile_round(cands)
    still = [c for c in still if not fits(dataclasses.replace(c, grad_accum_steps=accum))]
    if not still:
      break
  ranked = sorted((c for c in rows if fits(c)), key=lambda c: -rows[c]["tokens_per_s"])
  if ranked:
    compile_round([dataclasses.replace(ranked[0], scan_layers=True)])
  out = []
  for c, r in rows.items():
    out.append({"candidate": dataclasses.asdict(c), **r})
  out.sort(key=lambda r: (not r.get("fits", False), -(r.get("tokens_per_s") or 0), r["status"]))
  best = max((c for c in rows if fits(c)), key=lambda c: rows[c]["tokens_per_s"], default=None)
  meta = {
      "topology": accelerator_type,
      "num_slices": num_slices,
      "config": config_label,
      "budget_s": budget_s,
      "elapsed_s": time.perf_counter() - start,
      "workers": workers,
      "candidates_considered": len(rows),
      "meshes": len(base)
  }
  return {"rows": out, "best_flags": best.flags() if best else [], "meta": meta}
