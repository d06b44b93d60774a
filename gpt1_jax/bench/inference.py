"""The inference suite: a classification forward (``GPT1ForTask``) and KV-cache sampling, at the tiny shape."""

from __future__ import annotations

import dataclasses
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gpt1_jax import generate
from gpt1_jax.bench.machine import log, median_time
from gpt1_jax.bench.options import Options, tiny_model
from gpt1_jax.model import GPT1ForTask, init_params


def classify_forward(cfg, *, batch: int, reps: int) -> dict:
  model = GPT1ForTask(cfg, "classification", 2)
  t = cfg.n_ctx
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, 1, t), dtype=np.int32))
  mask = jnp.ones((batch, 1, t), jnp.int32)
  cls = jnp.full((batch, 1), t - 1, jnp.int32)
  # Initialised under jit: op-by-op, each of init's primitives would compile on its own.
  params = jax.jit(lambda k: nn.meta.unbox(model.init(k, ids[:1], mask[:1], cls[:1])["params"]))(jax.random.key(0))
  fwd = jax.jit(lambda p, i, m, c: model.apply({"params": p}, i, m, c)[0])
  s, times = median_time(lambda: fwd(params, ids, mask, cls), reps)
  return {"batch": batch, "seq_len": t, "step_s": s, "examples_per_s": batch / s, "tokens_per_s": batch * t / s}


def sampling(cfg, *, batch: int, prompt_len: int, new_tokens: int, reps: int) -> dict:
  params = jax.jit(functools.partial(init_params, cfg))(jax.random.key(0))
  rng = np.random.default_rng(0)
  prompts = rng.integers(0, cfg.vocab_size, (batch, prompt_len)).tolist()
  run = lambda: generate.generate(cfg, params, prompts, max_new_tokens=new_tokens, seed=0)  # noqa: E731
  t = time.perf_counter()
  out = run()  # compiles
  first_s = time.perf_counter() - t
  s, _ = median_time(run, reps, warmup=0)
  n = sum(map(len, out))
  return {
      "batch": batch,
      "prompt_len": prompt_len,
      "new_tokens": new_tokens,
      "seconds": s,
      "first_call_s": first_s,
      "tokens_per_s": n / s,
      "ms_per_step": 1000 * s / new_tokens,
      "note": "one jitted prefill + while_loop decode with the KV cache; time includes the prefill"
  }


def inference_suite(opts: Options) -> dict:
  cfg = opts.inference_model or tiny_model(opts.dtype)
  log("inference")
  return {
      "model": dataclasses.asdict(cfg),
      "classify": classify_forward(cfg, batch=opts.classify_batch, reps=opts.inference_reps),
      "generate": sampling(cfg, batch=opts.generate_batch, prompt_len=opts.prompt_len, new_tokens=opts.new_tokens,
                           reps=max(1, opts.inference_reps // 2))
  }
