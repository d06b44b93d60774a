"""The GPU check (issue 18): is this accelerator's path correct, and how fast is GPT-1 117M on it?

    python -m gpt1_jax.bench --suite=gpu --out=out/gpu_check.json     # ~7 min on one H100/H200
    python -m gpt1_jax.bench --suite=gpu --quick --out=/tmp/gpu.json  # every row at tiny shapes, any device
    launch/gpu_check.sh OUT_DIR                                       # the same, with the GPU environment

Rows, in the order they run (names as in the JSON):

* correctness: ``logits_bf16_vs_f32`` (GPT-1 117M, same weights); ``attention_dot_product`` and
  ``attention_cudnn`` against ``attention=xla`` (no dropout, same inputs, logits and gradients);
  ``pretrain_float32`` / ``pretrain_bfloat16``: a few hundred steps of the real trainer on a real
  corpus against the same run on CPU in a subprocess (``pretraining.py``).
* speed: our AOT-compiled train step of GPT-1 117M at n_ctx 512 in bf16 compute with f32 master
  weights (step time, tokens/s, memory, MFU against a bf16 matmul peak measured in this run and
  the datasheet's) for a few batch sizes, with and without ``scan_layers``, remat, cuDNN
  attention and attention dropout; Hugging Face's ``OpenAIGPTLMHeadModel`` in torch bf16
  autocast at the same shape, eager and ``torch.compile`` (each in a subprocess), for the ratio.
* ``profile``: the top ops by time of the fastest of our configurations (``profile.py``).

Every row is guarded: an exception is recorded in its row and the check goes on. Rows that need
a GPU record ``skipped: needs a GPU`` elsewhere. ``--budget`` (seconds, default 420) bounds the
whole check: a row whose estimated cost no longer fits is skipped with a note, and a row that
overruns is interrupted where Python regains control. Results: ``--out`` (JSON) and the same
path with ``.md`` (Markdown tables, ``report.format_gpu_report``).

Runs without TensorFlow, tensorflow-datasets, spaCy or ftfy; the pretraining rows read
``configs/pretrain.py`` and so need the small ml-collections wheel, as the trainer does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import tempfile
import threading
import time
import traceback
from typing import Callable, Optional

from gpt1_jax.bench import correctness, pretraining, speed
from gpt1_jax.bench import profile as profile_lib
from gpt1_jax.bench.machine import log, matmul_peak, on_cpu
from gpt1_jax.bench.report import format_gpu_report, write_json
from gpt1_jax.bench.suite import header
from gpt1_jax.bench.train import FLOP_FORMULA, OPTIMIZER
from gpt1_jax.model import ModelConfig
from gpt1_jax.workdir import RunDir

NEEDS_GPU = "skipped: needs a GPU"
GRACE_S = 15.0  # a row may overrun the budget by this much before it is interrupted
RESERVE_S = 10.0  # kept for the profile summary and the report


@dataclasses.dataclass
class GpuOptions:
  """What the GPU check runs (the ``--suite=gpu`` flags map onto these)."""

  quick: bool = False  # every row at tiny shapes (CPU-sized), same code
  budget_s: float = 420.0
  batches: tuple = ()  # speed rows' batch sizes; () -> (8, 16, 32), quick (2, 4)
  steps: int = 10  # timed steps per speed row
  warmup: int = 2
  hf: bool = True
  hf_compile: bool = True
  data_dir: str = ""  # token store for the pretraining rows ("": the shipped IMDB sample)
  work_dir: str = ""  # pretraining runs, logs and the profile trace ("": a temporary directory, removed)
  pretrain_steps: int = 0  # 0: 300 (quick 40)
  rows: tuple = ()  # run only these rows (by name); () all
  profile_steps: int = 3
  peak_n: int = 0  # matmul size of the measured peak; 0: 8192 (quick 512)
  twin_cores: int = 4  # CPU cores for the pretraining run's CPU twin


@dataclasses.dataclass
class Row:
  name: str
  group: str  # correctness | speed | profile
  title: str
  fn: Callable[["Context"], dict]
  estimate_s: float  # full-size cost, including compilation (quick: a fixed small figure)
  needs_gpu: bool = False


class RowTimeout(Exception):
  pass


@contextlib.contextmanager
def time_limit(seconds: float):
  """Raises ``RowTimeout`` in the main thread after ``seconds`` (when Python next runs there)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def fire(signum, frame):
    raise RowTimeout(f"interrupted after its {seconds:.0f} s share of the time budget")

  old = signal.signal(signal.SIGALRM, fire)
  signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


