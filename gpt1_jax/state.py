"""The sharded training state and its compiled step, set up once for the loop, the benchmark and tests.

``setup`` derives everything from ``jax.eval_shape`` (nothing is allocated): the state's
shardings from the parameters' logical axis names, the abstract batch, and the memory plan,
which refuses a model that cannot fit before anything is compiled. ``Setup.create`` makes the
state directly in its shardings; ``Setup.compile`` compiles a step ahead of time with the state
donated.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt1_jax import perf, sharding
from gpt1_jax.model import ModelConfig
from gpt1_jax.train import abstract_with_shardings, init_state_fn


@dataclasses.dataclass
class Setup:
  mesh: Any
  rules: tuple
  init_fn: Callable
  abstract: dict  # the state's ShapeDtypeStructs, without shardings
  shardings: dict  # the state's NamedShardings
  abstract_state: dict  # with shardings: what the compiled step takes
  abstract_batch: dict  # the global batch, with shardings

  def create(self, seed: int) -> dict:
    """The state created directly in its shardings: no device ever holds a full copy."""
    return create_state(self.init_fn, self.shardings, self.mesh, self.rules, seed)

  def compile(self, step_fn: Callable):
    return compile_train_step(step_fn, self.abstract_state, self.abstract_batch, self.mesh, self.rules)


def setup(objective, tx, dummy: dict, batch_avals: dict, global_batch: int, mesh, rules) -> Setup:
  """``batch_avals``: ``{name: (shape without the batch axis, dtype)}``."""
  init_fn, abstract, shardings = state_layout(objective, tx, dummy, mesh, rules)
  batch_sh = {k: sharding.batch_sharding(mesh, rules, 1 + len(shape)) for k, (shape, _) in batch_avals.items()}
  abstract_batch = {k: jax.ShapeDtypeStruct((global_batch,) + shape, dtype, sharding=batch_sh[k])
                    for k, (shape, dtype) in batch_avals.items()}
  return Setup(mesh, rules, init_fn, abstract, shardings, abstract_with_shardings(abstract, shardings),
               abstract_batch)


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
  with sharding.activate(mesh, rules):
    return jax.jit(lambda r: nn.meta.unbox(init_fn(r)), out_shardings=shardings)(jax.random.key(seed))


def compile_train_step(step_fn, abstract_state, abstract_batch, mesh, rules):
  """Ahead-of-time compiled step: state donated, metrics replicated."""
  state_sh = jax.tree.map(lambda a: a.sharding, abstract_state)
  batch_sh = {k: v.sharding for k, v in abstract_batch.items()}
  with sharding.activate(mesh, rules):
    return jax.jit(step_fn, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, sharding.replicated(mesh)),
                   donate_argnums=0).lower(abstract_state, abstract_batch).compile()


def check_memory_plan(s: Setup, model_cfg: ModelConfig, seq_len: int):
  """Logs the per-device memory plan; refuses (``MemoryError``) state that cannot fit at all."""
  params_b = perf.tree_bytes_per_device(s.abstract["params"], s.shardings["params"])
  opt_b = perf.tree_bytes_per_device(s.abstract["opt_state"], s.shardings["opt_state"])
  mesh = s.mesh
  gb = next(iter(s.abstract_batch.values())).shape[0]
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


def check_compiled_memory(compiled):
  """Logs what the compiled step needs per device; refuses one that exceeds the device."""
  m = perf.compiled_memory(compiled)
  if not m:
    return
  total = m["total"]
  logging.info("compiled step memory per device: arguments %s, outputs %s (aliased %s), temporaries %s; total %s",
               *(perf.fmt_bytes(m[k]) for k in ("arguments", "outputs", "aliased", "temporaries", "total")))
  limit = perf.device_memory_limit()
  if limit and total > limit:
    raise MemoryError(f"the compiled train step needs {perf.fmt_bytes(total)} per device but only "
                      f"{perf.fmt_bytes(limit)} is available: lower train.batch_size, raise "
                      f"train.grad_accum_steps, set model.remat='full', or shard over more devices")
