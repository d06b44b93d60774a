"""Pretrained GPT-1 weights into our parameter tree, and back out to Hugging Face.

Two sources, one target layout (``GPT1LM`` params, per-layer ``h_{i}``):

* Hugging Face ``OpenAIGPTModel`` / ``OpenAIGPTLMHeadModel`` /
  ``OpenAIGPTDoubleHeadsModel`` state dicts (:func:`from_hf`, and
  :func:`from_hf_pretrained` for a saved directory or weights file).
* OpenAI's original release, ``params_shapes.json`` + ``params_{0..9}.npy``
  (:func:`from_openai_release`).

The released token table has 40,478 rows; fine-tuning needs three more
(``_start_``, ``_delimiter_``, ``_classify_``, Section 3.3). As the original
``train.py`` does, those rows are drawn N(0, 0.02) here, from ``seed``.

:func:`to_hf` gives the ``OpenAIGPTLMHeadModel`` state dict; :func:`write_hf`
writes a whole directory that ``transformers`` loads (``config.json``,
safetensors weights, GPT-1's tokenizer files), as the class the checkpoint's
task head maps to (:func:`hf_architecture`). Imported weights are saved with
``gpt1_jax.checkpoint.save_params``::

    python -m gpt1_jax.convert --from=hf --hf_path=/path/to/openai-gpt --out=/tmp/gpt1
    python -m gpt1_jax.convert --from=openai --openai_dir=finetune-transformer-lm/model --out=/tmp/gpt1
    python -m gpt1_jax.convert --to=hf --checkpoint=workdirs/sst2/best --out=/tmp/gpt1-sst2-hf
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Mapping, Optional

import numpy as np

import jax

from gpt1_jax.model import ModelConfig, stack_layers, unstack_layers

# The BPE vocabulary of the release; the three fine-tuning tokens follow it.
RELEASE_VOCAB_SIZE = 40478
N_SPECIAL = 3
SPECIAL_INIT_STD = 0.02
NUM_SHARDS = 10  # params_0.npy ... params_9.npy
ARRAYS_PER_LAYER = 12

# The original's per-layer array order (`model.py` of openai/finetune-transformer-lm
# builds its variables in this order), named as Hugging Face names them.
_LAYER_KEYS = ("attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
               "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
               "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias")

# Buffers some transformers versions saved with the weights (the causal mask,
# position ids): derived data, not parameters.
_IGNORED = re.compile(r"^(h\.\d+\.attn\.(bias|masked_bias)|position_ids)$")
_MC_HEAD = ("multiple_choice_head.summary.weight", "multiple_choice_head.summary.bias")
_SCORE = "score.weight"  # OpenAIGPTForSequenceClassification's head: [num_labels, D], no bias


class ConversionError(ValueError):
  pass


def _to_numpy(x) -> np.ndarray:
  if hasattr(x, "detach"):  # torch.Tensor; .float() also handles bf16, which numpy lacks
    x = x.detach().cpu().float().numpy()
  # A copy: params must not alias the source model's tensors.
  return np.array(x, dtype=np.float32)


def _special_rows(n_embd: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).normal(0.0, SPECIAL_INIT_STD, (N_SPECIAL, n_embd)).astype(np.float32)


def _strip_prefix(state_dict: Mapping[str, Any]) -> tuple[dict, Optional[np.ndarray], dict]:
  """Splits a state dict into transformer weights (no ``transformer.`` prefix), lm_head and heads."""
  body, heads, lm_head = {}, {}, None
  for key, value in state_dict.items():
    if key == "lm_head.weight":
      lm_head = _to_numpy(value)
    elif key in _MC_HEAD or key == _SCORE:
      heads[key] = _to_numpy(value)
    else:
      name = key[len("transformer."):] if key.startswith("transformer.") else key
      if not _IGNORED.match(name):
        body[name] = value
  return body, lm_head, heads


def from_hf(state_dict: Mapping[str, Any], *, n_head: int = 12, seed: int = 0, task: bool = False,
            **config_overrides) -> tuple[ModelConfig, dict]:
  """A Hugging Face OpenAI-GPT state dict -> ``(ModelConfig, params)`` (float32 numpy, per-layer layout).

  Args:
    state_dict: from ``OpenAIGPTModel`` (no prefix), ``OpenAIGPTLMHeadModel`` or
      ``OpenAIGPTDoubleHeadsModel`` (``transformer.`` prefix); torch tensors or arrays.
    n_head: number of heads; shapes do not determine it (GPT-1: 12).
    seed: seeds the three special-token rows appended to a 40,478-row token table.
    task: also return ``multiple_choice_head`` as ``params['head']`` (``kernel [D, 1]``,
      ``bias [1]``), the layout of ``GPT1ForTask(task_type='multiple_choice')``.
    **config_overrides: other ``ModelConfig`` fields (``dtype``, ``vocab_pad_multiple``, ...).
      The activation defaults to ``gelu_tanh``, which is what ``transformers``' OpenAI-GPT
      calls ``afn="gelu"``.
  """
  body, lm_head, heads = _strip_prefix(state_dict)
  for name in ("tokens_embed.weight", "positions_embed.weight"):
    if name not in body:
      raise ConversionError(f"state dict has no {name!r} (nor 'transformer.{name}'); keys start with "
                            f"{sorted(state_dict)[:5]}")
  tokens = _to_numpy(body.pop("tokens_embed.weight"))
  positions = _to_numpy(body.pop("positions_embed.weight"))
  if tokens.ndim != 2 or positions.ndim != 2 or tokens.shape[1] != positions.shape[1]:
    raise ConversionError(f"embedding tables disagree: tokens {tokens.shape}, positions {positions.shape}")
  n_ctx, d = positions.shape
  if d % n_head:
    raise ConversionError(f"n_embd={d} is not divisible by n_head={n_head}; pass the model's n_head")

  layer_ids = sorted({int(m.group(1)) for k in body if (m := re.match(r"h\.(\d+)\.", k))})
  if not layer_ids or layer_ids != list(range(len(layer_ids))):
    raise ConversionError(f"layers must be numbered h.0 .. h.N-1, found {layer_ids}")
  n_layer = len(layer_ids)
  expected = {f"h.{i}.{k}" for i in layer_ids for k in _LAYER_KEYS}
  missing, unexpected = sorted(expected - set(body)), sorted(set(body) - expected)
  if missing or unexpected:
    raise ConversionError(f"state dict is not OpenAI-GPT: missing {missing[:8]}, unexpected {unexpected[:8]}")

  if lm_head is not None and not np.array_equal(lm_head, tokens):
    raise ConversionError("lm_head.weight differs from tokens_embed.weight: GPT-1's output layer is tied to the "
                          "token embedding and cannot hold a separate one")

  vocab = tokens.shape[0]
  if vocab == RELEASE_VOCAB_SIZE:
    tokens = np.concatenate([tokens, _special_rows(d, seed)], axis=0)
    vocab += N_SPECIAL
  overrides = dict(config_overrides)
  overrides.setdefault("activation", "gelu_tanh")
  config = ModelConfig(vocab_size=vocab, n_ctx=n_ctx, n_embd=d, n_head=n_head, n_layer=n_layer, **overrides)
  if config.scan_layers:
    raise ConversionError("from_hf returns the per-layer layout; convert with scan_layers=False and use "
                          "model.stack_layers for a scanned model")
  if config.architecture != "transformer":
    raise ConversionError("Hugging Face OpenAI-GPT weights are a transformer, not an LSTM")
  if config.padded_vocab_size > vocab:  # never looked up; zeros keep the padded model exact
    tokens = np.concatenate([tokens, np.zeros((config.padded_vocab_size - vocab, d), np.float32)], axis=0)

  h, dh = n_head, d // n_head

  def get(i, key, shape):
    x = _to_numpy(body[f"h.{i}.{key}"])
    if x.size != int(np.prod(shape)):
      raise ConversionError(f"h.{i}.{key} has shape {x.shape}, expected {shape} for n_embd={d}")
    return x.reshape(shape)

  decoder = {}
  for i in range(n_layer):
    # Conv1D weights are [in, out]; c_attn's output is q|k|v, each [heads, head_dim] contiguous.
    decoder[f"h_{i}"] = {
        "attn": {
            "qkv_kernel": get(i, "attn.c_attn.weight", (d, 3, h, dh)),
            "qkv_bias": get(i, "attn.c_attn.bias", (3, h, dh)),
            "out_kernel": get(i, "attn.c_proj.weight", (h, dh, d)),
            "out_bias": get(i, "attn.c_proj.bias", (d,)),
        },
        "ln_1": {"scale": get(i, "ln_1.weight", (d,)), "bias": get(i, "ln_1.bias", (d,))},
        "mlp": {
            "fc_kernel": get(i, "mlp.c_fc.weight", (d, 4 * d)),
            "fc_bias": get(i, "mlp.c_fc.bias", (4 * d,)),
            "proj_kernel": get(i, "mlp.c_proj.weight", (4 * d, d)),
            "proj_bias": get(i, "mlp.c_proj.bias", (d,)),
        },
        "ln_2": {"scale": get(i, "ln_2.weight", (d,)), "bias": get(i, "ln_2.bias", (d,))},
    }
  params = {"transformer": {"embed": {"tokens": tokens, "positions": positions}, "decoder": decoder}}

  if task and _SCORE in heads:
    w = heads[_SCORE]
    if w.ndim != 2 or w.shape[1] != d:
      raise ConversionError(f"score.weight is {w.shape}, expected (num_labels, {d})")
    # HF's sequence-classification head has no bias; ours with a zero bias computes the same.
    params["head"] = {"kernel": np.ascontiguousarray(w.T), "bias": np.zeros(w.shape[0], np.float32)}
  elif task:
    if set(_MC_HEAD) - set(heads):
      raise ConversionError("task=True needs an OpenAIGPTDoubleHeadsModel state dict "
                            f"({', '.join(_MC_HEAD)}) or an OpenAIGPTForSequenceClassification one "
                            f"({_SCORE}); not found")
    w, b = heads[_MC_HEAD[0]], heads[_MC_HEAD[1]]
    if w.shape != (1, d) or b.shape != (1,):
      raise ConversionError(f"multiple_choice_head.summary is {w.shape} + {b.shape}, expected (1, {d}) + (1,): "
                            "a head with summary_proj_to_labels and one output per candidate")
    params["head"] = {"kernel": np.ascontiguousarray(w.T), "bias": b}
  return config, params


def from_hf_double_heads(state_dict: Mapping[str, Any], **kw) -> tuple[ModelConfig, dict]:
  """``from_hf(..., task=True)``: params for ``GPT1ForTask(config, task_type='multiple_choice')``."""
  return from_hf(state_dict, task=True, **kw)


def to_hf(config: ModelConfig, params: Mapping[str, Any], *, vocab_size: Optional[int] = None,
          task: bool = False) -> dict[str, np.ndarray]:
  """Our params (per-layer or scanned) -> an ``OpenAIGPTLMHeadModel`` state dict of float32 arrays.

  Vocabulary padding rows are dropped. ``vocab_size`` keeps fewer rows, e.g.
  ``RELEASE_VOCAB_SIZE`` to drop the special tokens again. ``task=True`` adds
  ``params['head']`` as ``multiple_choice_head.summary`` (the
  ``OpenAIGPTDoubleHeadsModel`` layout).
  """
  if config.architecture != "transformer":
    raise ConversionError("only the transformer has a Hugging Face counterpart")
  tree = params["transformer"] if "transformer" in params else params
  if "h" in tree["decoder"]:
    tree = unstack_layers(dict(tree))
  d = config.n_embd
  keep = config.vocab_size if vocab_size is None else vocab_size
  if not 0 < keep <= config.vocab_size:
    raise ConversionError(f"vocab_size={vocab_size} must be in [1, {config.vocab_size}]")
  # np.array copies: fresh, writable arrays (torch.from_numpy warns on read-only jax views).
  tokens = np.array(tree["embed"]["tokens"][:keep], np.float32)
  out = {
      "transformer.tokens_embed.weight": tokens,
      "transformer.positions_embed.weight": np.array(tree["embed"]["positions"], np.float32),
  }
  for i in range(config.n_layer):
    layer = tree["decoder"][f"h_{i}"]
    a, m = layer["attn"], layer["mlp"]
    arrays = (a["qkv_kernel"], a["qkv_bias"], a["out_kernel"], a["out_bias"],
              layer["ln_1"]["scale"], layer["ln_1"]["bias"], m["fc_kernel"], m["fc_bias"], m["proj_kernel"],
              m["proj_bias"], layer["ln_2"]["scale"], layer["ln_2"]["bias"])
    shapes = ((d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,), (d,), (d,))
    for key, x, shape in zip(_LAYER_KEYS, arrays, shapes):
      out[f"transformer.h.{i}.{key}"] = np.array(x, np.float32).reshape(shape)
  out["lm_head.weight"] = tokens.copy()
  if task:
    head = params["head"]
    out[_MC_HEAD[0]] = np.array(head["kernel"], np.float32).T.reshape(1, d)
    out[_MC_HEAD[1]] = np.array(head["bias"], np.float32).reshape(1)
  return out


# ----------------------------------------------------------------------------
# OpenAI's release (openai/finetune-transformer-lm, model/)

def read_params_shapes(path: str) -> list[tuple[int, ...]]:
  """The shapes in ``params_shapes.json``, checked to be GPT-1's layout: positions, tokens, 12 per layer."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"missing {path}: the release's list of array shapes")
  with open(path) as f:
    try:
      shapes = [tuple(int(n) for n in s) for s in json.load(f)]
    except (ValueError, TypeError) as e:
      raise ConversionError(f"{path}: not a JSON list of shapes ({e})") from e
  if len(shapes) < 2 + ARRAYS_PER_LAYER or (len(shapes) - 2) % ARRAYS_PER_LAYER:
    raise ConversionError(f"{path}: {len(shapes)} arrays; expected 2 embedding tables + "
                          f"{ARRAYS_PER_LAYER} per layer")
  (n_ctx, d), (_, d_tok) = shapes[0], shapes[1]
  expected = [(1, d, 3 * d), (3 * d,), (1, d, d), (d,), (d,), (d,), (1, d, 4 * d), (4 * d,), (1, 4 * d, d), (d,),
              (d,), (d,)]
  if d_tok != d or len(shapes[0]) != 2 or len(shapes[1]) != 2:
    raise ConversionError(f"{path}: embedding shapes {shapes[0]}, {shapes[1]} are not [n_ctx, d], [vocab, d]")
  for j, shape in enumerate(shapes[2:]):
    if shape != expected[j % ARRAYS_PER_LAYER]:
      layer, k = divmod(j, ARRAYS_PER_LAYER)
      raise ConversionError(f"{path}: array {j + 2} (layer {layer} {_LAYER_KEYS[k]}) has shape {list(shape)}, "
                            f"expected {list(expected[k])}")
  return shapes


