"""Benchmarks: the train step against Hugging Face, the input pipelines, the tokenizer, inference.

    python -m gpt1_jax.bench                                   # everything, CPU-sized (~5 min on 2 cores)
    python -m gpt1_jax.bench --suite=train --shape=tiny --steps=10
    python -m gpt1_jax.bench --shape=gpt1 --dtype=bfloat16 --attention=cudnn --batch=16   # one GPU

Prints a table and writes ``--out`` (JSON): the machine (CPU model, cores, device kind), the
library versions, the date, the command and every figure.

* **train**: one optimiser step of our ``train_step`` (LM objective, dropout on, AdamW with
  global-norm clipping) at the ``tiny`` demo shape and at GPT-1's width, next to the same
  step in Hugging Face's ``OpenAIGPTLMHeadModel`` (torch) at the same shape, batch and
  optimiser. Step time is the median of ``--steps`` steps after ``--warmup``. MFU is model
  FLOPs (:func:`gpt1_jax.perf.flops_per_token`) per second over a matmul peak measured in
  the same run (and, on GPU/TPU, over the datasheet peak too). On CPU the GPT-1 width runs
  with ``--layers_cpu`` blocks so a step takes seconds, not a minute.
* **pipeline**: tokens/s the LM pipeline (packed 512-token windows, batch 64) and a
  fine-tuning pipeline (SST-2, the tiny fine-tuning shape) deliver, as a multiple of what
  the train step consumes.
* **tokenizer**: ``GPT1Tokenizer.encode_batch`` (fresh instance, cold memo) against Hugging
  Face's ``OpenAIGPTTokenizer`` on the sentences of ``data/sst2/unlabelled.txt``.
* **inference**: a classification forward (``GPT1ForTask``) and KV-cache sampling.

Nothing here asserts a speed: ``BENCHMARKS.md`` records a run and the project's targets.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.util
import json
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SST2_DIR = os.path.join(REPO, "data", "sst2")
CORPUS = os.path.join(SST2_DIR, "unlabelled.txt")
SUITES = ("train", "pipeline", "tokenizer", "inference")

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

# GPT-1's optimiser (Section 4.1) without the schedule, which costs nothing to evaluate:
# the same update Hugging Face's side runs with torch.optim.AdamW + clip_grad_norm_.
OPTIMIZER = dict(learning_rate=2.5e-4, warmup_steps=0, warmup_fraction=0.0, schedule="constant", b1=0.9,
                 b2=0.999, eps=1e-8, weight_decay=0.01, grad_clip=1.0)


# ----------------------------------------------------------------------------
# Shapes and options.

@dataclasses.dataclass(frozen=True)
class Shape:
  """One model configuration at one batch shape."""

  name: str
  model: Any  # gpt1_jax.model.ModelConfig
  batch: int
  seq_len: int
  note: str = ""

  def describe(self) -> str:
    m = self.model
    return (f"{self.name}: n_layer={m.n_layer} n_embd={m.n_embd} n_head={m.n_head} T={self.seq_len} "
            f"batch={self.batch} vocab={m.vocab_size} (padded {m.padded_vocab_size}) {m.dtype} dropout "
            f"{m.embd_pdrop}/{m.attn_pdrop}/{m.resid_pdrop} (embd/attn/resid) attention={m.attention}"
            + (f"; {self.note}" if self.note else ""))


@dataclasses.dataclass
class Options:
  """Everything a run measures and at what size (the flags map onto these; tests shrink them)."""

  suites: tuple = SUITES
  shapes: tuple = ()  # of Shape; the train suite's shapes
  steps: int = 5
  warmup: int = 2
  hf: bool = True  # run the Hugging Face twin of each train shape
  hf_threads: int = 0  # torch.set_num_threads (0: every core)
  breakdown: bool = True  # time forward / backward / optimiser / output layer of our step
  peak_n: Optional[int] = None  # matmul size for the measured peak (None: perf's default)
  dtype: str = "float32"
  corpus: str = CORPUS
  tokenizer_lines: int = 0  # 0: every line of the corpus
  lm_batch: int = 64
  lm_seq_len: int = 512
  pipeline_seconds: float = 3.0  # each pipeline is drained for about this long
  task_dir: str = SST2_DIR
  task_batch: int = 32
  task_max_len: int = 64  # the tiny fine-tuning configs' task.max_len (= model.n_ctx)
  inference_model: Any = None  # ModelConfig; None: the tiny config
  classify_batch: int = 64
  generate_batch: int = 8
  prompt_len: int = 8
  new_tokens: int = 32
  inference_reps: int = 5


def load_config(name: str, arg: str):
  """``configs/NAME.py:ARG``, loaded by path as ``--config=configs/NAME.py:ARG`` would."""
  path = os.path.join(REPO, "configs", f"{name}.py")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: the benchmark reads model shapes from the repository's configs/")
  spec = importlib.util.spec_from_file_location(f"_bench_cfg_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tiny_model(dtype: str = "float32"):
  from gpt1_jax.loop import model_config
  return model_config(load_config("pretrain", "tiny")).replace(dtype=dtype)


def make_shapes(which: str, *, on_cpu: bool, layers_cpu: int, batch: int, dtype: str, attention: str,
                vocab_pad: int) -> tuple:
  """The train suite's shapes: ``tiny`` (the demo: its config's batch x 64) and/or ``gpt1`` (GPT-1's width)."""
  from gpt1_jax.model import ModelConfig
  fast_attn = {} if attention == "xla" else {"attention": attention, "attn_pdrop": 0.0}
  shapes = []
  if which in ("tiny", "both"):
    from gpt1_jax.loop import model_config
    tiny = load_config("pretrain", "tiny")
    m = model_config(tiny).replace(dtype=dtype, **fast_attn)
    b = int(tiny.train.batch_size)
    shapes.append(Shape("tiny", m, b, m.n_ctx, f"configs/pretrain.py:tiny, its batch {b}"))
  if which in ("gpt1", "both"):
    m = ModelConfig(dtype=dtype, vocab_pad_multiple=vocab_pad or (1 if on_cpu else 128), **fast_attn)
    note = "GPT-1 as released"
    if on_cpu:
      m = m.replace(n_layer=layers_cpu)
      note = f"GPT-1's width with {layers_cpu} of its 12 blocks (CPU)"
    shapes.append(Shape("gpt1", m, batch or (2 if on_cpu else 16), m.n_ctx, note))
  if not shapes:
    raise ValueError(f"--shape={which!r}: expected tiny, gpt1 or both")
  return tuple(shapes)


# ----------------------------------------------------------------------------
# Measurement helpers.

def _median_time(fn: Callable[[], Any], reps: int, warmup: int = 1) -> tuple[float, list[float]]:
  import jax
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times), times


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssPeak:
  """Peak resident memory over a block, sampled every ``interval`` s (Linux), minus the RSS at entry.

  ``getrusage``'s max RSS is a high-water mark of the whole process, so after an earlier,
  larger benchmark its delta reads 0; sampling sees this block's own peak.
  """

  def __init__(self, interval: float = 0.005):
    self.interval = interval
    self.start = self.peak = 0
    self._stop = threading.Event()

  def __enter__(self):
    self.start = self.peak = _rss_bytes()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()
    return self

  def _run(self):
    while not self._stop.wait(self.interval):
      self.peak = max(self.peak, _rss_bytes())

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, _rss_bytes())

  @property
  def delta(self) -> int:
    return self.peak - self.start