# ----------------------------------------------------------------------------
# The run.


def check_model(quick: bool) -> tuple[ModelConfig, int, int]:
  """(model, batch, length) of the numerical checks; the full model scans its blocks to compile once."""
  if quick:
    return ModelConfig(vocab_size=512, n_ctx=64, n_embd=64, n_head=4, n_layer=2), 2, 64
  return ModelConfig(scan_layers=True, vocab_pad_multiple=128), 2, 512


class Context:
  """What rows share: options, the measured peak, the scratch directory, the CPU twin, the fastest row."""

  def __init__(self, opts: GpuOptions, work_dir: str):
    self.opts = opts
    self.work_dir = work_dir
    self.quick = opts.quick
    self.cpu = on_cpu()
    self.batches = tuple(opts.batches) or ((2, 4) if opts.quick else (8, 16, 32))
    self.seq_len = 64 if opts.quick else 512
    self.pretrain_steps = opts.pretrain_steps or (40 if opts.quick else 300)
    self.t0 = time.perf_counter()
    self.peak: Optional[float] = None
    self.sheet: Optional[float] = None
    self.twin: Optional[pretraining.CpuTwin] = None
    self.twin_result: Optional[dict] = None
    self.data_dir = opts.data_dir or pretraining.SHIPPED_STORE
    self.ours: dict[str, dict] = {}  # name -> a measured speed row of ours
    self.best: Optional[tuple[float, str, str, float]] = None  # (tokens/s, row name, trace dir, step s)
    self.compile_s: dict[bool, float] = {}  # scan_layers -> last measured setup time of a speed row

  def elapsed(self) -> float:
    return time.perf_counter() - self.t0

  def batch(self, which: str) -> int:
    b = sorted(self.batches)
    return {"main": b[len(b) // 2] if len(b) > 2 else b[-1], "small": b[0], "large": b[-1]}[which]


def correctness_rows() -> list[Row]:

  def logits(ctx):
    cfg, b, t = check_model(ctx.quick)
    return correctness.logits_bf16_vs_f32(cfg, batch=b, seq_len=t)

  def attention(impl, dtypes):

    def fn(ctx):
      cfg, b, t = check_model(ctx.quick)
      return correctness.attention_vs_xla(cfg, impl, batch=b, seq_len=t, dtypes=dtypes)

    return fn

  return [
      Row("logits_bf16_vs_f32", "correctness", "bf16 vs f32 logits, same weights", logits, 30),
      Row("attention_dot_product", "correctness", "attention=dot_product vs xla, no dropout (f32, bf16)",
          attention("dot_product", ("float32", "bfloat16")), 50),
      Row("attention_cudnn", "correctness", "attention=cudnn vs xla, no dropout (bf16)",
          attention("cudnn", ("bfloat16",)), 40, needs_gpu=True),
  ]


def pretrain_row(dtype: str) -> Row:

  def fn(ctx):
    if ctx.twin is None and ctx.twin_result is None:
      start_twin(ctx)
    workdir = os.path.join(ctx.work_dir, f"pretrain_{dtype}")
    ours = pretraining.accelerator_run(ctx.data_dir, workdir, ctx.pretrain_steps, dtype, quick=ctx.quick)
    _drop_checkpoints(workdir)
    if ctx.twin_result is None:
      left = ctx.opts.budget_s - ctx.elapsed() + GRACE_S
      ctx.twin_result = ctx.twin.wait(timeout=left)
      _drop_checkpoints(ctx.twin.workdir)
    cpu = ctx.twin_result
    out = pretraining.compare_curves(ours["curve"], cpu["curve"], dtype, min_drop=0.3 if ctx.quick else 2.0)
    out.update(steps=ctx.pretrain_steps, data_dir=ctx.data_dir, config="configs/pretrain.py:tiny",
               device_seconds=ours["seconds"], cpu_seconds=cpu["seconds"], cpu_cores=cpu["cores"],
               tokens_per_s=ours["tokens_per_s"], curve=ours["curve"], cpu_curve=cpu["curve"])
    return out

  return Row(f"pretrain_{dtype}", "correctness",
             f"pretraining {dtype} compute, configs/pretrain.py:tiny on real text, vs the same run on CPU", fn,
             45 if dtype == "float32" else 35)


def start_twin(ctx: Context):
  ctx.twin = pretraining.CpuTwin(ctx.data_dir, os.path.join(ctx.work_dir, "pretrain_cpu_twin"), ctx.pretrain_steps,
                                 quick=ctx.quick, cores=ctx.opts.twin_cores)


def _drop_checkpoints(workdir: str):
  shutil.rmtree(RunDir(workdir).checkpoints, ignore_errors=True)  # ~100 MB each; the curve is kept


def speed_rows(ctx: Context) -> list[Row]:
  rows, names = [], set()
  for suffix, title, kw, which, gpu_only in speed.VARIANTS:
    b = ctx.batch(which)
    name = f"speed_b{b}_{suffix.replace('_small', '').replace('_large', '')}"
    if name in names:  # a small or large batch that is the main one
      continue
    names.add(name)
    rows.append(
        Row(name, "speed", f"ours, batch {b}: {title}", lambda c, name=name, b=b, kw=kw: speed.ours(c, name, b, kw),
            25 if kw.get("scan_layers") else 50, needs_gpu=gpu_only))
  return rows


def hf_rows(ctx: Context) -> list[Row]:
  b = ctx.batch("main")

  def fn(compile):
    return lambda c: speed.hugging_face(c, b, compile=compile, timeout=c.opts.budget_s - c.elapsed() + GRACE_S)

  rows = [
      Row(f"hf_b{b}_eager", "speed", f"Hugging Face OpenAIGPTLMHeadModel, torch bf16 autocast, eager, batch {b}",
          fn(False), 30)
  ]
  if ctx.opts.hf_compile:
    rows.append(
        Row(f"hf_b{b}_compile", "speed", f"Hugging Face, torch bf16 autocast, torch.compile, batch {b}", fn(True), 100))
  return rows


def profile_row() -> Row:

  def fn(ctx: Context):
    if ctx.best is None:
      raise RuntimeError("no speed row of ours completed, so there is nothing to profile")
    tps, name, trace_dir, step_s = ctx.best
    out = profile_lib.summarize(trace_dir, ctx.opts.profile_steps, step_s=step_s)
    out.update(status="ok", config=name, description=ctx.ours.get(name, {}).get("description"), tokens_per_s=tps,
               xla_cost=ctx.ours.get(name, {}).get("xla_cost"))
    return out

  return Row("profile", "profile", "top ops by time of the fastest configuration of ours", fn, 15)


def plan(ctx: Context) -> list[Row]:
  """Every row, most important first: the budget cuts from the end."""
  correct = correctness_rows()
  hf = hf_rows(ctx) if ctx.opts.hf else []
  by_name = {r.name: r for r in speed_rows(ctx)}
  main = ctx.batch("main")
  first = [by_name.pop(f"speed_b{main}_xla")]
  cudnn = [by_name.pop(f"speed_b{main}_cudnn")] if f"speed_b{main}_cudnn" in by_name else []
  # Our GPT-1 step and Hugging Face's at the same shape first (the ratio), then the variants.
  return (correct + [pretrain_row("float32")] + first + hf + cudnn + list(by_name.values()) +
          [pretrain_row("bfloat16"), profile_row()])


def estimate(ctx: Context, row: Row) -> float:
  if ctx.quick:
    return 20.0 if row.name.startswith("pretrain") else 5.0
  if row.name.startswith("speed_"):
    scan = "scan" in row.name
    measured = ctx.compile_s.get(scan)
    return max(row.estimate_s * 0.5, measured + 5.0) if measured else row.estimate_s
  return row.estimate_s


def run_row(ctx: Context, row: Row) -> dict:
  base = {"name": row.name, "group": row.group, "title": row.title}
  if row.needs_gpu and ctx.cpu:
    return {**base, "status": "skipped", "note": NEEDS_GPU}
  used = ctx.elapsed()
  left = ctx.opts.budget_s - used - (0 if row.name == "profile" else RESERVE_S)
  need = estimate(ctx, row)
  if need > left:
    return {
        **base, "status": "skipped",
        "note": f"skipped: time budget ({used:.0f} of {ctx.opts.budget_s:.0f} s used; this row needs "
                f"~{need:.0f} s)"
    }
  log(f"gpu check: {row.name} ({row.title})")
  t = time.perf_counter()
  try:
    with time_limit(ctx.opts.budget_s - used + GRACE_S):
      out = row.fn(ctx)
  except Exception as e:  # noqa: BLE001 - a failing row is recorded and the check goes on (RowTimeout too)
    out = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-3000:]}
  out = {**base, **out, "seconds": time.perf_counter() - t}
  log(f"gpu check: {row.name}: {out['status']} in {out['seconds']:.1f} s")
  return out