def read_openai_release(model_dir: str) -> dict[str, np.ndarray]:
  """The release as a Hugging Face-named state dict (no prefix; Conv1D ``[in, out]`` weights).

  The ten shards, concatenated, are one float32 vector cut at the cumulative
  sizes of the shapes, in order: the position table, the token table, then
  the layers. (The original concatenates [tokens; specials; positions] into one
  ``we`` table at load time; we keep the two tables apart, as our model and
  Hugging Face's do.)
  """
  shapes = read_params_shapes(os.path.join(model_dir, "params_shapes.json"))
  paths = [os.path.join(model_dir, f"params_{n}.npy") for n in range(NUM_SHARDS)]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(f"missing {', '.join(missing)}: the release is {NUM_SHARDS} shards params_0.npy .. "
                            f"params_{NUM_SHARDS - 1}.npy")
  shards = []
  for p in paths:
    try:
      x = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as e:
      raise ConversionError(f"{p}: not a readable .npy file ({e})") from e
    if not np.issubdtype(x.dtype, np.floating):
      raise ConversionError(f"{p}: dtype {x.dtype}, expected float32")
    shards.append(x.reshape(-1).astype(np.float32, copy=False))
  sizes = [int(np.prod(s)) for s in shapes]
  total, have = sum(sizes), sum(s.size for s in shards)
  if have != total:
    counts = ", ".join(f"{os.path.basename(p)}={s.size}" for p, s in zip(paths, shards))
    raise ConversionError(f"{model_dir}: the shards hold {have} floats ({counts}) but "
                          f"params_shapes.json needs {total}; a shard is truncated or from another release")
  flat = np.concatenate(shards)
  arrays = [a.reshape(s) for a, s in zip(np.split(flat, np.cumsum(sizes)[:-1]), shapes)]
  out = {"positions_embed.weight": arrays[0], "tokens_embed.weight": arrays[1]}
  for j, a in enumerate(arrays[2:]):
    layer, k = divmod(j, ARRAYS_PER_LAYER)
    # The original stores Conv1D ("1x1 conv") weights as [1, in, out].
    out[f"h.{layer}.{_LAYER_KEYS[k]}"] = a[0] if a.ndim == 3 else a
  return out