_T0 = time.perf_counter()


def log(msg: str):
  print(f"[bench {time.perf_counter() - _T0:6.1f}s] {msg}", flush=True)


def load_average() -> list[float]:
  try:
    return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
  except OSError:
    return []


def cpu_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def machine_info() -> dict:
  import jax
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  dev = jax.devices()[0]
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      thp = f.read().strip()
  except OSError:
    thp = None
  # Settings that move CPU step times by tens of percent (see BENCHMARKS.md): recorded, never changed.
  env = {k: os.environ.get(k) for k in ("GLIBC_TUNABLES", "XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                        "TOKENIZERS_PARALLELISM", "LD_PRELOAD", "JAX_PLATFORMS")}
  return {"cpu_model": model, "cpu_cores": cpu_cores(), "platform": dev.platform, "device_kind": dev.device_kind,
          "device_count": jax.device_count(), "hostname": platform.node(), "os": platform.platform(),
          "transparent_hugepage": thp, "env": {k: v for k, v in env.items() if v is not None}}


def versions() -> dict:
  import importlib.metadata as md
  out = {"python": platform.python_version()}
  for name, dist in (("jax", "jax"), ("jaxlib", "jaxlib"), ("flax", "flax"), ("optax", "optax"), ("torch", "torch"),
                     ("transformers", "transformers"), ("tensorflow", "tensorflow"), ("tokenizers", "tokenizers"),
                     ("spacy", "spacy"), ("numpy", "numpy")):
    try:
      out[name] = md.version(dist)
    except md.PackageNotFoundError:
      try:
        out[name] = md.version(f"{dist}-cpu")
      except md.PackageNotFoundError:
        out[name] = None
  return out


# ----------------------------------------------------------------------------
# 1. The train step: ours.

def _single_device_mesh():
  import jax
  import ml_collections
  from gpt1_jax import sharding
  return sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1])


def _optimizer(num_steps: int):
  import ml_collections
  from gpt1_jax.train import make_optimizer
  return make_optimizer(ml_collections.ConfigDict(OPTIMIZER), num_steps)


def synthetic_lm_batches(shape: Shape, count: int = 2, seed: int = 0) -> list[dict]:
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    x = rng.integers(0, shape.model.vocab_size, (shape.batch, shape.seq_len + 1), dtype=np.int32)
    out.append({"inputs": x[:, :-1], "targets": x[:, 1:], "loss_mask": np.ones((shape.batch, shape.seq_len),
                                                                                np.float32)})
  return out


def _compiled_memory(compiled) -> dict:
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend reports it
    m = None
  if m is None:
    return {}
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  return {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
          "aliased": int(m.alias_size_in_bytes), "temporaries": int(m.temp_size_in_bytes), "total": int(total)}


class Runner:
  """One implementation's train step, set up and warmed up, stepped one timed step at a time.

  Splitting setup from the timed steps lets the suite alternate our steps with Hugging
  Face's, so both see the same machine: on a shared CPU a load spike then slows both
  sides instead of whichever happened to be running.
  """

  def __init__(self, step: Callable[[int], float], finish: Callable[[list, Optional[float], Optional[float]], dict],
               warmup_times: list):
    self._step, self._finish, self.warmup_times, self.times = step, finish, warmup_times, []

  def step(self) -> float:
    t = self._step(len(self.warmup_times) + len(self.times))
    self.times.append(t)
    return t

  def finish(self, peak: Optional[float], sheet_peak: Optional[float] = None) -> dict:
    return self._finish(self.times, peak, sheet_peak)


def _throughput(shape: Shape, times: list, warmup_times: list, peak, sheet_peak) -> dict:
  from gpt1_jax import perf
  step_s = statistics.median(times)
  tokens = shape.batch * shape.seq_len
  fpt = perf.flops_per_token(shape.model, shape.seq_len)
  return {"step_s": step_s, "step_times_s": list(times), "warmup_times_s": list(warmup_times),
          "tokens_per_s": tokens / step_s, "flops_per_token": fpt, "achieved_flops": fpt * tokens / step_s,
          "mfu_measured_peak": fpt * tokens / step_s / peak if peak else None,
          "mfu_datasheet": fpt * tokens / step_s / sheet_peak if sheet_peak else None}


