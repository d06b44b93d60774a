"""Our parameter tree <-> a Hugging Face OpenAI-GPT state dict: the one mapping every format goes through.

:func:`from_hf` takes ``OpenAIGPTModel`` / ``OpenAIGPTLMHeadModel`` / ``OpenAIGPTDoubleHeadsModel`` state
dicts (torch tensors or arrays) and appends the three fine-tuning rows (``_start_``, ``_delimiter_``,
``_classify_``), drawn N(0, 0.02) from ``seed`` as the original ``train.py`` does; :func:`to_hf` goes back.
OpenAI's release (:mod:`.openai`) is read into this naming first, and a saved directory
(:mod:`.hf_dir`) is read or written around it.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import numpy as np

from gpt1_jax.model import ModelConfig, unstack_layers

# The BPE vocabulary of the release; the three fine-tuning tokens follow it.
RELEASE_VOCAB_SIZE = 40478
N_SPECIAL = 3
SPECIAL_INIT_STD = 0.02

# The original's per-layer array order (`model.py` of openai/finetune-transformer-lm
# builds its variables in this order), named as Hugging Face names them.
LAYER_KEYS = ("attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias", "ln_1.weight",
              "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias", "ln_2.weight",
              "ln_2.bias")

# Buffers some transformers versions saved with the weights (the causal mask,
# position ids): derived data, not parameters.
_IGNORED = re.compile(r"^(h\.\d+\.attn\.(bias|masked_bias)|position_ids)$")
MC_HEAD = ("multiple_choice_head.summary.weight", "multiple_choice_head.summary.bias")
SCORE_KEY = "score.weight"  # OpenAIGPTForSequenceClassification's head: [num_labels, D], no bias


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
    elif key in MC_HEAD or key == SCORE_KEY:
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
  expected = {f"h.{i}.{k}" for i in layer_ids for k in LAYER_KEYS}
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
        "ln_1": {
            "scale": get(i, "ln_1.weight", (d,)),
            "bias": get(i, "ln_1.bias", (d,))
        },
        "mlp": {
            "fc_kernel": get(i, "mlp.c_fc.weight", (d, 4 * d)),
            "fc_bias": get(i, "mlp.c_fc.bias", (4 * d,)),
            "proj_kernel": get(i, "mlp.c_proj.weight", (4 * d, d)),
            "proj_bias": get(i, "mlp.c_proj.bias", (d,)),
        },
        "ln_2": {
            "scale": get(i, "ln_2.weight", (d,)),
            "bias": get(i, "ln_2.bias", (d,))
        },
    }
  params = {"transformer": {"embed": {"tokens": tokens, "positions": positions}, "decoder": decoder}}

  if task and SCORE_KEY in heads:
    w = heads[SCORE_KEY]
    if w.ndim != 2 or w.shape[1] != d:
      raise ConversionError(f"score.weight is {w.shape}, expected (num_labels, {d})")
    # HF's sequence-classification head has no bias; ours with a zero bias computes the same.
    params["head"] = {"kernel": np.ascontiguousarray(w.T), "bias": np.zeros(w.shape[0], np.float32)}
  elif task:
    if set(MC_HEAD) - set(heads):
      raise ConversionError("task=True needs an OpenAIGPTDoubleHeadsModel state dict "
                            f"({', '.join(MC_HEAD)}) or an OpenAIGPTForSequenceClassification one "
                            f"({SCORE_KEY}); not found")
    w, b = heads[MC_HEAD[0]], heads[MC_HEAD[1]]
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
    arrays = (a["qkv_kernel"], a["qkv_bias"], a["out_kernel"], a["out_bias"], layer["ln_1"]["scale"],
              layer["ln_1"]["bias"], m["fc_kernel"], m["fc_bias"], m["proj_kernel"], m["proj_bias"],
              layer["ln_2"]["scale"], layer["ln_2"]["bias"])
    shapes = ((d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,), (d,), (d,))
    for key, x, shape in zip(LAYER_KEYS, arrays, shapes):
      out[f"transformer.h.{i}.{key}"] = np.array(x, np.float32).reshape(shape)
  out["lm_head.weight"] = tokens.copy()
  if task:
    head = params["head"]
    out[MC_HEAD[0]] = np.array(head["kernel"], np.float32).T.reshape(1, d)
    out[MC_HEAD[1]] = np.array(head["bias"], np.float32).reshape(1)
  return out
