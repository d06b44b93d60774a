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

:func:`to_hf` writes the ``OpenAIGPTLMHeadModel`` layout, so a model trained
here can be loaded by ``transformers``. Converted weights are saved with
``gpt1_jax.checkpoint.save_params``::

    python -m gpt1_jax.convert --from=hf --hf_path=/path/to/openai-gpt --out=/tmp/gpt1
    python -m gpt1_jax.convert --from=openai --openai_dir=finetune-transformer-lm/model --out=/tmp/gpt1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Mapping, Optional

import numpy as np

from gpt1_jax.model import ModelConfig, unstack_layers

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
    elif key in _MC_HEAD:
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

  if task:
    if set(_MC_HEAD) - set(heads):
      raise ConversionError("task=True needs an OpenAIGPTDoubleHeadsModel state dict "
                            f"({', '.join(_MC_HEAD)}); not found")
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


def from_hf_pretrained(path: str, *, n_head: Optional[int] = None, seed: int = 0, task: bool = False,
                       **config_overrides) -> tuple[ModelConfig, dict]:
  """:func:`from_hf` on a saved model; ``n_head`` and the LayerNorm epsilon come from its config.json if present."""
  state, hf_config = load_hf_state_dict(path)
  hf_config = hf_config or {}
  afn = hf_config.get("afn", "gelu")
  if afn != "gelu":  # transformers' OpenAI-GPT maps "gelu" to the tanh form (its gelu_new), GPT-1's
    raise ConversionError(f"{path}: afn={afn!r}; only GPT-1's tanh GELU (transformers' afn='gelu') is supported")
  if "layer_norm_epsilon" in hf_config:
    config_overrides.setdefault("layer_norm_epsilon", float(hf_config["layer_norm_epsilon"]))
  n_head = n_head or int(hf_config.get("n_head", 12))
  return from_hf(state, n_head=n_head, seed=seed, task=task, **config_overrides)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m gpt1_jax.convert", description=__doc__.split("\n\n")[0])
  parser.add_argument("--from", dest="source", choices=("hf", "openai"), required=True)
  parser.add_argument("--hf_path", help="saved Hugging Face directory, or a .safetensors / .bin file")
  parser.add_argument("--openai_dir", help="directory with params_shapes.json and params_0.npy .. params_9.npy")
  parser.add_argument("--out", required=True, help="checkpoint directory to write (gpt1_jax.checkpoint.save_params)")
  parser.add_argument("--n_head", type=int, default=None, help="default: config.json's, else 12")
  parser.add_argument("--seed", type=int, default=0, help="seeds the appended special-token rows")
  args = parser.parse_args(argv)

  if args.source == "hf":
    if not args.hf_path:
      parser.error("--from=hf needs --hf_path")
    config, params = from_hf_pretrained(args.hf_path, n_head=args.n_head, seed=args.seed)
    source = os.path.abspath(args.hf_path)
  else:
    if not args.openai_dir:
      parser.error("--from=openai needs --openai_dir")
    config, params = from_openai_release(args.openai_dir, n_head=args.n_head or 12, seed=args.seed)
    source = os.path.abspath(args.openai_dir)

  from gpt1_jax.checkpoint import save_params
  save_params(args.out, config, params, extra_meta={"converted_from": args.source, "source": source,
                                                    "special_rows_seed": args.seed})
  print(f"wrote {config.num_params():,} parameters ({config.n_layer} layers, d={config.n_embd}, "
        f"vocab {config.vocab_size}) to {os.path.abspath(args.out)}", file=sys.stderr)


if __name__ == "__main__":
  main()