def prepare_ours(shape: Shape, *, warmup: int, total_steps: int = 100, breakdown: bool = False,
                 breakdown_reps: int = 3) -> Runner:
  """Our sharded, AOT-compiled, state-donating train step on one device (loop.py's path), warmed up."""
  import jax
  from gpt1_jax import loop, sharding
  from gpt1_jax.train import LMObjective, abstract_with_shardings, train_step

  cfg = shape.model
  mesh, rules = _single_device_mesh(), sharding.DEFAULT_RULES
  objective = LMObjective(cfg)
  tx, schedule = _optimizer(total_steps)
  init_fn, abstract, shardings = loop.state_layout(objective, tx, objective.dummy_batch(1, min(8, shape.seq_len)),
                                                   mesh, rules)
  batch_sh = sharding.batch_sharding(mesh, rules, 2)
  abstract_batch = {k: jax.ShapeDtypeStruct((shape.batch, shape.seq_len), d, sharding=batch_sh)
                    for k, d in (("inputs", np.int32), ("targets", np.int32), ("loss_mask", np.float32))}
  step_fn = functools.partial(train_step, objective=objective, tx=tx, schedule=schedule, seed=0)
  t = time.perf_counter()
  compiled = loop.compile_train_step(step_fn, abstract_with_shardings(abstract, shardings), abstract_batch, mesh,
                                     rules)
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
    box["state"] = loop.create_state(init_fn, shardings, mesh, rules, seed=0)
    warmup_times = [step(i) for i in range(warmup)]

  def finish(times, peak, sheet_peak):
    if not all(math.isfinite(x) for x in losses):
      raise RuntimeError(f"{shape.name}: non-finite loss in the benchmark steps: {losses}")
    out = {"impl": "gpt1_jax", **_throughput(shape, times, warmup_times, peak, sheet_peak), "compile_s": compile_s,
           "memory_compiled": _compiled_memory(compiled), "memory_rss_delta": rss.delta,
           "loss_first": losses[0], "loss_last": losses[-1], "params": cfg.num_params()}
    if jax.devices()[0].platform != "cpu":
      stats = jax.devices()[0].memory_stats() or {}
      out["memory_device_peak"] = stats.get("peak_bytes_in_use")
    if breakdown:
      state = box["state"]
      out["breakdown"] = step_breakdown(shape, objective, tx, state["params"], state["opt_state"], batches[0],
                                        reps=breakdown_reps, step_s=out["step_s"])
    box.clear()
    return out

  return Runner(step, finish, warmup_times)


def train_ours(shape: Shape, *, steps: int, warmup: int, peak: Optional[float], sheet_peak: Optional[float] = None,
               breakdown: bool = False, breakdown_reps: int = 3) -> dict:
  """Our train step alone: ``warmup`` untimed steps, then the median of ``steps``."""
  runner = prepare_ours(shape, warmup=warmup, total_steps=warmup + steps, breakdown=breakdown,
                        breakdown_reps=breakdown_reps)
  for _ in range(steps):
    runner.step()
  return runner.finish(peak, sheet_peak)


def step_breakdown(shape: Shape, objective, tx, params, opt_state, batch, *, reps: int, step_s: float) -> dict:
  """Times the parts of a step separately, each as its own jitted program.

  forward: the loss in train mode; forward+backward: its gradient; optimiser: clip +
  AdamW + apply on a gradient-shaped tree; output layer: the tied ``vocab x n_embd``
  projection and the float32 softmax cross-entropy alone, forward and backward, on the
  step's hidden-state shape.
  """
  import jax
  import jax.numpy as jnp
  import optax
  from gpt1_jax import perf
  from gpt1_jax.train import cross_entropy

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
    out[f"{name}_s"] = _median_time(fn, reps)[0]
  out["step_s"] = step_s
  out["output_layer_share_of_forward_backward"] = out["output_layer_forward_backward_s"] / out["forward_backward_s"]
  out["output_layer_share_of_step"] = out["output_layer_forward_backward_s"] / step_s
  out["optimizer_share_of_step"] = out["optimizer_s"] / step_s
  out["output_layer_flop_share"] = 6 * cfg.vocab_size * cfg.n_embd / perf.flops_per_token(cfg, shape.seq_len)
  out["output_layer_logits_bytes"] = shape.batch * shape.seq_len * cfg.padded_vocab_size * 4
  return out


# ----------------------------------------------------------------------------
# 1b. The same step in Hugging Face transformers (torch).