def from_openai_release(model_dir: str, *, n_head: int = 12, seed: int = 0,
                        **config_overrides) -> tuple[ModelConfig, dict]:
  """OpenAI's ``params_shapes.json`` + ``params_{0..9}.npy`` -> ``(ModelConfig, params)``."""
  return from_hf(read_openai_release(model_dir), n_head=n_head, seed=seed, **config_overrides)


# ----------------------------------------------------------------------------
# Hugging Face files

def load_hf_state_dict(path: str) -> tuple[dict, Optional[dict]]:
  """A saved model (directory, ``*.safetensors`` or ``*.bin``) -> ``(state_dict, config.json or None)``.

  Directories may hold one file or a sharded checkpoint with an ``*.index.json``.
  """
  def read(file):
    if file.endswith(".safetensors"):
      from safetensors.numpy import load_file
      return load_file(file)
    import torch
    return torch.load(file, map_location="cpu", weights_only=True)

  if os.path.isfile(path):
    return read(path), None
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no Hugging Face model at {path}")
  config = None
  if os.path.isfile(os.path.join(path, "config.json")):
    with open(os.path.join(path, "config.json")) as f:
      config = json.load(f)
  for single, index in (("model.safetensors", "model.safetensors.index.json"),
                        ("pytorch_model.bin", "pytorch_model.bin.index.json")):
    if os.path.isfile(os.path.join(path, single)):
      return read(os.path.join(path, single)), config
    if os.path.isfile(os.path.join(path, index)):
      with open(os.path.join(path, index)) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
      state = {}
      for name in files:
        state.update(read(os.path.join(path, name)))
      return state, config
  raise FileNotFoundError(f"{path} has neither model.safetensors nor pytorch_model.bin (nor sharded indexes)")


