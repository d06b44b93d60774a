"""``GPT1`` inside a Flax NNX codebase, through ``flax.nnx.bridge.ToNNX``.

The model stays one Linen definition (the one that trains and converts);
:func:`to_nnx` wraps it as a stateful NNX module holding given weights, so it
composes with ``nnx.Linear`` heads, ``nnx.Optimizer`` and ``nnx.jit`` like any
NNX layer. Its parameters keep the Linen names (``gpt.embed.tokens``,
``gpt.decoder.h_0.attn.qkv_kernel``...), so ``nnx.state(module, nnx.Param)``
converts back with ``nnx.to_pure_dict`` into the tree ``GPT1`` and
``gpt1_jax.convert.to_hf`` take.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from gpt1_jax import weights
from gpt1_jax.model import GPT1, GPT1LM, ModelConfig


def to_nnx(config: ModelConfig, params: Mapping[str, Any], *, rngs: Optional[nnx.Rngs] = None,
           lm_head: bool = False) -> nnx.Module:
  """An NNX module computing ``GPT1(config)`` (``GPT1LM`` with ``lm_head``) with ``params``.

  ``params`` is any of our trees: ``load_params`` / ``from_hf_pretrained``
  output (``{'transformer': ...}``, a task ``head`` is ignored) or the
  transformer tree alone, per-layer or scanned. ``rngs`` feeds dropout when
  called with ``deterministic=False``. Call it as the Linen module:
  ``module(input_ids, attention_mask, deterministic=...)``.
  """
  tree = weights.lm_params(config, params)["transformer"]  # the layout config compiles to, heads dropped
  linen = GPT1LM(config) if lm_head else GPT1(config)
  # Our parameters carry logical axis names for the trainer's mesh rules; without a mesh they mean nothing,
  # and NNX would otherwise try to place each variable on a mesh axis of that name at creation.
  with nnx.use_eager_sharding(False):
    module = nnx.bridge.ToNNX(linen, rngs=rngs if rngs is not None else nnx.Rngs(0))
    nnx.bridge.lazy_init(module, jnp.zeros((1, min(config.n_ctx, 8)), jnp.int32))
  state = nnx.state(module, nnx.Param)
  want = {"transformer": tree} if lm_head else tree
  have = jax.tree.structure(nnx.to_pure_dict(state))
  if have != jax.tree.structure(want):
    raise ValueError(f"params do not fit ModelConfig(n_layer={config.n_layer}, scan_layers={config.scan_layers}): "
                     f"parameter trees differ")
  shapes = [(a.shape, b.shape)
            for a, b in zip(jax.tree.leaves(nnx.to_pure_dict(state)), jax.tree.leaves(want))
            if a.shape != b.shape]
  if shapes:
    raise ValueError(f"params do not fit the config: shapes {shapes[0][1]} where the model has {shapes[0][0]}")
  nnx.replace_by_pure_dict(state, want)
  nnx.update(module, state)
  return module