def prepare_hf(shape: Shape, *, warmup: int, threads: Optional[int] = None, device: Optional[str] = None,
               dtype: str = "float32") -> Runner:
  """``OpenAIGPTLMHeadModel`` at the same shape, dropout as configured, AdamW + ``clip_grad_norm_(1.0)``, warmed up.

  The loss is ``F.cross_entropy`` of the model's logits against the same next-token
  targets as ours (the leanest use of the model: passing ``labels=`` would add HF's
  shift-and-pad copy of the logits).
  """
  import torch
  import torch.nn.functional as F
  from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

  cfg = shape.model
  threads = threads or cpu_cores()
  torch.set_num_threads(threads)
  device = device or ("cuda" if torch.cuda.is_available() else "cpu")
  torch.manual_seed(0)
  hf_cfg = OpenAIGPTConfig(vocab_size=cfg.vocab_size, n_positions=cfg.n_ctx, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                           n_head=cfg.n_head, afn="gelu",  # OpenAI-GPT's "gelu" is the tanh form, as GPT-1's
                           resid_pdrop=cfg.resid_pdrop, embd_pdrop=cfg.embd_pdrop, attn_pdrop=cfg.attn_pdrop,
                           layer_norm_epsilon=cfg.layer_norm_epsilon, initializer_range=cfg.initializer_range)
  autocast = device == "cuda" and dtype == "bfloat16"
  batches = [{k: torch.from_numpy(v).long().to(device) for k, v in b.items() if k != "loss_mask"}
             for b in synthetic_lm_batches(shape)]
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  box, losses = {}, []

  def step(i):
    model, opt = box["model"], box["opt"]
    b = batches[i % len(batches)]
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
      logits = model(input_ids=b["inputs"]).logits
    loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), b["targets"].view(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIMIZER["grad_clip"])
    opt.step()
    losses.append(loss.item())  # synchronises
    return time.perf_counter() - t

  with RssPeak() as rss:
    model = box["model"] = OpenAIGPTLMHeadModel(hf_cfg).to(device).train()
    box["opt"] = torch.optim.AdamW(model.parameters(), lr=OPTIMIZER["learning_rate"],
                                   betas=(OPTIMIZER["b1"], OPTIMIZER["b2"]), eps=OPTIMIZER["eps"],
                                   weight_decay=OPTIMIZER["weight_decay"])
    warmup_times = [step(i) for i in range(warmup)]
  info = {"impl": "transformers.OpenAIGPTLMHeadModel", "device": device, "threads": threads,
          "attn_implementation": getattr(model.config, "_attn_implementation", None),
          "tied_lm_head": model.lm_head.weight.data_ptr() == model.transformer.tokens_embed.weight.data_ptr(),
          "autocast_bf16": autocast, "params": sum(p.numel() for p in model.parameters())}
  del model

  def finish(times, peak, sheet_peak):
    if not all(math.isfinite(x) for x in losses):
      raise RuntimeError(f"{shape.name}: Hugging Face's loss is not finite: {losses}")
    out = {**info, **_throughput(shape, times, warmup_times, peak if device == "cpu" else None, None),
           "memory_rss_delta": rss.delta, "loss_first": losses[0], "loss_last": losses[-1]}
    if device == "cuda":
      out["memory_device_peak"] = torch.cuda.max_memory_allocated()
    box.clear()
    return out

  return Runner(step, finish, warmup_times)


def train_hf(shape: Shape, *, steps: int, warmup: int, peak: Optional[float], threads: Optional[int] = None,
             device: Optional[str] = None, dtype: str = "float32") -> dict:
  """Hugging Face's train step alone: ``warmup`` untimed steps, then the median of ``steps``."""
  runner = prepare_hf(shape, warmup=warmup, threads=threads, device=device, dtype=dtype)
  for _ in range(steps):
    runner.step()
  return runner.finish(peak)


def train_suite(opts: Options, sheet_peak: Optional[float]) -> list[dict]:
  """Per shape: both steps set up and warmed up, then their timed steps alternated (ABBA order).

  The matmul peak is measured just before and just after the timed steps; MFU uses the
  larger (the conservative choice on a machine whose load varies).
  """
  import jax
  from gpt1_jax import perf
  on_cpu = jax.devices()[0].platform == "cpu"
  torch_ok = False
  if opts.hf:
    try:
      import torch
      torch_ok = on_cpu or torch.cuda.is_available()
    except ImportError:
      torch_ok = False
  rows = []
  for shape in opts.shapes:
    log(f"train {shape.describe()}")
    row = {"shape": shape.name, "description": shape.describe(), "model": dataclasses.asdict(shape.model),
           "batch": shape.batch, "seq_len": shape.seq_len, "tokens_per_step": shape.batch * shape.seq_len,
           "load_average_before": load_average()}
    runners = {"ours": prepare_ours(shape, warmup=opts.warmup, total_steps=opts.warmup + opts.steps,
                                    breakdown=opts.breakdown)}
    if torch_ok:
      runners["hf"] = prepare_hf(shape, warmup=opts.warmup, dtype=opts.dtype, threads=opts.hf_threads or None)
    elif opts.hf:
      row["hf_skipped"] = "torch cannot run on this accelerator (no CUDA build), so no like-for-like comparison"
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
  return {"ours_over_hf": statistics.median(hf) / statistics.median(ours),
          "ours_over_hf_paired": q(0.5), "ours_over_hf_paired_quartiles": [q(0.25), q(0.75)],
          "ours_over_hf_fastest": min(hf) / min(ours)}


# ----------------------------------------------------------------------------
# 3. Input pipelines.

def corpus_lines(path: str, limit: int = 0) -> list[str]:
  with open(path, encoding="utf-8") as f:
    lines = [line.rstrip("\n") for line in f if line.strip()]
  return lines[:limit] if limit else lines


def _drain(iterator, seconds: float, min_batches: int = 5, warmup: int = 3, each: Optional[Callable] = None):
  """(batches, seconds) drained from ``iterator`` for about ``seconds`` after ``warmup`` batches."""
  for _ in range(warmup):
    b = next(iterator)
    if each is not None:
      each(b)
  n, t0 = 0, time.perf_counter()
  while n < min_batches or time.perf_counter() - t0 < seconds:
    b = next(iterator)
    if each is not None:
      each(b)
    n += 1
  return n, time.perf_counter() - t0


