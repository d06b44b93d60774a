"""The sharded training state and its compiled step, set up once for the loop, the benchmark and tests.

``setup`` derives everything from ``jax.eval_shape`` (nothing is allocated, nothing runs: the
mesh may be a TPU slice's compile-only devices, see ``gpt1_jax.aot``): the state's shardings
from the parameters' logical axis names, the abstract batch from the objective's
``BatchSpec``, and the memory plan, which refuses a state that cannot fit before anything is
compiled. ``Setup.create`` makes the
state directly in its shardings; ``Setup.compile`` compiles a step ahead of time with the state
donated.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import flax.linen as nn
import jax

from gpt1_jax import perf, sharding
from gpt1_jax.batch import BatchSpec
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
    return self.lower(step_fn).compile()

  def lower(self, step_fn: Callable):
    """The step lowered for this layout (``.compile()`` it; ``gpt1_jax.aot`` also reads its HLO)."""
    return lower_train_step(step_fn, self.abstract_state, self.abstract_batch, self.mesh, self.rules)


def setup(objective, tx, batch_spec: BatchSpec, global_batch: int, mesh, rules) -> Setup:
  """The state and batch layout of ``objective`` trained by ``tx`` on ``mesh``."""
  init_fn, abstract, shardings = state_layout(objective, tx, batch_spec, mesh, rules)
  abstract_batch = batch_spec.avals(global_batch, lambda ndim: sharding.batch_sharding(mesh, rules, ndim))
  return Setup(mesh, rules, init_fn, abstract, shardings, abstract_with_shardings(abstract, shardings), abstract_batch)


def state_layout(objective, tx, batch_spec: BatchSpec, mesh, rules):
  """``(init_fn, abstract state, shardings)`` from ``jax.eval_shape``: nothing is allocated."""
  init_fn = init_state_fn(objective, tx, batch_spec.zeros(1))
  with sharding.activate(mesh, rules):
    # The key is made inside the traced function: an eager jax.random.key would run on the
    # mesh's devices, which for an AOT topology cannot execute anything.
    boxed = jax.eval_shape(lambda: init_fn(jax.random.key(0)))
  shardings = sharding.logical_to_sharding(boxed, mesh, rules)
  abstract = nn.meta.unbox(boxed)
  sharding.check_divisible(abstract, shardings, "model parameters / optimiser state")
  return init_fn, abstract, shardings


def create_state(init_fn, shardings, mesh, rules, seed: int):
  with sharding.activate(mesh, rules):
    return jax.jit(lambda r: nn.meta.unbox(init_fn(r)), out_shardings=shardings)(jax.random.key(seed))


def lower_train_step(step_fn, abstract_state, abstract_batch, mesh, rules):
  """The step lowered ahead of time: state donated, metrics replicated."""
  state_sh = jax.tree.map(lambda a: a.sharding, abstract_state)
  batch_sh = {k: v.sharding for k, v in abstract_batch.items()}
  with sharding.activate(mesh, rules):
    return jax.jit(step_fn, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, sharding.replicated(mesh)),
                   donate_argnums=0).lower(abstract_state, abstract_batch)


def check_memory_plan(s: Setup, limit: int | None):
  """Logs the per-device state; refuses (``MemoryError``) a state that cannot fit in ``limit`` bytes.

  Activations are left to the compiled step's own figure (``check_compiled_memory``): a formula
  here overestimated them 5-8x against XLA's, which knows the fusions and the rematerialisation.
  """
  params_b = perf.tree_bytes_per_device(s.abstract["params"], s.shardings["params"])
  opt_b = perf.tree_bytes_per_device(s.abstract["opt_state"], s.shardings["opt_state"])
  logging.info("state per device: params %s, optimiser %s, gradients %s%s", perf.fmt_bytes(params_b),
               perf.fmt_bytes(opt_b), perf.fmt_bytes(params_b),
               f" (device limit {perf.fmt_bytes(limit)})" if limit else "")
  if limit and 2 * params_b + opt_b > limit:
    raise MemoryError(f"parameters, gradients and optimiser state need {perf.fmt_bytes(2 * params_b + opt_b)} per "
                      f"device, more than the {perf.fmt_bytes(limit)} available: shard over more devices "
                      f"(mesh.fsdp) or use a smaller model")


def check_compiled_memory(compiled, limit: int | None):
  """Logs what the compiled step needs per device; refuses one that exceeds ``limit`` bytes."""
  m = perf.compiled_memory(compiled)
  if not m:
    return
  total = m["total"]
  logging.info("compiled step memory per device: arguments %s, outputs %s (aliased %s), temporaries %s; total %s",
               *(perf.fmt_bytes(m[k]) for k in ("arguments", "outputs", "aliased", "temporaries", "total")))
  if limit and total > limit:
    raise MemoryError(f"the compiled train step needs {perf.fmt_bytes(total)} per device but only "
                      f"{perf.fmt_bytes(limit)} is available: lower train.batch_size, raise "
                      f"train.grad_accum_steps, set model.remat='full', or shard over more devices")
