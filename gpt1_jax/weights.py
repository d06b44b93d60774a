"""Weights from anywhere, in the layout a model compiles to: one parser for every command.

A weight source is ``DIR`` (a gpt1_jax weights checkpoint, a training workdir or its
``checkpoints/``), ``openai:DIR`` (OpenAI's release: ``params_shapes.json`` + ``params_*.npy``)
or ``hf:PATH`` (a Hugging Face ``openai-gpt`` save). Fine-tuning's ``init.weights``, sampling
(``generate``), zero-shot evaluation and the NNX bridge all go through ``load`` and then
``transformer_in_layout``: scanned or per-layer blocks, and the token table's padding, follow
the destination model's config whatever the source's were.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from gpt1_jax import checkpoint as ckpt_lib
from gpt1_jax import convert
from gpt1_jax.checkpoint import load_params
from gpt1_jax.model import ModelConfig, stack_layers, unstack_layers

KINDS = {"openai:": "openai", "hf:": "hf"}


def parse(spec: str) -> tuple[str, str]:
  """``spec`` -> ``(kind, path)`` with kind ``gpt1_jax``, ``openai`` or ``hf``."""
  if not spec or spec == "none":
    raise ValueError(f"weight source {spec!r}: give DIR, openai:DIR or hf:PATH")
  for prefix, kind in KINDS.items():
    if spec.startswith(prefix):
      return kind, spec[len(prefix):]
  return "gpt1_jax", spec


def load(spec: str, *, step: Optional[int] = None, n_head: Optional[int] = None) -> tuple[ModelConfig, dict]:
  """``(ModelConfig, params as NumPy)`` from a weight source (see the module docstring).

  ``step``: which checkpoint of a gpt1_jax run (default: the latest). ``n_head``: for
  sources that do not record it (OpenAI's release; a Hugging Face save without config.json).
  """
  kind, path = parse(spec)
  if kind != "gpt1_jax" and step is not None:
    raise ValueError(f"{spec}: a checkpoint step only applies to gpt1_jax checkpoints")
  if kind == "openai":
    return convert.from_openai_release(path, **({"n_head": n_head} if n_head else {}))
  if kind == "hf":
    return convert.from_hf_pretrained(path, n_head=n_head)
  return load_params(path, step)


def transformer_of(params: dict) -> dict:
  """The decoder's subtree of any saved layout (task heads and wrappers dropped)."""
  params = params.get("params", params)
  return params["transformer"] if "transformer" in params else params


def transformer_in_layout(src_cfg: ModelConfig, params: dict, dst_cfg: ModelConfig, *, where: str = "weights",
                          like: Optional[dict] = None) -> dict:
  """The transformer of ``params`` (saved under ``src_cfg``) as ``dst_cfg`` lays it out.

  Checks that the shapes fit (context, width, heads, layers, architecture, vocabulary) and says
  which do not; converts scanned <-> per-layer blocks and re-pads the token table to
  ``dst_cfg.padded_vocab_size``. ``like``: the destination's (abstract) transformer tree,
  whose structure the result must have.
  """
  diff = ckpt_lib.config_diff(ckpt_lib.model_config_to_dict(src_cfg), ckpt_lib.model_config_to_dict(dst_cfg),
                              keys=("n_ctx", "n_embd", "n_head", "n_layer", "architecture", "lstm_units"))
  if src_cfg.vocab_size != dst_cfg.vocab_size:
    diff.append(f"  model.vocab_size: checkpoint {src_cfg.vocab_size} != config {dst_cfg.vocab_size}")
  if diff:
    raise ValueError(f"{where}: weights do not fit the configured model:\n" + "\n".join(diff))
  tree = restack(jax.tree.map(np.asarray, transformer_of(params)), dst_cfg)
  tokens = tree["embed"]["tokens"][:dst_cfg.vocab_size]
  pad = dst_cfg.padded_vocab_size - tokens.shape[0]
  tree["embed"]["tokens"] = np.concatenate([tokens, np.zeros((pad, tokens.shape[1]), tokens.dtype)]) if pad else tokens
  if like is not None and jax.tree_util.tree_structure(tree) != jax.tree_util.tree_structure(like):
    raise ValueError(f"{where}: parameter tree differs from the model's")
  return tree


def restack(tree: dict, config: ModelConfig) -> dict:
  """A transformer tree with its blocks scanned (``h``) or per layer, as ``config.scan_layers`` says."""
  if "decoder" not in tree:  # nothing to (un)stack
    return tree
  scanned = "h" in tree["decoder"]
  if config.scan_layers and not scanned:
    return stack_layers(tree, config.n_layer)
  if scanned and not config.scan_layers:
    return unstack_layers(tree)
  return tree


def lm_params(config: ModelConfig, params: dict) -> dict:
  """``GPT1LM`` params for ``config`` (sampling, scoring) from any saved layout of the same model:
  task heads dropped, blocks (un)stacked; shapes are left as they are (the caller's model checks them)."""
  import jax.numpy as jnp
  return {"transformer": jax.tree.map(jnp.asarray, restack(transformer_of(params), config))}