def lm_pipeline(ids: list[list[int]], *, batch: int, seq_len: int, seconds: float) -> dict:
  """Packed LM windows (``LMData``) over a stream built in memory, each document after ``_start_``."""
  import jax
  from gpt1_jax import sharding
  from gpt1_jax.data import lm, pipeline
  from gpt1_jax.tokenizer import GPT1Tokenizer

  start = GPT1Tokenizer().start_id
  stream = np.fromiter((t for doc in ids for t in (start, *doc)), lm.TOKEN_DTYPE)
  data = lm.LMData(stream, seq_len)
  mesh, rules = _single_device_mesh(), sharding.DEFAULT_RULES
  it = data.train_batches(pipeline.Rows(batch), seed=0)
  # Delivered as the loop receives it: global device arrays.
  to_device = lambda b: jax.block_until_ready(sharding.global_batch(b, mesh, rules, batch))  # noqa: E731
  n, dt = _drain(it, seconds, each=to_device)
  return {"stream_tokens": int(stream.size), "windows": data.num_windows, "batch": batch, "seq_len": seq_len,
          "batches": n, "seconds": dt, "batches_per_s": n / dt, "tokens_per_s": n * batch * seq_len / dt}


def task_pipeline(task_dir: str, *, batch: int, max_len: int, seconds: float) -> dict:
  """SST-2 train split -> ``encode_examples`` (cold tokenizer) -> ``pipeline.train_dataset`` batches."""
  import jax
  from gpt1_jax import sharding
  from gpt1_jax.data import pipeline, tasks, transforms
  from gpt1_jax.tokenizer import GPT1Tokenizer

  task = tasks.get_task("sst2")
  t = time.perf_counter()
  examples = tasks.load_split(task, "train", task_dir).examples
  tok = transforms.memoized(GPT1Tokenizer())
  seq_len = transforms.fit_length(task, tok, examples, cap=max_len)
  arrays = transforms.encode_examples(task, examples, tok, seq_len)
  encode_s = time.perf_counter() - t
  keys = ("input_ids", "attention_mask", "cls_index", "choice_mask", "label")
  n_ex = len(examples)
  ds = pipeline.train_dataset(pipeline.gather_fetch({k: arrays[k] for k in keys}), n_ex, pipeline.Rows(batch),
                              seed=0)
  mesh, rules = _single_device_mesh(), sharding.DEFAULT_RULES
  to_device = lambda b: jax.block_until_ready(sharding.global_batch(b, mesh, rules, batch))  # noqa: E731
  n, dt = _drain(iter(ds.as_numpy_iterator()), seconds, each=to_device)
  per_batch = batch * arrays["input_ids"].shape[1] * seq_len
  return {"task": "sst2", "examples": n_ex, "seq_len": seq_len, "batch": batch, "encode_s": encode_s,
          "encode_examples_per_s": n_ex / encode_s, "batches": n, "seconds": dt, "batches_per_s": n / dt,
          "tokens_per_s": n * per_batch / dt}


def pipeline_suite(opts: Options, train_rows: list[dict], ids: Optional[list[list[int]]]) -> dict:
  t = time.perf_counter()
  if ids is None:
    from gpt1_jax.tokenizer import GPT1Tokenizer
    ids = GPT1Tokenizer().encode_batch(corpus_lines(opts.corpus, opts.tokenizer_lines))
  tokenise_s = time.perf_counter() - t
  log("LM pipeline")
  out = {"lm": lm_pipeline(ids, batch=opts.lm_batch, seq_len=opts.lm_seq_len, seconds=opts.pipeline_seconds)}
  out["lm"]["tokenise_corpus_s"] = tokenise_s
  log("fine-tuning pipeline")
  out["task"] = task_pipeline(opts.task_dir, batch=opts.task_batch, max_len=opts.task_max_len,
                              seconds=opts.pipeline_seconds)
  # What the train step eats, per shape, and how many times over each pipeline covers it.
  consumption = {r["shape"]: r["ours"]["tokens_per_s"] for r in train_rows}
  out["consumption_tokens_per_s"] = consumption
  for key in ("lm", "task"):
    out[key]["over_consumption"] = {s: out[key]["tokens_per_s"] / c for s, c in consumption.items()}
  return out


# ----------------------------------------------------------------------------
# 4. Tokenizer.

def hf_tokenizer():
  """Hugging Face's ``OpenAIGPTTokenizer`` on our packaged vocabulary and merges.

  transformers 5 ignores ``vocab_file=``/``merges_file=`` (silently giving a 1-token
  vocabulary); ``vocab=``/``merges=`` are the arguments it reads.
  """
  from transformers import OpenAIGPTTokenizer
  from gpt1_jax import tokenizer as tok_lib
  assets = os.path.join(os.path.dirname(os.path.abspath(tok_lib.__file__)), "assets")
  tok = OpenAIGPTTokenizer(vocab=os.path.join(assets, tok_lib.ENCODER_FILE),
                           merges=os.path.join(assets, tok_lib.MERGES_FILE))
  if tok.vocab_size != 40478:
    raise RuntimeError(f"Hugging Face's OpenAIGPTTokenizer loaded {tok.vocab_size} tokens, expected 40478: this "
                       f"transformers version reads the vocabulary through other arguments")
  return tok