def from_hf_pretrained(path: str, *, n_head: Optional[int] = None, seed: int = 0, task: Optional[bool] = False,
                       **config_overrides) -> tuple[ModelConfig, dict]:
  """:func:`from_hf` on a saved model; ``n_head`` and the LayerNorm epsilon come from its config.json if present.

  ``task=None`` keeps a task head when the weights have one. A directory
  written by :func:`write_hf` comes back exactly as it was exported: its
  config.json records our ``ModelConfig`` (layer layout, vocabulary padding,
  dtypes) and a classification head's bias is read from its side file while
  ``score`` is still the exported one. Vocabulary padding rows, which are
  never looked up, come back as zeros.
  """
  state, hf_config = load_hf_state_dict(path)
  hf_config = hf_config or {}
  afn = hf_config.get("afn", "gelu")
  if afn != "gelu":  # transformers' OpenAI-GPT maps "gelu" to the tanh form (its gelu_new), GPT-1's
    raise ConversionError(f"{path}: afn={afn!r}; only GPT-1's tanh GELU (transformers' afn='gelu') is supported")
  if "layer_norm_epsilon" in hf_config:
    config_overrides.setdefault("layer_norm_epsilon", float(hf_config["layer_norm_epsilon"]))
  recorded = (hf_config.get(HF_RECORD_KEY) or {}).get("model") or {}
  # Fields that do not change what the weights compute; the shapes come from the weights themselves.
  for key in ("embd_pdrop", "attn_pdrop", "resid_pdrop", "initializer_range", "activation", "dtype",
              "param_dtype", "attention", "remat", "vocab_pad_multiple"):
    if key in recorded:
      config_overrides.setdefault(key, recorded[key])
  scan = bool(config_overrides.pop("scan_layers", recorded.get("scan_layers", False)))
  if task is None:
    task = any(k in state for k in _MC_HEAD + (_SCORE,))
  n_head = n_head or int(hf_config.get("n_head", 12))
  config, params = from_hf(state, n_head=n_head, seed=seed, task=task, **config_overrides)
  if task and _SCORE in state and os.path.isdir(path):
    params["head"] = _trained_head(path, config, params) or params["head"]
  if scan:
    params["transformer"] = jax.tree.map(np.asarray, stack_layers(params["transformer"], config.n_layer))
    config = config.replace(scan_layers=True)
  return config, params