def run_check(opts: GpuOptions, command: str = "") -> dict:
  """Runs the GPU check; returns the result (``write_outputs`` writes the JSON and the Markdown)."""
  work_dir = opts.work_dir or tempfile.mkdtemp(prefix="gpt1_jax_gpu_check_")
  os.makedirs(work_dir, exist_ok=True)
  ctx = Context(opts, work_dir)
  result = {
      **header(command), "suite": "gpu",
      "settings": dataclasses.asdict(opts),
      "work_dir": work_dir,
      "optimizer": OPTIMIZER,
      "flop_formula": FLOP_FORMULA,
      "rows": []
  }
  try:
    rows = [r for r in plan(ctx) if not opts.rows or r.name in opts.rows]
    if any(r.name.startswith("pretrain_") for r in rows):
      start_twin(ctx)  # first, so that it runs on its cores while the accelerator works
    n = opts.peak_n or (512 if opts.quick else 8192)
    peak = matmul_peak("bfloat16", n)
    ctx.peak, ctx.sheet = peak["measured_matmul_flops"], peak["datasheet_flops"]
    result["peak"] = {
        "start": peak,
        "datasheet_flops": ctx.sheet,
        "note": "bf16 matmul peak measured at the start and the end of the run; MFU uses the larger"
    }
    for row in rows:
      result["rows"].append(run_row(ctx, row))
    end = matmul_peak("bfloat16", n)
    result["peak"]["end"] = end
    result["peak"]["measured_flops"] = max(ctx.peak, end["measured_matmul_flops"])
    _rescale_mfu(result, result["peak"]["measured_flops"])
  finally:
    if ctx.twin is not None:
      ctx.twin.stop()
    if not opts.work_dir:
      shutil.rmtree(work_dir, ignore_errors=True)
  result["summary"] = summary(result)
  result["machine_end"] = {"device_memory": speed.memory_stats()}
  result["wall_s"] = ctx.elapsed()
  return result


