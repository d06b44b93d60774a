"""Benchmarks: the train step against Hugging Face, the input pipelines, the tokenizer, inference; the GPU check.

    python -m gpt1_jax.bench                                   # everything, CPU-sized (~5 min on 2 cores)
    python -m gpt1_jax.bench --suite=train --shape=tiny --steps=10
    python -m gpt1_jax.bench --shape=gpt1 --dtype=bfloat16 --attention=cudnn --batch=16   # one GPU
    python -m gpt1_jax.bench --suite=gpu --out=out/gpu_check.json   # the GPU check (launch/gpu_check.sh)
    python -m gpt1_jax.bench --suite=gpu --quick                    # the same rows at tiny shapes, on CPU

Prints a table and writes ``--out`` (JSON): the machine (CPU model, cores, device kind), the
library versions, the date, the command and every figure.

* **train** (``train.py``): one optimiser step of our ``train_step`` (LM objective, dropout on,
  AdamW with global-norm clipping) at the ``tiny`` demo shape and at GPT-1's width, next to the
  same step in Hugging Face's ``OpenAIGPTLMHeadModel`` (``hf_reference.py``, torch) at the same
  shape, batch and optimiser. Step time is the median of ``--steps`` steps after ``--warmup``. MFU
  is model FLOPs (:func:`gpt1_jax.perf.flops_per_token`) per second over a matmul peak measured in
  the same run (``machine.py``; on GPU/TPU over the datasheet peak too). On CPU the GPT-1 width
  runs with ``--layers_cpu`` blocks so a step takes seconds, not a minute.
* **pipeline** (``pipelines.py``): tokens/s the LM pipeline (packed 512-token windows, batch 64)
  and a fine-tuning pipeline (SST-2, the tiny fine-tuning shape) deliver, as a multiple of what
  the train step consumes.
* **tokenizer** (``tokenizer.py``): ``GPT1Tokenizer.encode_batch`` (fresh instance, cold memo)
  against Hugging Face's ``OpenAIGPTTokenizer`` on the sentences of ``data/sst2/unlabelled.txt``.
* **inference** (``inference.py``): a classification forward (``GPT1ForTask``) and KV-cache sampling.
* **gpu** (``gpu_check.py``): the one-GPU check of issue 18: correctness rows (``correctness.py``,
  ``pretraining.py``), GPT-1 117M speed rows against Hugging Face eager and ``torch.compile``,
  and a profile summary (``profile.py``), within a time budget; JSON and a Markdown table.

Nothing here asserts a speed: ``BENCHMARKS.md`` records a run and the project's targets.
``report.py`` formats the tables; ``__main__.py`` is the command line.
"""

from gpt1_jax.bench.options import CORPUS, REPO, SST2_DIR, SUITES, Options, Shape, load_config, make_shapes, tiny_model
from gpt1_jax.bench.report import format_report, write_json
from gpt1_jax.bench.suite import run
from gpt1_jax.bench.train import FLOP_FORMULA, OPTIMIZER, prepare_ours, speed_ratios, synthetic_lm_batches

__all__ = [
    "CORPUS", "FLOP_FORMULA", "OPTIMIZER", "Options", "REPO", "SST2_DIR", "SUITES", "Shape", "format_report",
    "load_config", "make_shapes", "prepare_ours", "run", "speed_ratios", "synthetic_lm_batches", "tiny_model",
    "write_json"
]