# ----------------------------------------------------------------------------
# Writing a Hugging Face directory (``--to=hf``)

# transformers' own default for save_pretrained (GPT-1 in float32 is 0.47 GB: one file).
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
HF_HEAD_FILE = "gpt1_jax_head.safetensors"  # our head as trained, for an exact import (see write_hf)
HF_RECORD_KEY = "gpt1_jax"  # config.json key with our ModelConfig and task; transformers keeps it as an attribute
# Heads that read several sequences per example and sum their states before the linear layer
# (Section 3.3): one Hugging Face forward pass scores one sequence, so no class computes them.
UNMAPPED_HEADS = {
    "similarity": "sums the _classify_ states of both sentence orderings before its linear layer",
    "regression": "sums the _classify_ states of both sentence orderings before its linear layer",
}
# Fold the bias only when the folded score reproduces ours to this (the checks compare at 1e-4).
FOLD_TOLERANCE = 1e-5


def fold_bias_into_score(config: ModelConfig, params: Mapping[str, Any]) -> np.ndarray:
  """Our ``[D, L]`` + bias ``[L]`` head -> a bias-free ``score.weight [L, D]`` computing the same logits.

  ``OpenAIGPTForSequenceClassification.score`` has no bias. The pooled state is
  the last block's ``ln_2`` output ``h = s * y + c`` with ``y`` normalised, so
  ``sum(y) = 0`` and ``sum((h - c) / s) = 0``: every ``h`` satisfies
  ``(1 / s) . h = C`` with ``C = sum(c / s)``. Adding ``(b_j / C) / s`` to
  column ``j`` therefore adds exactly ``b_j``. Refused when ``C`` is too small
  for float32 to carry it (e.g. an untrained LayerNorm, ``c = 0``).
  """
  decoder = params["transformer"]["decoder"]
  ln = decoder["h"]["ln_2"] if "h" in decoder else decoder[f"h_{config.n_layer - 1}"]["ln_2"]
  last = (lambda x: np.asarray(x)[-1]) if "h" in decoder else np.asarray
  s = last(ln["scale"]).astype(np.float64)
  c = last(ln["bias"]).astype(np.float64)
  w = np.asarray(params["head"]["kernel"], np.float64)
  b = np.asarray(params["head"]["bias"], np.float64)
  if not np.any(b):
    return np.ascontiguousarray(w.T.astype(np.float32))
  const = np.sum(c / s) if np.all(s != 0) else 0.0
  if np.any(s == 0):
    problem = "the final LayerNorm has zero scales"
  elif const == 0:
    problem = "the final LayerNorm's biases are zero (untrained?), which leaves no constant to fold it into"
  else:
    folded = (w + np.outer(1.0 / s, b / const)).T.astype(np.float32)
    # Check in float32 on states shaped like the real ones (zero mean, unit variance, then s, c).
    y = np.random.default_rng(0).standard_normal((256, config.n_embd))
    y = (y - y.mean(1, keepdims=True)) / y.std(1, keepdims=True)
    h = (y * s + c).astype(np.float32)
    err = np.abs(h @ folded.T - (h.astype(np.float64) @ w + b)).max()
    if np.isfinite(err) and err <= FOLD_TOLERANCE:
      return np.ascontiguousarray(folded)
    problem = f"folding it through the final LayerNorm would change the logits by {err:.2g}"
  raise ConversionError(f"the classification head has a bias and OpenAIGPTForSequenceClassification's score "
                        f"layer has none; {problem}. Export with --drop_head, or serve with gpt1_jax.export")


