"""OpenAI's original release (openai/finetune-transformer-lm, ``model/``): ``params_shapes.json`` and ten
``.npy`` shards, read into the Hugging Face naming of :mod:`.mapping` and from there into our tree."""

from __future__ import annotations

import json
import os

import numpy as np

from gpt1_jax.convert.mapping import LAYER_KEYS, ConversionError, from_hf
from gpt1_jax.model import ModelConfig

NUM_SHARDS = 10  # params_0.npy ... params_9.npy
ARRAYS_PER_LAYER = len(LAYER_KEYS)


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
  (_, d), (_, d_tok) = shapes[0], shapes[1]
  expected = [(1, d, 3 * d), (3 * d,), (1, d, d), (d,), (d,), (d,), (1, d, 4 * d), (4 * d,), (1, 4 * d, d), (d,), (d,),
              (d,)]
  if d_tok != d or len(shapes[0]) != 2 or len(shapes[1]) != 2:
    raise ConversionError(f"{path}: embedding shapes {shapes[0]}, {shapes[1]} are not [n_ctx, d], [vocab, d]")
  for j, shape in enumerate(shapes[2:]):
    if shape != expected[j % ARRAYS_PER_LAYER]:
      layer, k = divmod(j, ARRAYS_PER_LAYER)
      raise ConversionError(f"{path}: array {j + 2} (layer {layer} {LAYER_KEYS[k]}) has shape {list(shape)}, "
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
    out[f"h.{layer}.{LAYER_KEYS[k]}"] = a[0] if a.ndim == 3 else a
  return out


def from_openai_release(model_dir: str, *, n_head: int = 12, seed: int = 0,
                        **config_overrides) -> tuple[ModelConfig, dict]:
  """OpenAI's ``params_shapes.json`` + ``params_{0..9}.npy`` -> ``(ModelConfig, params)``."""
  return from_hf(read_openai_release(model_dir), n_head=n_head, seed=seed, **config_overrides)
