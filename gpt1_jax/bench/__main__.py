"""``python -m gpt1_jax.bench``: the command line (see the package docstring for the suites)."""

from __future__ import annotations

import os
import shlex
import sys

from absl import app, flags

from gpt1_jax.bench import gpu_check, report, suite
from gpt1_jax.bench.machine import on_cpu
from gpt1_jax.bench.options import SUITES, Options, make_shapes

FLAGS = flags.FLAGS
GPU_SUITE = "gpu"


def define_flags():
  flags.DEFINE_string(
      "out", "bench.json", "Where to write the JSON results (--suite=gpu: also a .md beside it; "
      "default there gpu_check.json).")
  flags.DEFINE_string("suite", "all", "all, or a comma list of: " + ", ".join(SUITES) + "; or gpu (alone)")
  flags.DEFINE_enum("shape", "both", ["tiny", "gpt1", "both"], "Train-step shapes.")
  flags.DEFINE_integer("layers_cpu", 2, "Blocks of the gpt1 shape on CPU (full width; 12 on accelerators).")
  flags.DEFINE_integer("batch", 0, "Batch of the gpt1 shape (0: 2 on CPU, 16 on accelerators).")
  flags.DEFINE_integer("steps", 10, "Timed train steps per implementation and shape (median and fastest reported).")
  flags.DEFINE_integer("warmup", 2, "Untimed steps before them.")
  flags.DEFINE_string("dtype", "float32", "Our compute dtype (bfloat16 on GPU/TPU); params stay float32.")
  flags.DEFINE_enum("attention", "xla", ["xla", "dot_product", "cudnn"],
                    "Our attention; anything but xla sets attn_pdrop=0 (no dropout on the probabilities).")
  flags.DEFINE_integer("vocab_pad", 0, "vocab_pad_multiple of the gpt1 shape (0: 1 on CPU, 128 on accelerators).")
  flags.DEFINE_bool("hf", True, "Also run Hugging Face's OpenAIGPTLMHeadModel at each train shape.")
  flags.DEFINE_integer(
      "hf_threads", 0, "torch.set_num_threads for Hugging Face's step (0: every core). Its "
      "OpenMP barriers stall when other processes hold the cores: compare on an idle machine.")
  flags.DEFINE_bool("breakdown", True, "Time forward / backward / optimiser / output layer of our step.")
  flags.DEFINE_integer("tokenizer_lines", 0, "Lines of the corpus to tokenise (0: all).")
  # --suite=gpu
  flags.DEFINE_bool("quick", False, "--suite=gpu: every row at tiny shapes (runs on CPU in a minute or two).")
  flags.DEFINE_float("budget", 420.0, "--suite=gpu: time budget in seconds; rows that no longer fit are skipped.")
  flags.DEFINE_list("gpu_batches", [], "--suite=gpu: batch sizes of the speed rows (default 8,16,32; quick 2,4).")
  flags.DEFINE_list("gpu_rows", [], "--suite=gpu: run only these rows (names as in the JSON).")
  flags.DEFINE_string(
      "data_dir", "", "--suite=gpu: token store for the pretraining rows (default: the shipped "
      "data/imdb/store_first1000).")
  flags.DEFINE_string(
      "work_dir", "", "--suite=gpu: where pretraining runs, logs and the profile trace go "
      "(default: a temporary directory, removed at the end).")
  flags.DEFINE_integer("pretrain_steps", 0, "--suite=gpu: steps of the pretraining rows (0: 300; quick 40).")
  flags.DEFINE_bool("hf_compile", True, "--suite=gpu: also time Hugging Face's model under torch.compile.")


def _command() -> str:
  return ("python -m gpt1_jax.bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])).strip()


def _gpu(argv_suites):
  if len(argv_suites) > 1:
    raise app.UsageError("--suite=gpu runs alone")
  # Hugging Face's rows run in a subprocess beside this one: JAX must leave it part of the GPU.
  # (Read when the first device is touched, which is below.)
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
  opts = gpu_check.GpuOptions(quick=FLAGS.quick, budget_s=FLAGS.budget,
                              batches=tuple(int(b) for b in FLAGS.gpu_batches), steps=FLAGS.steps, warmup=FLAGS.warmup,
                              hf=FLAGS.hf, hf_compile=FLAGS.hf_compile, data_dir=FLAGS.data_dir,
                              work_dir=FLAGS.work_dir, pretrain_steps=FLAGS.pretrain_steps, rows=tuple(FLAGS.gpu_rows))
  out = FLAGS.out if FLAGS["out"].present else "gpu_check.json"
  result = gpu_check.run_check(opts, _command())
  md = gpu_check.write_outputs(result, out)
  with open(md) as f:
    print(f.read())
  print(f"wrote {out} and {md}")
  failed = result["summary"]["correctness_fail"]
  if failed:
    print(f"correctness rows that did not pass: {', '.join(failed)}", file=sys.stderr)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  suites = tuple(FLAGS.suite.split(","))
  if GPU_SUITE in suites:
    return _gpu(suites)
  opts = Options(
      suites=SUITES if FLAGS.suite == "all" else suites, steps=FLAGS.steps, warmup=FLAGS.warmup, hf=FLAGS.hf,
      hf_threads=FLAGS.hf_threads, breakdown=FLAGS.breakdown, dtype=FLAGS.dtype, tokenizer_lines=FLAGS.tokenizer_lines,
      shapes=make_shapes(FLAGS.shape, on_cpu=on_cpu(), layers_cpu=FLAGS.layers_cpu, batch=FLAGS.batch,
                         dtype=FLAGS.dtype, attention=FLAGS.attention, vocab_pad=FLAGS.vocab_pad))
  result = suite.run(opts, _command())
  print(report.format_report(result))
  report.write_json(result, FLAGS.out)
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