def _hf_config(config: ModelConfig, architecture: str, record: dict, *, task=None, clf_pdrop: float = 0.1) -> dict:
  """``config.json`` for transformers' OpenAIGPTConfig (names as its ``__init__`` takes them)."""
  out = {
      "architectures": [architecture], "model_type": "openai-gpt", "dtype": "float32",
      "vocab_size": config.vocab_size, "n_positions": config.n_ctx, "n_embd": config.n_embd,
      "n_layer": config.n_layer, "n_head": config.n_head, "afn": "gelu",  # transformers' "gelu" is the tanh form
      "resid_pdrop": config.resid_pdrop, "embd_pdrop": config.embd_pdrop, "attn_pdrop": config.attn_pdrop,
      "layer_norm_epsilon": config.layer_norm_epsilon, "initializer_range": config.initializer_range,
      # The double-heads summary: a linear layer on the state at mc_token_ids, one score per candidate.
      "summary_type": "cls_index", "summary_use_proj": True, "summary_activation": None,
      "summary_proj_to_labels": True, "summary_first_dropout": clf_pdrop,
      "tie_word_embeddings": True, HF_RECORD_KEY: record,
  }
  if architecture == "OpenAIGPTForSequenceClassification":
    labels = list(task.labels)
    out.update(id2label={str(i): n for i, n in enumerate(labels)}, label2id={n: i for i, n in enumerate(labels)},
               # Pools at the last token that is not pad_token_id: with our right padding by id 0 that is
               # the final _classify_, the token our head reads.
               pad_token_id=0)
  return out


def _write_safetensors(directory: str, tensors: dict[str, np.ndarray], max_shard_bytes: int) -> list[str]:
  """``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` + the standard index above the size."""
  from safetensors.numpy import save_file
  shards, size = [{}], 0
  for name, x in tensors.items():
    if shards[-1] and size + x.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = x
    size += x.nbytes
  meta = {"format": "pt"}  # transformers refuses safetensors files without it
  if len(shards) == 1:
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata=meta)
    return ["model.safetensors"]
  names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  weight_map = {}
  for name, shard in zip(names, shards):
    save_file(shard, os.path.join(directory, name), metadata=meta)
    weight_map.update(dict.fromkeys(shard, name))
  index = {"metadata": {"total_size": sum(x.nbytes for x in tensors.values())}, "weight_map": weight_map}
  with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
    json.dump(index, f, indent=2)
  return names + ["model.safetensors.index.json"]


def _write_tokenizer(directory: str, n_ctx: int) -> list[str]:
  """GPT-1's BPE files as OpenAIGPTTokenizer reads them, with our three special tokens after the 40,478."""
  import importlib.resources
  from gpt1_jax.tokenizer import SPECIAL_TOKENS
  assets = importlib.resources.files("gpt1_jax").joinpath("assets")
  encoder = json.loads(assets.joinpath("encoder_bpe_40000.json").read_text(encoding="utf-8"))
  if len(encoder) != RELEASE_VOCAB_SIZE:
    raise ConversionError(f"gpt1_jax/assets/encoder_bpe_40000.json has {len(encoder)} entries, "
                          f"expected {RELEASE_VOCAB_SIZE}")
  special_ids = {tok: RELEASE_VOCAB_SIZE + i for i, tok in enumerate(SPECIAL_TOKENS)}
  with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump({**encoder, **special_ids}, f, ensure_ascii=False)
  with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
    f.write(assets.joinpath("vocab_40000.bpe").read_text(encoding="utf-8"))

  def added(content):
    return {"content": content, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False,
            "special": True}
  # Id 0 (<unk>) is also our padding id; special tokens are matched whole, before the BPE.
  tokenizer_config = {
      "tokenizer_class": "OpenAIGPTTokenizer", "unk_token": "<unk>", "pad_token": "<unk>",
      "model_max_length": n_ctx, "padding_side": "right",
      "added_tokens_decoder": {"0": added("<unk>"), **{str(i): added(t) for t, i in special_ids.items()}},
  }
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(tokenizer_config, f, indent=2)
  return ["vocab.json", "merges.txt", "tokenizer_config.json"]


def task_of(meta: Mapping[str, Any], params: Mapping[str, Any], where: str):
  """The ``Task`` a checkpoint's head was trained for (``None`` for a language model), from its metadata.

  ``save_params`` of the best fine-tuned model records ``task``; a training
  state records its whole config.
  """
  name = meta.get("task") or ((meta.get("config") or {}).get("task") or {}).get("name")
  if "head" not in params:
    return None
  if not name or name == "lm":
    raise ConversionError(f"{where}: the weights have a task head but the checkpoint's metadata names no task")
  from gpt1_jax.data import tasks
  try:
    return tasks.get_task(name)
  except ValueError as e:
    raise ConversionError(f"{where}: {e}") from None


def hf_architecture(task) -> str:
  """The transformers class a task's head exports as; ConversionError for heads with no counterpart."""
  if task is None:
    return "OpenAIGPTLMHeadModel"
  if task.type in UNMAPPED_HEADS:
    raise ConversionError(f"task {task.name!r} ({task.type}): its head {UNMAPPED_HEADS[task.type]}, which no "
                          f"transformers OpenAI-GPT class computes; export the fine-tuned body alone with "
                          f"--drop_head, or the whole model with python -m gpt1_jax.export")
  return "OpenAIGPTDoubleHeadsModel" if task.type == "multiple_choice" else "OpenAIGPTForSequenceClassification"


