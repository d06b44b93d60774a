"""The train-step suite: our step against Hugging Face's at the same shape, steps alternated.

One optimiser step of our ``train_step`` (LM objective, dropout on, AdamW with global-norm
clipping), built by ``gpt1_jax.state.setup`` and AOT-compiled with the state donated, as the
trainer runs it, next to the same step in Hugging Face's ``OpenAIGPTLMHeadModel``
(``hf_reference.py``) at the same shape, batch and optimiser. Each side is set up and warmed
up, then their timed steps alternate (ABBA) so both see the same machine: on a shared CPU a
load spike slows both sides instead of whichever ran then.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpt1_jax import config as config_lib
from gpt1_jax import perf, sharding
from gpt1_jax import state as state_lib
from gpt1_jax.bench.machine import RssPeak, device_memory_stats, load_average, log, median_time, on_cpu
from gpt1_jax.bench.options import Options, Shape
from gpt1_jax.bench.steps import OPTIMIZER, Runner, synthetic_lm_batches, throughput
from gpt1_jax.train import LMObjective, cross_entropy, make_optimizer, train_step

FLOP_FORMULA = ("model FLOPs per token (training) = 6*N + 12*n_layer*n_embd*T, N = n_layer*12*n_embd^2 "
                "(q/k/v, out, 2 MLP matrices) + vocab*n_embd (tied output layer); the full TxT attention "
                "matrix is counted (PaLM/nanoGPT convention); MFU = FLOPs/token * tokens/s / peak FLOP/s")

COMPARISON_NOTES = (
    "Both sides: same n_layer/n_embd/n_head/n_ctx, vocab, batch and sequence length, dropout 0.1 in train mode, "
    "fp32 weights, random next-token batches, a summed-then-averaged softmax cross-entropy over all positions, "
    "global-norm clipping at 1.0 then AdamW(2.5e-4, (0.9, 0.999), 1e-8, wd 0.01). Differences: ours decays only "
    "matrices (GPT-1's vector_l2=False), torch.optim.AdamW decays every tensor; the HF loss is F.cross_entropy on "
    "OpenAIGPTLMHeadModel's logits (its labels= path would add a shifted copy of the logits); on CPU both use "
    "all cores (XLA's thread pool; torch.set_num_threads). Step times are medians after warmup; ours is the "
    "AOT-compiled, state-donating step of gpt1_jax.loop, timed to block_until_ready of state and metrics.")


def single_device_mesh():
  return sharding.make_mesh(config_lib.Mesh(data=1), jax.devices()[:1])


def _optimizer(num_steps: int):
  return make_optimizer(config_lib.Train(**OPTIMIZER), num_steps)


def prepare_ours(shape: Shape, *, warmup: int, total_steps: int = 100, breakdown: bool = False,
                 breakdown_reps: int = 3) -> Runner:
  """Our sharded, AOT-compiled, state-donating train step on one device (the trainer's ``state.setup``), warmed up."""
  cfg = shape.model
  mesh, rules = single_device_mesh(), sharding.DEFAULT_RULES
  objective = LMObjective(cfg)
  tx, schedule = _optimizer(total_steps)
  t_len = shape.seq_len
  setup = state_lib.setup(objective, tx, objective.batch_spec(t_len), shape.batch, mesh, rules)
  step_fn = functools.partial(train_step, objective=objective, tx=tx, schedule=schedule, seed=0)
  t = time.perf_counter()
  compiled = setup.compile(step_fn)
  compile_s = time.perf_counter() - t
  batches = [sharding.global_batch(b, mesh, rules, shape.batch) for b in synthetic_lm_batches(shape)]
  box = {}
  losses = []

  def step(i):
    t = time.perf_counter()
    box["state"], metrics = compiled(box["state"], batches[i % len(batches)])
    jax.block_until_ready((box["state"], metrics))
    dt = time.perf_counter() - t
    losses.append(float(metrics["loss"]))
    return dt

  with RssPeak() as rss:
    box["state"] = setup.create(seed=0)
    warmup_times = [step(i) for i in range(warmup)]

  def finish(times, peak, sheet_peak):
    if not all(math.isfinite(x) for x in losses):
      raise RuntimeError(f"{shape.name}: non-finite loss in the benchmark steps: {losses}")
    out = {
        "impl": "gpt1_jax",
        **throughput(shape, times, warmup_times, peak, sheet_peak), "compile_s": compile_s,
        "memory_compiled": perf.compiled_memory(compiled),
        "memory_rss_delta": rss.delta,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "params": cfg.num_params()
    }
    if not on_cpu():
      out["memory_device_peak"] = device_memory_stats().get("peak_bytes_in_use")
    if breakdown:
      state = box["state"]
      out["breakdown"] = step_breakdown(shape, objective, tx, state["params"], state["opt_state"], batches[0],
                                        reps=breakdown_reps, step_s=out["step_s"])
    box.clear()
    return out

  return Runner(step, finish, warmup_times, {"compile_s": compile_s, "compiled": compiled})


def step_breakdown(shape: Shape, objective, tx, params, opt_state, batch, *, reps: int, step_s: float) -> dict:
  """Times the parts of a step separately, each as its own jitted program.

  forward: the loss in train mode; forward+backward: its gradient; optimiser: clip +
  AdamW + apply on a gradient-shaped tree; output layer: the tied ``vocab x n_embd``
  projection and the float32 softmax cross-entropy alone, forward and backward, on the
  step's hidden-state shape.
  """
  cfg = shape.model
  rng = jax.random.key(1)
  loss = lambda p, b: objective.loss_sums(p, b, rng, deterministic=False)[0]  # noqa: E731
  fwd = jax.jit(loss)
  grad = jax.jit(jax.grad(loss))
  grads = grad(params, batch)

  def update(g, o, p):
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  opt = jax.jit(update)
  table = params["transformer"]["embed"]["tokens"]
  hidden = jax.random.normal(jax.random.key(2), (shape.batch, shape.seq_len, cfg.n_embd), cfg.dtype)
  targets = batch["targets"]

  def head(h, w):
    logits = jnp.einsum("btd,vd->btv", h, w.astype(cfg.dtype))[..., :cfg.vocab_size]
    return jnp.sum(cross_entropy(logits, targets))

  head_fwd = jax.jit(head)
  head_grad = jax.jit(jax.grad(head, argnums=(0, 1)))
  parts = {
      "forward": lambda: fwd(params, batch),
      "forward_backward": lambda: grad(params, batch),
      "optimizer": lambda: opt(grads, opt_state, params),
      "output_layer_forward": lambda: head_fwd(hidden, table),
      "output_layer_forward_backward": lambda: head_grad(hidden, table),
  }
  out = {}
  for name, fn in parts.items():
    out[f"{name}_s"] = median_time(fn, reps)[0]
  out["step_s"] = step_s
  out["output_layer_share_of_forward_backward"] = out["output_layer_forward_backward_s"] / out["forward_backward_s"]
  out["output_layer_share_of_step"] = out["output_layer_forward_backward_s"] / step_s
  out["optimizer_share_of_step"] = out["optimizer_s"] / step_s
  out["output_layer_flop_share"] = 6 * cfg.vocab_size * cfg.n_embd / perf.flops_per_token(cfg, shape.seq_len)
  out["output_layer_logits_bytes"] = shape.batch * shape.seq_len * cfg.padded_vocab_size * 4
  return out


def load_hf_reference(device: str):
  """``(hf_reference module, None)``, or ``(None, why not)`` where torch/transformers are missing or lack CUDA."""
  try:
    from gpt1_jax.bench import hf_reference  # torch and transformers: imported only when the twin runs
  except ImportError as e:
    return None, f"torch/transformers not importable ({e})"
  why = hf_reference.unavailable(device)
  return (None, why) if why else (hf_reference, None)


def train_suite(opts: Options, sheet_peak: Optional[float]) -> list[dict]:
  """Per shape: both steps set up and warmed up, then their timed steps alternated (ABBA order).

  The matmul peak is measured just before and just after the timed steps; MFU uses the
  larger (the conservative choice on a machine whose load varies).
  """
  cpu = on_cpu()
  hf_reference, why_not_hf = load_hf_reference("cpu" if cpu else "cuda") if opts.hf else (None, "--hf=False")
  rows = []
  for shape in opts.shapes:
    log(f"train {shape.describe()}")
    row = {
        "shape": shape.name,
        "description": shape.describe(),
        "model": dataclasses.asdict(shape.model),
        "batch": shape.batch,
        "seq_len": shape.seq_len,
        "tokens_per_step": shape.batch * shape.seq_len,
        "load_average_before": load_average()
    }
    runners = {
        "ours": prepare_ours(shape, warmup=opts.warmup, total_steps=opts.warmup + opts.steps, breakdown=opts.breakdown)
    }
    if hf_reference is not None:
      runners["hf"] = hf_reference.prepare_hf(shape, warmup=opts.warmup, dtype=opts.dtype, threads=opts.hf_threads or
                                              None)
    elif opts.hf:
      row["hf_skipped"] = why_not_hf
    before = perf.measure_matmul_peak(opts.dtype, n=opts.peak_n)
    order = list(runners.values())
    for i in range(opts.steps):
      for runner in (order if i % 2 == 0 else order[::-1]):
        runner.step()
    after = perf.measure_matmul_peak(opts.dtype, n=opts.peak_n)
    peak = max(before, after)
    row["peak_measured_before_after"] = [before, after]
    row["peak_for_mfu"] = peak
    row["interleaved"] = len(runners) > 1
    for name, runner in runners.items():
      row[name] = runner.finish(peak, sheet_peak)
    if "hf" in row:
      row.update(speed_ratios(row["ours"]["step_times_s"], row["hf"]["step_times_s"]))
    row["load_average_after"] = load_average()
    rows.append(row)
  return rows


def speed_ratios(ours: list, hf: list) -> dict:
  """Ours/HF throughput three ways, from step times taken in alternation (round i: one step each).

  On a shared machine another tenant's load only ever *adds* time, and it comes in bursts
  that can land on a few steps of one side. So besides the ratio of medians
  (``ours_over_hf``) we report the median of the per-round ratios (both steps of a round
  saw nearly the same load) with its quartiles, and the ratio of the fastest steps (the
  least disturbed estimate of each side's own cost, as ``timeit`` advises).
  """
  if len(ours) != len(hf) or not ours:
    raise ValueError(f"paired step times must have the same, non-zero length (got {len(ours)} and {len(hf)})")
  paired = sorted(h / o for o, h in zip(ours, hf))
  q = lambda f: float(np.quantile(paired, f))  # noqa: E731
  return {
      "ours_over_hf": statistics.median(hf) / statistics.median(ours),
      "ours_over_hf_paired": q(0.5),
      "ours_over_hf_paired_quartiles": [q(0.25), q(0.75)],
      "ours_over_hf_fastest": min(hf) / min(ours)
  }
