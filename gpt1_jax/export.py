"""A fine-tuned model as one serialised ``jax.export`` artifact: runs with JAX alone.

The artifact holds the inference function with the weights baked in as
constants: ``(input_ids, attention_mask) -> task logits``, both inputs int32
``[batch, K, length]`` (K = the task's transformed sequences per example:
1 for classification and entailment, 2 orderings for similarity and
regression, one per candidate for multiple choice), right-padded. ``batch``
and ``length`` are symbolic (``length <= n_ctx``), so one file serves every
batch and sequence length without re-exporting. The head reads each
sequence's last real token, where the input transformation puts
``_classify_`` (Section 3.3); a multiple-choice candidate with an all-zero
mask gets no probability, as in training. A checkpoint without a task head
exports the language model: ``[batch, length]`` in, ``[batch, length, vocab]``
logits out.

Loading it needs neither this package nor Flax::

    from jax import export
    with open(FILE, "rb") as f:
      fn = export.deserialize(f.read())
    logits = fn.call(input_ids, attention_mask)

The length is at most ``max_length`` (the model's ``n_ctx``, 512 for GPT-1, in ``FILE.json``):
the position table has that many rows. A longer input fails inside JAX with the opaque
``Error refining shapes``; truncate first, or load with :func:`load`, which checks the
inputs against ``FILE.json`` (rank, K, length <= ``max_length``) and says which limit was
passed before calling the same function.

``FILE.json`` beside it records the signature (``max_length`` included), the task and its
label names, and the special token ids. Tokenise with ``gpt1_jax.tokenizer`` (or the
same ids from elsewhere) and apply the task's input transformation
(``gpt1_jax.data.transforms``)::

    python -m gpt1_jax.export --checkpoint=workdirs/sst2/best --out=/tmp/sst2.jaxexport
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt1_jax import convert, errors, weights
from gpt1_jax.checkpoint import load_params
from gpt1_jax.convert import N_SPECIAL
from gpt1_jax.model import GPT1ForTask, GPT1LM, ModelConfig
from gpt1_jax.tokenizer import SPECIAL_TOKENS

# Lowered for every platform JAX serves from; the artifact runs on whichever the loader has.
DEFAULT_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def inference_fn(config: ModelConfig, params: Mapping[str, Any], task=None):
  """``(input_ids, attention_mask) -> logits`` with ``params`` closed over (they become constants).

  ``task`` (a ``gpt1_jax.data.tasks.Task``) selects ``GPT1ForTask``; ``None``
  the language model. The result is exactly what :class:`GPT1ForTask` (or
  :class:`GPT1LM`) computes at evaluation time with ``cls_index`` = the last
  position whose mask is 1.
  """
  params = jax.tree.map(jnp.asarray, dict(params))
  params["transformer"] = weights.restack(params["transformer"], config)
  if task is None:
    model = GPT1LM(config)
    variables = {"params": {"transformer": params["transformer"]}}

    def lm(input_ids, attention_mask):
      return model.apply(variables, input_ids, attention_mask).astype(jnp.float32)

    return lm

  model = GPT1ForTask(config, task.type, task.num_labels)
  variables = {"params": {"transformer": params["transformer"], "head": params["head"]}}

  def classify(input_ids, attention_mask):
    lengths = jnp.sum(attention_mask, axis=-1)
    cls_index = jnp.maximum(lengths - 1, 0)
    logits, _ = model.apply(variables, input_ids, attention_mask, cls_index)
    return task.kind.mask_absent(logits, lengths > 0, jnp)  # a candidate with no tokens is absent

  return classify


def export_model(config: ModelConfig, params: Mapping[str, Any], task=None, *,
                 platforms: Sequence[str] = DEFAULT_PLATFORMS):
  """The ``jax.export.Exported`` of :func:`inference_fn`, batch and length symbolic."""
  fn = inference_fn(config, params, task)
  # length <= n_ctx lets the position table's bound check be decided at export time.
  if task is None:
    shape = jax.export.symbolic_shape("batch, length", constraints=(f"length <= {config.n_ctx}",))
  else:
    b, t = jax.export.symbolic_shape("batch, length", constraints=(f"length <= {config.n_ctx}",))
    shape = (b, task.num_sequences, t)
  spec = jax.ShapeDtypeStruct(shape, jnp.int32)
  return jax.export.export(jax.jit(fn), platforms=tuple(platforms))(spec, spec)


def signature(config: ModelConfig, task=None) -> dict:
  first = config.vocab_size - N_SPECIAL
  out = {
      "inputs": {
          "input_ids": "int32",
          "attention_mask": "int32"
      },
      "max_length": config.n_ctx,
      "vocab_size": config.vocab_size,
      "pad_id": 0,
      "special_tokens": {
          t: first + i for i, t in enumerate(SPECIAL_TOKENS)
      },
      "task": None if task is None else task.name,
      "task_type": None if task is None else task.type,
  }
  if task is None:
    out.update(input_shape="[batch, length]", output="language-model logits [batch, length, vocab_size], float32")
  else:
    k = task.num_sequences
    out.update(input_shape=f"[batch, {k}, length] (right-padded; the last real token of each is _classify_)",
               labels=None if task.labels is None else list(task.labels),
               output=task.kind.output_description(k, task.num_labels))
  return out


class Served:
  """A loaded artifact (:func:`load`): ``served(input_ids, attention_mask) -> logits``, the inputs
  checked against the signature first, so a length over ``max_length`` is a ``ValueError`` that
  says so instead of JAX's ``Error refining shapes``."""

  def __init__(self, exported, signature: dict, path: str = "the artifact"):
    self.exported, self.signature, self.path = exported, signature, path
    self.max_length = int(signature["max_length"])
    # Everything but the symbolic batch and length: () for the LM, (K,) for a task.
    self._middle = tuple(exported.in_avals[0].shape[1:-1])

  def check(self, input_ids, attention_mask) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = np.asarray(input_ids), np.asarray(attention_mask)
    expected = self.signature["input_shape"]
    if ids.shape != mask.shape:
      raise ValueError(f"{self.path}: input_ids {ids.shape} and attention_mask {mask.shape} differ in shape; "
                       f"expected {expected}")
    if ids.ndim != len(self._middle) + 2 or ids.shape[1:-1] != self._middle:
      raise ValueError(f"{self.path}: inputs of shape {ids.shape}; expected {expected}")
    if not 1 <= ids.shape[-1] <= self.max_length:
      raise ValueError(f"{self.path}: input length {ids.shape[-1]} is outside 1..{self.max_length}: the model's "
                       f"context (n_ctx, max_length in its .json) is {self.max_length} tokens; truncate the "
                       f"input to fit")
    return ids.astype(np.int32), mask.astype(np.int32)

  def __call__(self, input_ids, attention_mask):
    return self.exported.call(*self.check(input_ids, attention_mask))