def tokenizer_suite(opts: Options) -> tuple[dict, list[list[int]]]:
  from gpt1_jax.tokenizer import GPT1Tokenizer
  lines = corpus_lines(opts.corpus, opts.tokenizer_lines)
  chars = sum(map(len, lines))
  ours = GPT1Tokenizer()  # fresh: empty memos, spaCy not loaded yet
  t = time.perf_counter()
  ours.encode("a")  # setup (loading spaCy's rules), as constructing HF's tokenizer is setup
  setup_s = time.perf_counter() - t
  t = time.perf_counter()
  ids = ours.encode_batch(lines)  # cold memo
  cold_s = time.perf_counter() - t
  t = time.perf_counter()
  ours.encode_batch(lines)
  warm_s = time.perf_counter() - t
  n_ours = sum(map(len, ids))
  result = {"corpus": os.path.relpath(opts.corpus, REPO) if opts.corpus.startswith(REPO) else opts.corpus,
            "lines": len(lines), "chars": chars,
            "ours": {"impl": "gpt1_jax.tokenizer.GPT1Tokenizer.encode_batch (fresh instance)", "tokens": n_ours,
                     "setup_s": setup_s, "seconds": cold_s, "tokens_per_s": n_ours / cold_s,
                     "lines_per_s": len(lines) / cold_s, "tokens_per_s_with_setup": n_ours / (cold_s + setup_s),
                     "warm_seconds": warm_s, "warm_tokens_per_s": n_ours / warm_s}}
  try:
    import transformers  # noqa: F401
  except ImportError as e:
    result["hf_skipped"] = f"transformers not importable: {e}"
    return result, ids
  t = time.perf_counter()
  hf = hf_tokenizer()
  hf_setup_s = time.perf_counter() - t
  hf("a", add_special_tokens=False)
  t = time.perf_counter()
  hf_ids = hf(lines, add_special_tokens=False)["input_ids"]
  hf_s = time.perf_counter() - t
  n_hf = sum(map(len, hf_ids))
  result["hf"] = {"impl": f"transformers.{type(hf).__name__} (vocab=, merges=) batch call", "tokens": n_hf,
                  "setup_s": hf_setup_s, "seconds": hf_s, "tokens_per_s": n_hf / hf_s,
                  "lines_per_s": len(lines) / hf_s,
                  "vocab_size": hf.vocab_size,
                  "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "unset (Rust default: on)")}
  result["ours_over_hf"] = result["ours"]["tokens_per_s"] / result["hf"]["tokens_per_s"]
  result["identical_lines_fraction"] = sum(a == b for a, b in zip(ids, hf_ids)) / max(len(lines), 1)
  result["note"] = ("Hugging Face's tokenizer skips ftfy, GPT-1's text standardisation and spaCy (it splits on "
                    "whitespace and punctuation), so its ids differ from GPT-1's on some lines")
  return result, ids


# ----------------------------------------------------------------------------
# 5. Inference.

def classify_forward(cfg, *, batch: int, reps: int) -> dict:
  import jax
  import jax.numpy as jnp
  import flax.linen as nn
  from gpt1_jax.model import GPT1ForTask
  model = GPT1ForTask(cfg, "classification", 2)
  t = cfg.n_ctx
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, 1, t), dtype=np.int32))
  mask = jnp.ones((batch, 1, t), jnp.int32)
  cls = jnp.full((batch, 1), t - 1, jnp.int32)
  # Initialised under jit: op-by-op, each of init's primitives would compile on its own.
  params = jax.jit(lambda k: nn.meta.unbox(model.init(k, ids[:1], mask[:1], cls[:1])["params"]))(jax.random.key(0))
  fwd = jax.jit(lambda p, i, m, c: model.apply({"params": p}, i, m, c)[0])
  s, times = _median_time(lambda: fwd(params, ids, mask, cls), reps)
  return {"batch": batch, "seq_len": t, "step_s": s, "examples_per_s": batch / s, "tokens_per_s": batch * t / s}


def sampling(cfg, *, batch: int, prompt_len: int, new_tokens: int, reps: int) -> dict:
  import jax
  from gpt1_jax import generate
  from gpt1_jax.model import init_params
  params = jax.jit(functools.partial(init_params, cfg))(jax.random.key(0))
  rng = np.random.default_rng(0)
  prompts = rng.integers(0, cfg.vocab_size, (batch, prompt_len)).tolist()
  run = lambda: generate.generate(cfg, params, prompts, max_new_tokens=new_tokens, seed=0)  # noqa: E731
  t = time.perf_counter()
  out = run()  # compiles
  first_s = time.perf_counter() - t
  s, _ = _median_time(run, reps, warmup=0)
  n = sum(map(len, out))
  return {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "seconds": s,
          "first_call_s": first_s, "tokens_per_s": n / s, "ms_per_step": 1000 * s / new_tokens,
          "note": "one jitted prefill + while_loop decode with the KV cache; time includes the prefill"}


