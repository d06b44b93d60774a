"""A run of the CPU-sized suites (train, pipeline, tokenizer, inference): their order and the result's header."""

from __future__ import annotations

import dataclasses
import datetime
import resource
import time
from typing import Any

from gpt1_jax import perf
from gpt1_jax.bench.inference import inference_suite
from gpt1_jax.bench.machine import load_average, log, machine_info, on_cpu, versions
from gpt1_jax.bench.options import SUITES, Options
from gpt1_jax.bench.pipelines import pipeline_suite
from gpt1_jax.bench.tokenizer import tokenizer_suite
from gpt1_jax.bench.train import COMPARISON_NOTES, FLOP_FORMULA, OPTIMIZER, train_suite


def header(command: str) -> dict:
  """What every result starts with: the command, the date, the machine and the library versions."""
  return {
      "command": command,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": machine_info(),
      "versions": versions(),
      "load_average_start": load_average()
  }


def run(opts: Options, command: str = "") -> dict:
  unknown = set(opts.suites) - set(SUITES)
  if unknown:
    raise ValueError(f"unknown suites {sorted(unknown)}; choose from {SUITES}")
  t_start = time.perf_counter()
  result: dict[str, Any] = {
      **header(command),
      "settings": {
          k: v for k, v in dataclasses.asdict(opts).items() if k not in ("shapes", "inference_model")
      },
      "optimizer": OPTIMIZER,
      "flop_formula": FLOP_FORMULA,
      "comparison_notes": COMPARISON_NOTES,
  }
  ids = None
  if "tokenizer" in opts.suites:
    log("tokenizer")
    load = load_average()
    result["tokenizer"], ids = tokenizer_suite(opts)
    result["tokenizer"]["load_average_before_after"] = [load, load_average()]
  rows = []
  if "train" in opts.suites:
    n = opts.peak_n or (8192 if not on_cpu() else 2048)
    sheet = perf.device_peak_flops(opts.dtype)
    result["peak"] = {
        "measured_matmul_flops": perf.measure_matmul_peak(opts.dtype, n=opts.peak_n),
        "measured_matmul": f"{n}x{n} @ {n}x{n} {opts.dtype}, best of 5",
        "datasheet_flops": sheet,
        "note": "measured at the start of the run; each train shape measures it again just before "
                "and after its timed steps and its MFU uses the larger of those two"
    }
    rows = train_suite(opts, sheet)
    result["train"] = rows
  if "pipeline" in opts.suites:
    load = load_average()
    result["pipeline"] = pipeline_suite(opts, rows, ids)
    result["pipeline"]["load_average_before_after"] = [load, load_average()]
  if "inference" in opts.suites:
    load = load_average()
    result["inference"] = inference_suite(opts)
    result["inference"]["load_average_before_after"] = [load, load_average()]
  result["load_average_end"] = load_average()
  result["wall_s"] = time.perf_counter() - t_start
  result["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return result