def write_hf(out: str, config: ModelConfig, params: Mapping[str, Any], *, task=None, clf_pdrop: float = 0.1,
             max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, record: Optional[dict] = None) -> list[str]:
  """Writes a directory ``transformers`` loads: ``config.json``, safetensors weights, tokenizer files.

  ``task`` (a ``gpt1_jax.data.tasks.Task``, or ``None`` for the language
  model) picks the class: ``OpenAIGPTLMHeadModel``,
  ``OpenAIGPTDoubleHeadsModel`` (multiple choice) or
  ``OpenAIGPTForSequenceClassification`` (classification, entailment; the
  head's bias is folded into ``score``, see :func:`fold_bias_into_score`).
  The tokenizer files are written when the vocabulary is GPT-1's (40,481
  rows). Everything is written to a temporary directory renamed to ``out``
  at the end, so a failure leaves no partial ``out``. Returns the file names.
  """
  architecture = hf_architecture(task)
  if config.architecture != "transformer":
    raise ConversionError("only the transformer has a Hugging Face counterpart (this is the LSTM ablation)")
  tensors = to_hf(config, params, task=architecture == "OpenAIGPTDoubleHeadsModel")
  # Tied to the token table: transformers' save_pretrained leaves it out and re-ties it on load.
  del tensors["lm_head.weight"]
  head_file = None
  if architecture == "OpenAIGPTForSequenceClassification":
    head = params["head"]
    tensors[_SCORE] = fold_bias_into_score(config, params)
    # The folded score is exact as a function, not as bits: the head as trained rides along (transformers
    # ignores the file) so that --from=hf gives back our parameters exactly.
    head_file = {"kernel": np.array(head["kernel"], np.float32), "bias": np.array(head["bias"], np.float32)}
  record = {"model": dataclasses.asdict(config), "task": None if task is None else task.name,
            "task_type": None if task is None else task.type, **(record or {})}

  out = os.path.abspath(out)
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
  try:
    files = _write_safetensors(tmp, tensors, max_shard_bytes)
    if head_file is not None:
      from safetensors.numpy import save_file
      save_file(head_file, os.path.join(tmp, HF_HEAD_FILE), metadata={"format": "gpt1_jax"})
      files.append(HF_HEAD_FILE)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(_hf_config(config, architecture, record, task=task, clf_pdrop=clf_pdrop), f, indent=2)
    files.append("config.json")
    if config.vocab_size == RELEASE_VOCAB_SIZE + N_SPECIAL:
      files += _write_tokenizer(tmp, config.n_ctx)
    os.replace(tmp, out)  # onto a missing or empty directory (the CLI refuses a non-empty one)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return files


def _trained_head(path: str, config: ModelConfig, params: Mapping[str, Any]) -> Optional[dict]:
  """The head as trained, if ``path`` holds :func:`write_hf`'s copy and ``score`` is still exactly its fold
  (a model fine-tuned further in transformers has another ``score``, and keeps it)."""
  side = os.path.join(path, HF_HEAD_FILE)
  if not os.path.isfile(side):
    return None
  from safetensors.numpy import load_file
  head = load_file(side)
  try:
    folded = fold_bias_into_score(config, {**params, "head": head})
  except (ConversionError, KeyError, ValueError):
    return None
  return head if np.array_equal(folded, params["head"]["kernel"].T) else None


def _parse_size(text: str) -> int:
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
  if not m:
    raise ValueError("expected a size such as 500MB, 2GB or 1000000")
  unit = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9}[m.group(2)]
  return int(float(m.group(1)) * unit)


def _format_size(n: int) -> str:
  """What :func:`_parse_size` reads back: ``5GB`` for 5 * 10**9."""
  for unit, size in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
    if n and n % size == 0:
      return f"{n // size}{unit}"
  return str(n)


def check_out_dir(out: str, flag: str = "--out") -> None:
  """Refuses (one line, before any work) to write into a directory that already holds something."""
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    kind = "directory" if os.path.isdir(out) else "file"
    raise SystemExit(f"error: {flag}={out}: a non-empty {kind} is already there; choose a new path "
                     f"(nothing was written)")


PROG = "python -m gpt1_jax.convert"