def inference_suite(opts: Options) -> dict:
  cfg = opts.inference_model or tiny_model(opts.dtype)
  log("inference")
  return {"model": dataclasses.asdict(cfg),
          "classify": classify_forward(cfg, batch=opts.classify_batch, reps=opts.inference_reps),
          "generate": sampling(cfg, batch=opts.generate_batch, prompt_len=opts.prompt_len,
                               new_tokens=opts.new_tokens, reps=max(1, opts.inference_reps // 2))}


# ----------------------------------------------------------------------------
# The run and its report.

def run(opts: Options, command: str = "") -> dict:
  import jax
  from gpt1_jax import perf
  unknown = set(opts.suites) - set(SUITES)
  if unknown:
    raise ValueError(f"unknown suites {sorted(unknown)}; choose from {SUITES}")
  t_start = time.perf_counter()
  result: dict[str, Any] = {
      "command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": machine_info(), "versions": versions(), "load_average_start": load_average(),
      "settings": {k: v for k, v in dataclasses.asdict(opts).items() if k not in ("shapes", "inference_model")},
      "optimizer": OPTIMIZER, "flop_formula": FLOP_FORMULA, "comparison_notes": COMPARISON_NOTES,
  }
  ids = None
  if "tokenizer" in opts.suites:
    log("tokenizer")
    load = load_average()
    result["tokenizer"], ids = tokenizer_suite(opts)
    result["tokenizer"]["load_average_before_after"] = [load, load_average()]
  rows = []
  if "train" in opts.suites:
    n = opts.peak_n or (8192 if jax.devices()[0].platform != "cpu" else 2048)
    sheet = perf.device_peak_flops(opts.dtype)
    result["peak"] = {"measured_matmul_flops": perf.measure_matmul_peak(opts.dtype, n=opts.peak_n),
                      "measured_matmul": f"{n}x{n} @ {n}x{n} {opts.dtype}, best of 5", "datasheet_flops": sheet,
                      "note": "measured at the start of the run; each train shape measures it again just before "
                              "and after its timed steps and its MFU uses the larger of those two"}
    rows = train_suite(opts, sheet)
    result["train"] = rows
  if "pipeline" in opts.suites:
    load = load_average()
    result["pipeline"] = pipeline_suite(opts, rows, ids)
    result["pipeline"]["load_average_before_after"] = [load, load_average()]
  if "inference" in opts.suites:
    load = load_average()
    result["inference"] = inference_suite(opts)
    result["inference"]["load_average_before_after"] = [load, load_average()]
  result["load_average_end"] = load_average()
  result["wall_s"] = time.perf_counter() - t_start
  result["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return result


def _si(x: Optional[float], unit: str = "") -> str:
  if x is None or not math.isfinite(x):
    return "-"
  for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= div:
      return f"{x / div:.2f} {prefix}{unit}"
  return f"{x:.3g} {unit}".rstrip()


def _pct(x: Optional[float]) -> str:
  return "-" if x is None else f"{100 * x:.1f}%"


def _mib(x: Optional[int]) -> str:
  return "-" if x is None else f"{x / 2 ** 20:.0f} MiB"


def format_report(r: dict) -> str:
  """Markdown tables of a run (also what BENCHMARKS.md quotes)."""
  m, v = r["machine"], r["versions"]
  lines = [f"# gpt1_jax benchmark, {r['date']}",
           f"command: `{r['command']}`",
           f"machine: {m['cpu_model']}, {m['cpu_cores']} cores, device {m['device_kind']} ({m['platform']}); "
           f"load average at start {r['load_average_start']}, at end {r['load_average_end']}; transparent hugepages "
           f"{m.get('transparent_hugepage')}; env {m.get('env') or '{}'}",
           "versions: " + ", ".join(f"{k} {x}" for k, x in v.items() if x), ""]
  if "train" in r:
    p = r["peak"]
    lines += [f"FLOPs: {r['flop_formula']}",
              f"peak: measured {_si(p['measured_matmul_flops'], 'FLOP/s')} at the start ({p['measured_matmul']}); "
              f"MFU below uses each shape's own, larger of before/after its steps"
              + (f", datasheet {_si(p['datasheet_flops'], 'FLOP/s')}" if p["datasheet_flops"] else ""), "",
              "| shape | impl | step (median) | fastest step | tokens/s | MFU (measured peak) | memory | ours/HF: "
              "medians, per-round median [quartiles], fastest steps |",
              "|---|---|---|---|---|---|---|---|"]
    for row in r["train"]:
      o = row["ours"]
      mem = f"{_mib(o['memory_compiled'].get('total'))} compiled, {_mib(o['memory_rss_delta'])} RSS"
      ratio = "-"
      if "hf" in row:
        lo, hi = row["ours_over_hf_paired_quartiles"]
        ratio = (f"**{row['ours_over_hf']:.2f}x**, {row['ours_over_hf_paired']:.2f}x [{lo:.2f}-{hi:.2f}], "
                 f"{row['ours_over_hf_fastest']:.2f}x")
      lines.append(f"| {row['shape']} | gpt1_jax | {o['step_s'] * 1e3:.0f} ms | {min(o['step_times_s']) * 1e3:.0f} ms | "
                   f"{o['tokens_per_s']:.0f} | "
                   f"{_pct(o['mfu_measured_peak'])} | {mem} | {ratio} |")
      if "hf" in row:
        h = row["hf"]
        mem_h = (f"{_mib(h['memory_device_peak'])} device peak" if "memory_device_peak" in h else
                 f"{_mib(h['memory_rss_delta'])} RSS")
        lines.append(f"| {row['shape']} | HF torch | {h['step_s'] * 1e3:.0f} ms | {min(h['step_times_s']) * 1e3:.0f} ms | "
                     f"{h['tokens_per_s']:.0f} | "
                     f"{_pct(h['mfu_measured_peak'])} | {mem_h} | |")
    lines.append("")
    for row in r["train"]:
      b, a = row["peak_measured_before_after"]
      lines.append(f"- {row['description']}; matmul peak just before / after its timed steps {_si(b, 'FLOP/s')} / "
                   f"{_si(a, 'FLOP/s')}" + ("; ours and HF steps alternated" if row["interleaved"] else ""))
    for row in r["train"]:
      b = row["ours"].get("breakdown")
      if b:
        lines.append(f"- {row['shape']} step parts (ms): forward {b['forward_s'] * 1e3:.0f}, forward+backward "
                     f"{b['forward_backward_s'] * 1e3:.0f}, optimiser {b['optimizer_s'] * 1e3:.0f}, output layer "
                     f"fwd {b['output_layer_forward_s'] * 1e3:.0f} / fwd+bwd "
                     f"{b['output_layer_forward_backward_s'] * 1e3:.0f} "
                     f"({_pct(b['output_layer_share_of_forward_backward'])} of forward+backward time, "
                     f"{_pct(b['output_layer_flop_share'])} of the FLOPs)")
    lines.append("")
  if "pipeline" in r:
    p = r["pipeline"]
    lines += ["| pipeline | delivered tokens/s | / train step consumption |", "|---|---|---|"]
    for key, label in (("lm", f"LM (LMData, {p['lm']['batch']} x {p['lm']['seq_len']})"),
                       ("task", f"fine-tuning (SST-2, {p['task']['batch']} x {p['task']['seq_len']})")):
      ratios = ", ".join(f"{x:.0f}x {s}" for s, x in p[key]["over_consumption"].items()) or "-"
      lines.append(f"| {label} | {_si(p[key]['tokens_per_s'])} | {ratios} |")
    lines += [f"- SST-2 encode_examples (cold tokenizer): {p['task']['encode_examples_per_s']:.0f} examples/s", ""]
  if "tokenizer" in r:
    t = r["tokenizer"]
    lines += [f"Tokenizer on {t['corpus']} ({t['lines']} lines, {t['chars']} chars):", "",
              "| tokenizer | tokens/s | seconds |", "|---|---|---|",
              f"| GPT1Tokenizer, cold memo | {_si(t['ours']['tokens_per_s'])} | {t['ours']['seconds']:.2f} "
              f"(+ {t['ours']['setup_s']:.2f} setup) |",
              f"| GPT1Tokenizer, warm memo | {_si(t['ours']['warm_tokens_per_s'])} | "
              f"{t['ours']['warm_seconds']:.2f} |"]
    if "hf" in t:
      lines += [f"| HF OpenAIGPTTokenizer | {_si(t['hf']['tokens_per_s'])} | {t['hf']['seconds']:.2f} "
                f"(+ {t['hf']['setup_s']:.2f} setup) |", "",
                f"- ours (cold) / HF: **{t['ours_over_hf']:.2f}x**; identical ids on "
                f"{_pct(t['identical_lines_fraction'])} of lines ({t['note']})"]
    lines.append("")
  if "inference" in r:
    c, g = r["inference"]["classify"], r["inference"]["generate"]
    lines += [f"- classification forward (tiny, batch {c['batch']} x {c['seq_len']}): "
              f"{c['examples_per_s']:.0f} examples/s ({c['step_s'] * 1e3:.1f} ms)",
              f"- sampling (tiny, batch {g['batch']}, {g['new_tokens']} new tokens, KV cache): "
              f"{g['tokens_per_s']:.0f} tokens/s ({g['ms_per_step']:.1f} ms per step)", ""]
  loads = [f"{row['shape']} {row['load_average_before'][0]:.2f}->{row['load_average_after'][0]:.2f}"
           for row in r.get("train", [])]
  loads += [f"{k} {r[k]['load_average_before_after'][0][0]:.2f}->{r[k]['load_average_before_after'][1][0]:.2f}"
            for k in ("tokenizer", "pipeline", "inference") if k in r]
  lines.append(f"1-minute load average before->after each part: {', '.join(loads)}")
  lines.append(f"wall time {r['wall_s']:.0f} s")
  return "\n".join(lines)


def _json_safe(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if isinstance(x, (np.floating, np.integer)):
    return _json_safe(x.item())
  return x


def write_json(result: dict, path: str):
  with open(path, "w") as f:
    json.dump(_json_safe(result), f, indent=1, allow_nan=False, default=str)


# ----------------------------------------------------------------------------
# CLI.

def main(argv):
  from absl import flags
  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  import jax
  on_cpu = jax.devices()[0].platform == "cpu"
  suites = SUITES if FLAGS.suite == "all" else tuple(FLAGS.suite.split(","))
  opts = Options(
      suites=suites, steps=FLAGS.steps, warmup=FLAGS.warmup, hf=FLAGS.hf, hf_threads=FLAGS.hf_threads,
      breakdown=FLAGS.breakdown,
      dtype=FLAGS.dtype, tokenizer_lines=FLAGS.tokenizer_lines,
      shapes=make_shapes(FLAGS.shape, on_cpu=on_cpu, layers_cpu=FLAGS.layers_cpu, batch=FLAGS.batch,
                         dtype=FLAGS.dtype, attention=FLAGS.attention, vocab_pad=FLAGS.vocab_pad))
  command = "python -m gpt1_jax.bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
  result = run(opts, command.strip())
  report = format_report(result)
  print(report)
  write_json(result, FLAGS.out)
  print(f"wrote {FLAGS.out}")


def _define_flags():
  from absl import flags
  flags.DEFINE_string("out", "bench.json", "Where to write the JSON results.")
  flags.DEFINE_string("suite", "all", "all, or a comma list of: " + ", ".join(SUITES))
  flags.DEFINE_enum("shape", "both", ["tiny", "gpt1", "both"], "Train-step shapes.")
  flags.DEFINE_integer("layers_cpu", 2, "Blocks of the gpt1 shape on CPU (full width; 12 on accelerators).")
  flags.DEFINE_integer("batch", 0, "Batch of the gpt1 shape (0: 2 on CPU, 16 on accelerators).")
  flags.DEFINE_integer("steps", 10, "Timed train steps per implementation and shape (median and fastest reported).")
  flags.DEFINE_integer("warmup", 2, "Untimed steps before them.")
  flags.DEFINE_string("dtype", "float32", "Our compute dtype (bfloat16 on GPU/TPU); params stay float32.")
  flags.DEFINE_enum("attention", "xla", ["xla", "dot_product", "cudnn"],
                    "Our attention; anything but xla sets attn_pdrop=0 (no dropout on the probabilities).")
  flags.DEFINE_integer("vocab_pad", 0, "vocab_pad_multiple of the gpt1 shape (0: 1 on CPU, 128 on accelerators).")
  flags.DEFINE_bool("hf", True, "Also run Hugging Face's OpenAIGPTLMHeadModel at each train shape.")
  flags.DEFINE_integer("hf_threads", 0, "torch.set_num_threads for Hugging Face's step (0: every core). Its "
                       "OpenMP barriers stall when other processes hold the cores: compare on an idle machine.")
  flags.DEFINE_bool("breakdown", True, "Time forward / backward / optimiser / output layer of our step.")
  flags.DEFINE_integer("tokenizer_lines", 0, "Lines of the corpus to tokenise (0: all).")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
