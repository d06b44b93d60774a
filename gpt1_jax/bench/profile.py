"""Where a step's time goes: a ``jax.profiler`` trace of a few steps, summarised as the top ops by time.

The trace's Chrome-format JSON (``*.trace.json.gz``, or Perfetto's ``perfetto_trace.json.gz``)
lists every op the runtime executed with its HLO name (``args.hlo_op``): on a GPU, the kernels
on the device's streams; on CPU, the runtime's thunks. They are summed per HLO op and per kind
of op (matmuls, fused attention, fusions, copies, collectives), per step. No TensorBoard
plugin is needed. XLA's own cost analysis of the compiled step (FLOPs, bytes) comes with it.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
from typing import Optional

import jax

CATEGORIES = (  # first match wins; tested against the kernel name and the HLO op name
    ("fused attention (cuDNN)", re.compile(r"cudnn|fmha|flash|sdpa|attention", re.I)),
    ("matmul", re.compile(r"gemm|dot|matmul|cublas|xmma|cutlass|sm\d+_|ynn|xnn|onednn|convolution", re.I)),
    ("collective", re.compile(r"all-reduce|all-gather|reduce-scatter|nccl|collective|all-to-all", re.I)),
    ("copy / transpose", re.compile(r"copy|transpose|memcpy|memset", re.I)),
    ("fusion (elementwise, reductions)", re.compile(r"fusion|reduce|loop_|input_", re.I)),
)


def category(*names: str) -> str:
  for label, pattern in CATEGORIES:
    if any(pattern.search(n or "") for n in names):
      return label
  return "other"


def trace(log_dir: str, run_steps) -> str:
  """Runs ``run_steps()`` under the profiler, writing the trace under ``log_dir``; returns ``log_dir``."""
  os.makedirs(log_dir, exist_ok=True)
  jax.profiler.start_trace(log_dir, create_perfetto_trace=True)
  try:
    run_steps()
  finally:
    jax.profiler.stop_trace()
  return log_dir


def find_trace_json(log_dir: str) -> Optional[str]:
  for pattern in ("*.trace.json.gz", "perfetto_trace.json.gz"):
    found = sorted(glob.glob(os.path.join(log_dir, "**", pattern), recursive=True))
    if found:
      return found[-1]
  return None


def _events(path: str) -> tuple[list, dict, dict]:
  with gzip.open(path, "rt") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  processes, threads = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      processes[e.get("pid")] = (e.get("args") or {}).get("name", "")
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      threads[(e.get("pid"), e.get("tid"))] = (e.get("args") or {}).get("name", "")
  return events, processes, threads


def summarize(log_dir: str, steps: int, *, top: int = 15, step_s: Optional[float] = None) -> dict:
  """Top HLO ops by time per step (and per kind of op) in the trace under ``log_dir``."""
  path = find_trace_json(log_dir)
  if path is None:
    raise FileNotFoundError(f"no trace JSON under {log_dir} (this jax wrote only the .xplane.pb); "
                            f"open it with xprof/TensorBoard's profile plugin")
  events, processes, threads = _events(path)
  device_pids = {pid for pid, name in processes.items() if name.startswith("/device:")}
  on_device = [e for e in events if e.get("ph") == "X" and e.get("pid") in device_pids]
  note = None
  if on_device:
    # A device can list the same work on several lines (streams, and derived "XLA Ops" lines):
    # keep the stream lines when there are any, so no kernel is counted twice.
    lines = {(e["pid"], e["tid"]) for e in on_device}
    streams = {ln for ln in lines if "stream" in threads.get(ln, "").lower()}
    keep = streams or lines
    ops = [e for e in on_device if (e["pid"], e["tid"]) in keep]
    source = "device: " + ", ".join(sorted({f"{processes.get(p, p)} / {threads.get((p, t), t)}" for p, t in keep}))
    if not any((e.get("args") or {}).get("hlo_op") for e in ops):
      note = "the device's events carry no HLO op names: grouped by kernel name"
  else:
    ops = [
        e for e in events
        if e.get("ph") == "X" and (e.get("args") or {}).get("hlo_op") and not str(e.get("name", "")).startswith("end: ")
    ]
    source = "host runtime (thunks)"
    if device_pids:
      note = "no device events in the trace: these are host-side times"
  per_op = collections.defaultdict(lambda: {"us": 0.0, "count": 0, "kernel": ""})
  for e in ops:
    args = e.get("args") or {}
    op = args.get("hlo_op") or str(e.get("name", ""))
    entry = per_op[(args.get("hlo_module", ""), op)]
    entry["us"] += float(e.get("dur", 0.0))
    entry["count"] += 1
    if e.get("name") != op:
      entry["kernel"] = entry["kernel"] or str(e.get("name"))[:120]
  total_us = sum(v["us"] for v in per_op.values())
  rows = []
  for (module, op), v in sorted(per_op.items(), key=lambda kv: -kv[1]["us"]):
    rows.append({
        "op": op,
        "module": module,
        "kernel": v["kernel"],
        "category": category(v["kernel"], op),
        "ms_per_step": v["us"] / 1e3 / steps,
        "share": v["us"] / total_us,
        "calls_per_step": v["count"] / steps
    })
  kinds = collections.defaultdict(float)
  for r in rows:
    kinds[r["category"]] += r["ms_per_step"]
  busy_ms = total_us / 1e3 / steps
  out = {
      "trace": path,
      "source": source,
      "note": note,
      "steps": steps,
      "ops_per_step": len(ops) / steps,
      "busy_ms_per_step": busy_ms,
      "top_ops": rows[:top],
      "by_category_ms_per_step": dict(sorted(kinds.items(), key=lambda kv: -kv[1]))
  }
  if step_s:
    out["step_ms"] = step_s * 1e3
    out["busy_share_of_step"] = busy_ms / (step_s * 1e3)
  return out


def cost_analysis(compiled) -> dict:
  """XLA's estimate for one call of a compiled program: FLOPs and bytes accessed ({} if unavailable)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    return {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  keep = ("flops", "bytes accessed", "transcendentals", "optimal_seconds")
  return {k.replace(" ", "_"): float(v) for k, v in (cost or {}).items() if k in keep}
