"""What a benchmark run measures and at what size: ``Shape``, ``Options`` and the train suite's shapes.

The benchmark is a tool beside the library: it reads model shapes from the checkout's
``configs/`` and corpora from its ``data/``, so it runs from a clone, not from an installed wheel.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

from gpt1_jax.config import model_config
from gpt1_jax.model import ModelConfig
from gpt1_jax.project import load_config, root

REPO = root()
SST2_DIR = os.path.join(REPO, "data", "sst2")
CORPUS = os.path.join(SST2_DIR, "unlabelled.txt")
SUITES = ("train", "pipeline", "tokenizer", "inference")


@dataclasses.dataclass(frozen=True)
class Shape:
  """One model configuration at one batch shape."""

  name: str
  model: ModelConfig
  batch: int
  seq_len: int
  note: str = ""

  def describe(self) -> str:
    m = self.model
    extra = "".join(f" {k}={getattr(m, k)}" for k, default in (("remat", "none"), ("scan_layers", False))
                    if getattr(m, k) != default)
    return (f"{self.name}: n_layer={m.n_layer} n_embd={m.n_embd} n_head={m.n_head} T={self.seq_len} "
            f"batch={self.batch} vocab={m.vocab_size} (padded {m.padded_vocab_size}) {m.dtype} dropout "
            f"{m.embd_pdrop}/{m.attn_pdrop}/{m.resid_pdrop} (embd/attn/resid) attention={m.attention}{extra}" +
            (f"; {self.note}" if self.note else ""))


@dataclasses.dataclass
class Options:
  """Everything a run of the CPU-sized suites measures and at what size (flags map onto these; tests shrink them)."""

  suites: tuple = SUITES
  shapes: tuple = ()  # of Shape; the train suite's shapes
  steps: int = 5
  warmup: int = 2
  hf: bool = True  # run the Hugging Face twin of each train shape
  hf_threads: int = 0  # torch.set_num_threads (0: every core)
  breakdown: bool = True  # time forward / backward / optimiser / output layer of our step
  peak_n: Optional[int] = None  # matmul size for the measured peak (None: perf's default)
  dtype: str = "float32"
  corpus: str = CORPUS
  tokenizer_lines: int = 0  # 0: every line of the corpus
  lm_batch: int = 64
  lm_seq_len: int = 512
  pipeline_seconds: float = 3.0  # each pipeline is drained for about this long
  task_dir: str = SST2_DIR
  task_batch: int = 32
  task_max_len: int = 64  # the tiny fine-tuning configs' task.max_len (= model.n_ctx)
  inference_model: Any = None  # ModelConfig; None: the tiny config
  classify_batch: int = 64
  generate_batch: int = 8
  prompt_len: int = 8
  new_tokens: int = 32
  inference_reps: int = 5


def tiny_model(dtype: str = "float32") -> ModelConfig:
  return model_config(load_config("pretrain", "tiny").model).replace(dtype=dtype)


def make_shapes(which: str, *, on_cpu: bool, layers_cpu: int, batch: int, dtype: str, attention: str,
                vocab_pad: int) -> tuple:
  """The train suite's shapes: ``tiny`` (the demo: its config's batch x 64) and/or ``gpt1`` (GPT-1's width)."""
  fast_attn = {} if attention == "xla" else {"attention": attention, "attn_pdrop": 0.0}
  shapes = []
  if which in ("tiny", "both"):
    tiny = load_config("pretrain", "tiny")
    m = model_config(tiny.model).replace(dtype=dtype, **fast_attn)
    b = int(tiny.train.batch_size)
    shapes.append(Shape("tiny", m, b, m.n_ctx, f"configs/pretrain.py:tiny, its batch {b}"))
  if which in ("gpt1", "both"):
    m = ModelConfig(dtype=dtype, vocab_pad_multiple=vocab_pad or (1 if on_cpu else 128), **fast_attn)
    note = "GPT-1 as released"
    if on_cpu:
      m = m.replace(n_layer=layers_cpu)
      note = f"GPT-1's width with {layers_cpu} of its 12 blocks (CPU)"
    shapes.append(Shape("gpt1", m, batch or (2 if on_cpu else 16), m.n_ctx, note))
  if not shapes:
    raise ValueError(f"--shape={which!r}: expected tiny, gpt1 or both")
  return tuple(shapes)