def _define_flags(flag_values=None) -> None:
  """The command's flags, on ``flag_values`` (default absl's global ``FLAGS``)."""
  from absl import flags

  class SizeParser(flags.ArgumentParser):
    """``500MB``, ``2GB``, ``30KB``, ``1000000`` (bytes; K/M/G are powers of 1000)."""
    syntactic_help = "a size such as 500MB, 2GB or 1000000"

    def parse(self, argument):
      return argument if isinstance(argument, int) else _parse_size(argument)

    def flag_type(self):
      return "size"

  class SizeSerializer(flags.ArgumentSerializer):
    def serialize(self, value):
      return _format_size(value)

  fv = dict(flag_values=flags.FLAGS if flag_values is None else flag_values)
  flags.DEFINE_enum("from", None, ["hf", "openai"], "Import weights into a checkpoint (one of --from, --to).", **fv)
  flags.DEFINE_enum("to", None, ["hf"], "Export a checkpoint.", **fv)
  flags.DEFINE_string("hf_path", None, "--from=hf: saved Hugging Face directory, or a .safetensors / .bin file.", **fv)
  flags.DEFINE_string("openai_dir", None, "--from=openai: directory with params_shapes.json and params_*.npy.", **fv)
  flags.DEFINE_string("checkpoint", None, "--to=hf: a gpt1_jax weights checkpoint, training workdir or best/.", **fv)
  flags.DEFINE_string("out", None, "--from: checkpoint directory to write; --to=hf: the Hugging Face directory "
                      "to write.", required=True, **fv)
  flags.DEFINE_integer("n_head", None, "Default: config.json's, else 12.", **fv)
  flags.DEFINE_integer("seed", 0, "Seeds the appended special-token rows.", **fv)
  flags.DEFINE_bool("drop_head", False, "--to=hf: export a fine-tuned checkpoint's body as OpenAIGPTLMHeadModel, "
                    "without its head.", **fv)
  flags.DEFINE(SizeParser(), "max_shard_size", DEFAULT_MAX_SHARD_BYTES, "--to=hf: split the weights into files of "
               "at most this size (bytes; 500MB, 2GB: powers of 1000).", serializer=SizeSerializer(), **fv)


def _run(F, argv=(PROG,)) -> None:
  """The command, on parsed flags ``F``; ``argv``: what ``app.run`` leaves (positional arguments)."""
  from gpt1_jax import errors
  errors.no_arguments(argv)
  source, target = F["from"].value, F.to
  if source is not None and target is not None:
    raise SystemExit("error: --from and --to exclude each other")
  if source is None and target is None:
    raise SystemExit("error: give one of --from=hf|openai (import), --to=hf (export)")
  check_out_dir(F.out)

  if target == "hf":
    if not F.checkpoint:
      raise SystemExit("error: --to=hf needs --checkpoint")
    if not os.path.isdir(F.checkpoint):
      raise SystemExit(f"error: --checkpoint={F.checkpoint}: no such directory")
    from gpt1_jax.checkpoint import load_params
    config, params, meta = load_params(F.checkpoint, with_meta=True)
    try:
      task = None if F.drop_head else task_of(meta, params, os.path.abspath(F.checkpoint))
      clf_pdrop = float(((meta.get("config") or {}).get("task") or {}).get("clf_pdrop", 0.1))
      files = write_hf(F.out, config, params, task=task, clf_pdrop=clf_pdrop, max_shard_bytes=F.max_shard_size,
                       record={"source": os.path.abspath(F.checkpoint)})
    except ConversionError as e:
      raise SystemExit(f"error: {e}") from None
    print(f"wrote {hf_architecture(task)} ({config.num_params():,} parameters) to {os.path.abspath(F.out)}: "
          f"{', '.join(files)}", file=sys.stderr)
    return

  extra = {}
  if source == "hf":
    if not F.hf_path:
      raise SystemExit("error: --from=hf needs --hf_path")
    if not os.path.exists(F.hf_path):
      raise SystemExit(f"error: --hf_path={F.hf_path}: no such file or directory")
    config, params = from_hf_pretrained(F.hf_path, n_head=F.n_head, seed=F.seed, task=None)
    origin = os.path.abspath(F.hf_path)
    config_json = os.path.join(F.hf_path, "config.json")
    if os.path.isfile(config_json):
      with open(config_json) as f:
        task_name = (json.load(f).get(HF_RECORD_KEY) or {}).get("task")
      if task_name and "head" in params:
        extra["task"] = task_name  # what gpt1_jax.export and --to=hf read back
  else:
    if not F.openai_dir:
      raise SystemExit("error: --from=openai needs --openai_dir")
    config, params = from_openai_release(F.openai_dir, n_head=F.n_head or 12, seed=F.seed)
    origin = os.path.abspath(F.openai_dir)

  from gpt1_jax.checkpoint import save_params
  save_params(F.out, config, params, extra_meta={"converted_from": source, "source": origin,
                                                 "special_rows_seed": F.seed, **extra})
  print(f"wrote {config.num_params():,} parameters ({config.n_layer} layers, d={config.n_embd}, "
        f"vocab {config.vocab_size}) to {os.path.abspath(F.out)}", file=sys.stderr)


def main(argv=None) -> None:
  """``python -m gpt1_jax.convert ARGS`` from Python: ``main(["--to=hf", "--checkpoint=DIR", "--out=HF_DIR"])``.

  ``argv``: the flags, as on the command line (default ``sys.argv[1:]``), parsed into a ``FlagValues``
  of their own. Mistakes raise ``SystemExit("error: ...")`` before anything is written.
  """
  from gpt1_jax import errors
  _run(*errors.parse_own_flags(_define_flags, PROG, argv))


if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module
  # never clashes with another entry point's flags.
  from absl import app

  from gpt1_jax import errors
  _define_flags()
  app.run(errors.cli(errors.absl_main(_run)), flags_parser=errors.parse_flags_help_ok)
