"""A Hugging Face model directory, in and out: :func:`from_hf_pretrained` reads one (a directory,
``*.safetensors`` or ``*.bin``, sharded or not), :func:`write_hf` writes one that ``transformers`` loads
(``config.json``, safetensors weights, GPT-1's tokenizer files) as the class the task head maps to
(:func:`hf_architecture`), and what :func:`write_hf` wrote comes back exactly."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Mapping, Optional

import numpy as np

import jax

from gpt1_jax import task_types
from gpt1_jax.data import tasks
from gpt1_jax.model import ModelConfig, stack_layers
from gpt1_jax.tokenizer import SPECIAL_TOKENS
from gpt1_jax.convert.mapping import (MC_HEAD, N_SPECIAL, RELEASE_VOCAB_SIZE, SCORE_KEY, ConversionError, from_hf,
                                      to_hf)


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
  for single, index in (("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin",
                                                                                "pytorch_model.bin.index.json")):
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
  for key in ("embd_pdrop", "attn_pdrop", "resid_pdrop", "initializer_range", "activation", "dtype", "param_dtype",
              "attention", "remat", "vocab_pad_multiple"):
    if key in recorded:
      config_overrides.setdefault(key, recorded[key])
  scan = bool(config_overrides.pop("scan_layers", recorded.get("scan_layers", False)))
  if task is None:
    task = any(k in state for k in MC_HEAD + (SCORE_KEY,))
  n_head = n_head or int(hf_config.get("n_head", 12))
  config, params = from_hf(state, n_head=n_head, seed=seed, task=task, **config_overrides)
  if task and SCORE_KEY in state and os.path.isdir(path):
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
# The transformers class computing a head, by how the head reads the _classify_ states
# (``task_types.TaskType.pooling``): one sequence, or a score per candidate.
HF_CLASSES = {"first": "OpenAIGPTForSequenceClassification", "each": "OpenAIGPTDoubleHeadsModel"}
# Task types whose heads sum the states of several sequences before the linear layer (Section 3.3):
# one Hugging Face forward pass scores one sequence, so no class computes them.
UNMAPPED_HEADS = {
    t.name: "sums the _classify_ states of both sentence orderings before its linear layer"
    for t in task_types.TYPES.values()
    if t.pooling not in HF_CLASSES
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
      "architectures": [architecture],
      "model_type": "openai-gpt",
      "dtype": "float32",
      "vocab_size": config.vocab_size,
      "n_positions": config.n_ctx,
      "n_embd": config.n_embd,
      "n_layer": config.n_layer,
      "n_head": config.n_head,
      "afn": "gelu",  # transformers' "gelu" is the tanh form
      "resid_pdrop": config.resid_pdrop,
      "embd_pdrop": config.embd_pdrop,
      "attn_pdrop": config.attn_pdrop,
      "layer_norm_epsilon": config.layer_norm_epsilon,
      "initializer_range": config.initializer_range,
      # The double-heads summary: a linear layer on the state at mc_token_ids, one score per candidate.
      "summary_type": "cls_index",
      "summary_use_proj": True,
      "summary_activation": None,
      "summary_proj_to_labels": True,
      "summary_first_dropout": clf_pdrop,
      "tie_word_embeddings": True,
      HF_RECORD_KEY: record,
  }
  if architecture == "OpenAIGPTForSequenceClassification":
    labels = list(task.labels)
    out.update(
        id2label={
            str(i): n for i, n in enumerate(labels)
        },
        label2id={
            n: i for i, n in enumerate(labels)
        },
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
    return {
        "content": content,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "single_word": False,
        "special": True
    }

  # Id 0 (<unk>) is also our padding id; special tokens are matched whole, before the BPE.
  tokenizer_config = {
      "tokenizer_class": "OpenAIGPTTokenizer",
      "unk_token": "<unk>",
      "pad_token": "<unk>",
      "model_max_length": n_ctx,
      "padding_side": "right",
      "added_tokens_decoder": {
          "0": added("<unk>"),
          **{
              str(i): added(t) for t, i in special_ids.items()
          }
      },
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
  try:
    return tasks.get_task(name)
  except ValueError as e:
    raise ConversionError(f"{where}: {e}") from None


def hf_architecture(task) -> str:
  """The transformers class a task's head exports as; ConversionError for heads with no counterpart."""
  if task is None:
    return "OpenAIGPTLMHeadModel"
  if task.kind.pooling not in HF_CLASSES:
    raise ConversionError(f"task {task.name!r} ({task.type}): its head {UNMAPPED_HEADS[task.type]}, which no "
                          f"transformers OpenAI-GPT class computes; export the fine-tuned body alone with "
                          f"--drop_head, or the whole model with python -m gpt1_jax.export")
  return HF_CLASSES[task.kind.pooling]


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
  at the end, so a failure leaves no partial ``out``; modes follow the umask.
  Returns the file names.
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
    tensors[SCORE_KEY] = fold_bias_into_score(config, params)
    # The folded score is exact as a function, not as bits: the head as trained rides along (transformers
    # ignores the file) so that --from=hf gives back our parameters exactly.
    head_file = {"kernel": np.array(head["kernel"], np.float32), "bias": np.array(head["bias"], np.float32)}
  record = {
      "model": dataclasses.asdict(config),
      "task": None if task is None else task.name,
      "task_type": None if task is None else task.type,
      **(record or {})
  }

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
    _honour_umask(tmp)
    os.replace(tmp, out)  # onto a missing or empty directory (the CLI refuses a non-empty one)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return files


def _honour_umask(directory: str):
  """The modes a plain ``mkdir`` and ``open`` would give: ``mkdtemp`` makes the directory 0700 and
  safetensors writes its files 0600, which would keep a serving account or a colleague out."""
  mask = os.umask(0)
  os.umask(mask)  # reading the umask means setting it: put it straight back
  os.chmod(directory, 0o777 & ~mask)
  for name in os.listdir(directory):
    os.chmod(os.path.join(directory, name), 0o666 & ~mask)


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
