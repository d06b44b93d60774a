"""The GPU check's speed rows: our train step of GPT-1 117M in its variants, and Hugging Face's in a subprocess.

Ours: the AOT-compiled, state-donating step (``train.prepare_ours``, built by ``state.setup`` as
the trainer builds it) at n_ctx 512 in bf16 compute with f32 master weights; the median of the
timed steps, tokens/s, XLA's memory plan and MFU. Whenever a row is the fastest so far, a few
more steps run under the profiler, so the check can summarise the fastest configuration's trace
without compiling it again. Hugging Face's ``OpenAIGPTLMHeadModel`` (torch bf16 autocast, eager
or ``torch.compile``) runs in a process of its own (``python -m gpt1_jax.bench.hf_reference``).
Each function takes the check's context (``gpu_check.Context``) and returns the row's figures.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from gpt1_jax.bench import profile as profile_lib
from gpt1_jax.bench.machine import device_memory_stats
from gpt1_jax.bench.options import REPO, Shape
from gpt1_jax.bench.train import prepare_ours
from gpt1_jax.model import ModelConfig

GPT1_DROPOUT = "GPT-1 dropout (attn 0.1)"
# (name suffix, title, ModelConfig overrides, batch: "main" / "small" / "large", needs a GPU)
VARIANTS = (
    ("xla", f"XLA attention, {GPT1_DROPOUT}", {}, "main", False),
    ("cudnn", "cuDNN fused attention (attn dropout off)", {
        "attention": "cudnn",
        "attn_pdrop": 0.0
    }, "main", True),
    ("xla_no_attn_dropout", "XLA attention, attn dropout off", {
        "attn_pdrop": 0.0
    }, "main", False),
    ("xla_scan", f"XLA attention, {GPT1_DROPOUT}, scan_layers", {
        "scan_layers": True
    }, "main", False),
    ("xla_small", f"XLA attention, {GPT1_DROPOUT}", {}, "small", False),
    ("xla_large", f"XLA attention, {GPT1_DROPOUT}", {}, "large", False),
    ("cudnn_scan_large", "cuDNN attention, scan_layers", {
        "attention": "cudnn",
        "attn_pdrop": 0.0,
        "scan_layers": True
    }, "large", True),
    ("xla_remat", f"XLA attention, {GPT1_DROPOUT}, remat=full", {
        "remat": "full"
    }, "main", False),
    ("dot_product", "jax.nn.dot_product_attention (XLA's choice, attn dropout off)", {
        "attention": "dot_product",
        "attn_pdrop": 0.0
    }, "main", False),
)


class SubprocessTimeout(TimeoutError):
  pass


def speed_model(quick: bool, **kw) -> ModelConfig:
  """GPT-1 117M (vocab padded to 128 for the tensor cores) in bf16 compute, f32 weights; quick: 2 x 64 wide."""
  if quick:
    return ModelConfig(vocab_size=512, n_ctx=64, n_embd=64, n_head=4, n_layer=2, dtype="bfloat16", **kw)
  return ModelConfig(dtype="bfloat16", vocab_pad_multiple=128, **kw)


def memory_stats() -> dict:
  stats = device_memory_stats()
  return {k: stats[k] for k in ("peak_bytes_in_use", "bytes_limit", "bytes_in_use") if k in stats}


def ours(ctx, name: str, batch: int, overrides: dict) -> dict:
  """One configuration of our step: set up, warmed up, timed; traced too if it is the fastest so far."""
  shape = Shape(name, speed_model(ctx.quick, **overrides), batch, ctx.seq_len, "quick" if ctx.quick else "GPT-1 117M")
  t = time.perf_counter()
  runner = prepare_ours(shape, warmup=ctx.opts.warmup, total_steps=ctx.opts.warmup + ctx.opts.steps)
  setup_s = time.perf_counter() - t
  for _ in range(ctx.opts.steps):
    runner.step()
  step_s = statistics.median(runner.times)
  tokens_per_s = batch * ctx.seq_len / step_s
  traced, trace_error = ctx.best is None or tokens_per_s > ctx.best[0], None
  if traced:
    trace_dir = os.path.join(ctx.work_dir, f"profile_{name}")
    try:  # a profiler that cannot start (no CUPTI) costs the profile row, not this row's timings
      profile_lib.trace(trace_dir, lambda: [runner.step(record=False) for _ in range(ctx.opts.profile_steps)])
    except Exception as e:  # noqa: BLE001
      traced, trace_error = False, f"{type(e).__name__}: {e}"[:500]
    else:
      if ctx.best is not None:
        shutil.rmtree(ctx.best[2], ignore_errors=True)
      ctx.best = (tokens_per_s, name, trace_dir, step_s)
  cost = profile_lib.cost_analysis(runner.info["compiled"])
  out = runner.finish(ctx.peak, ctx.sheet)
  out.update(status="ok", description=shape.describe(), batch=batch, seq_len=ctx.seq_len, setup_s=setup_s,
             compile_s=runner.info["compile_s"], xla_cost=cost, traced=traced, tokens_per_step=batch * ctx.seq_len,
             device_memory=memory_stats())
  if trace_error:
    out["trace_error"] = trace_error
  ctx.compile_s[bool(overrides.get("scan_layers"))] = setup_s
  ctx.ours[name] = out
  return out


def hugging_face(ctx, batch: int, *, compile: bool, timeout: float) -> dict:
  """Hugging Face's step at our shape (GPT-1's dropout everywhere, as its model applies it), in a subprocess."""
  cfg = speed_model(ctx.quick)
  tag = f"hf_b{batch}_{'compile' if compile else 'eager'}"
  spec = {
      "name": tag,
      "model": dataclasses.asdict(cfg),
      "batch": batch,
      "seq_len": ctx.seq_len,
      "warmup": ctx.opts.warmup + (1 if compile else 0),
      "steps": ctx.opts.steps,
      "dtype": "bfloat16",
      "autocast": True,
      "compile": compile,
      "device": "cpu" if ctx.cpu else "cuda",
      "peak": ctx.peak,
      "sheet_peak": ctx.sheet
  }
  spec_path, out_path = (os.path.join(ctx.work_dir, f"{tag}{ext}") for ext in (".spec.json", ".json"))
  with open(spec_path, "w") as f:
    json.dump(spec, f)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"  # the subprocess is torch's: JAX there must not touch the GPU
  try:
    r = subprocess.run([sys.executable, "-m", "gpt1_jax.bench.hf_reference", spec_path, out_path], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=max(timeout, 1.0))
  except subprocess.TimeoutExpired:
    raise SubprocessTimeout(f"Hugging Face's subprocess did not finish in {timeout:.0f} s (the rest of the "
                            f"budget)") from None
  if r.returncode != 0:
    raise RuntimeError(f"Hugging Face's subprocess exited with {r.returncode}: {(r.stderr or r.stdout)[-1500:]}")
  with open(out_path) as f:
    out = json.load(f)
  out.update(status="ok", batch=batch, seq_len=ctx.seq_len, tokens_per_step=batch * ctx.seq_len)
  return out