def load(path: str) -> Served:
  """The artifact at ``path`` with its signature (``path + ".json"``), as a checked callable."""
  with open(path, "rb") as f:
    exported = jax.export.deserialize(f.read())
  with open(path + ".json") as f:
    sig = json.load(f)
  return Served(exported, sig, path)


PROG = "python -m gpt1_jax.export"


def define_flags(flag_values=None) -> None:
  """The command's flags, on ``flag_values`` (default absl's global ``FLAGS``)."""
  from absl import flags
  fv = dict(flag_values=flags.FLAGS if flag_values is None else flag_values)
  flags.DEFINE_string("checkpoint", None, "A gpt1_jax weights checkpoint, training workdir or best/.", required=True,
                      **fv)
  flags.DEFINE_string("out", None, "File to write (FILE.json beside it describes the signature).", required=True, **fv)
  flags.DEFINE_string("platforms", ",".join(DEFAULT_PLATFORMS), "Comma-separated platforms to lower for "
                      f"(some of {', '.join(DEFAULT_PLATFORMS)}).", **fv)
  flags.DEFINE_string("dtype", None, "Compute dtype (default: the checkpoint's, e.g. float32).", **fv)
  flags.DEFINE_bool("lm", False, "Export the language model even if there is a task head.", **fv)


def _run(args, argv=(PROG,)) -> None:
  """The command, on parsed flags ``args``; ``argv``: what ``app.run`` leaves (positional arguments)."""
  errors.no_arguments(argv)
  for path in (args.out, args.out + ".json"):
    if os.path.exists(path):
      raise SystemExit(f"error: --out={args.out}: {path} already exists; choose a new path (nothing was written)")
  if not os.path.isdir(args.checkpoint):
    raise SystemExit(f"error: --checkpoint={args.checkpoint}: no such directory")
  platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
  unknown = sorted(set(platforms) - set(DEFAULT_PLATFORMS))
  if unknown or not platforms:
    raise SystemExit(f"error: --platforms={args.platforms}: expected some of {', '.join(DEFAULT_PLATFORMS)}")

  config, params, meta = load_params(args.checkpoint, with_meta=True)
  try:
    task = None if args.lm else convert.task_of(meta, params, os.path.abspath(args.checkpoint))
  except convert.ConversionError as e:
    raise SystemExit(f"error: {e}") from None
  # Dropout is off at inference anyway; zero rates also let a fused-attention config validate.
  config = config.replace(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
  if args.dtype:
    config = config.replace(dtype=args.dtype)
  if task is not None and "head" not in params:
    raise SystemExit(f"error: --checkpoint={args.checkpoint}: task {task.name!r} but no head in the weights")

  exported = export_model(config, params, task, platforms=platforms)
  data = exported.serialize()
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  tmp = args.out + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  sig = {
      **signature(config, task), "platforms": list(platforms),
      "dtype": config.dtype,
      "source": os.path.abspath(args.checkpoint),
      "step": meta.get("step")
  }
  with open(args.out + ".json.tmp", "w") as f:
    json.dump(sig, f, indent=2)
  os.replace(tmp, args.out)
  os.replace(args.out + ".json.tmp", args.out + ".json")
  what = "language model" if task is None else f"{task.name} ({task.type})"
  print(
      f"wrote {what}, {len(data) / 1e6:.1f} MB, for {', '.join(platforms)}, to {os.path.abspath(args.out)} "
      f"(signature: {args.out}.json)", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """``python -m gpt1_jax.export ARGS`` from Python: ``main(["--checkpoint=DIR", "--out=FILE"])``.

  ``argv``: the flags, as on the command line (default ``sys.argv[1:]``), parsed into a ``FlagValues``
  of their own. Mistakes raise ``SystemExit("error: ...")`` before anything is written.
  """
  _run(*errors.parse_own_flags(define_flags, PROG, argv))


if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module
  # never clashes with another entry point's flags.
  from absl import app

  from gpt1_jax import errors
  define_flags()
  app.run(errors.cli(errors.absl_main(_run)), flags_parser=errors.parse_flags_help_ok)