def _rescale_mfu(result: dict, peak: float):
  for row in result["rows"]:
    if row.get("achieved_flops") and peak:
      row["mfu_measured_peak"] = row["achieved_flops"] / peak


def summary(result: dict) -> dict:
  """Which correctness rows passed, which rows were skipped or failed, the fastest row, ours/HF ratios."""
  rows = result["rows"]
  correct = [r for r in rows if r["group"] == "correctness"]
  timed = {r["name"]: r for r in rows if r["group"] == "speed" and r["status"] == "ok"}
  ours = {k: v for k, v in timed.items() if k.startswith("speed_")}
  out = {
      "correctness_pass": [r["name"] for r in correct if r["status"] == "pass"],
      "correctness_fail": [r["name"] for r in correct if r["status"] in ("fail", "error")],
      "skipped": [r["name"] for r in rows if r["status"] == "skipped"],
      "errors": [r["name"] for r in rows if r["status"] == "error"]
  }
  if ours:
    fastest = max(ours, key=lambda k: ours[k]["tokens_per_s"])
    out["fastest"] = {
        "row": fastest,
        "tokens_per_s": ours[fastest]["tokens_per_s"],
        "mfu_measured_peak": ours[fastest].get("mfu_measured_peak"),
        "mfu_datasheet": ours[fastest].get("mfu_datasheet")
    }
  ratios = {}
  for hf_name, hf in timed.items():
    if not hf_name.startswith("hf_"):
      continue
    b = hf["batch"]
    same = ours.get(f"speed_b{b}_xla")
    if same:
      ratios[f"speed_b{b}_xla / {hf_name}"] = same["tokens_per_s"] / hf["tokens_per_s"]
    at_b = {k: v for k, v in ours.items() if v["batch"] == b}
    if at_b:
      best = max(at_b, key=lambda k: at_b[k]["tokens_per_s"])
      ratios[f"{best} / {hf_name}"] = at_b[best]["tokens_per_s"] / hf["tokens_per_s"]
  out["ours_over_hf_tokens_per_s"] = ratios
  return out


def write_outputs(result: dict, json_path: str) -> str:
  """Writes ``json_path`` and the Markdown table beside it; returns the Markdown's path."""
  os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
  write_json(result, json_path)
  md_path = os.path.splitext(json_path)[0] + ".md"
  with open(md_path, "w") as f:
    f.write(format_gpu_report(result) + "\n")
  return md_path
