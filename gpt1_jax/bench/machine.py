"""The machine a run measures: its facts and versions, its matmul peak, timing and memory readers.

Every figure the benchmark reports is read against this: MFU against a matmul peak measured in
the same run (and the datasheet's, on accelerators), memory as XLA plans it and as the process
or device saw it, load averages because the project's CPU box is shared.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import threading
import time
from typing import Any, Callable, Optional

import jax

from gpt1_jax import perf

_T0 = time.perf_counter()


def log(msg: str):
  print(f"[bench {time.perf_counter() - _T0:6.1f}s] {msg}", flush=True)


def load_average() -> list[float]:
  try:
    return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
  except OSError:
    return []


def cpu_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def on_cpu() -> bool:
  return jax.devices()[0].platform == "cpu"


def machine_info() -> dict:
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  dev = jax.devices()[0]
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      thp = f.read().strip()
  except OSError:
    thp = None
  # Settings that move step times by tens of percent (see BENCHMARKS.md): recorded, never changed.
  env = {
      k: os.environ.get(k)
      for k in ("GLIBC_TUNABLES", "XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM",
                "LD_PRELOAD", "JAX_PLATFORMS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE",
                "CUDA_VISIBLE_DEVICES")
  }
  info = {
      "cpu_model": model,
      "cpu_cores": cpu_cores(),
      "platform": dev.platform,
      "device_kind": dev.device_kind,
      "device_count": jax.device_count(),
      "hostname": platform.node(),
      "os": platform.platform(),
      "transparent_hugepage": thp,
      "env": {
          k: v for k, v in env.items() if v is not None
      }
  }
  limit = device_memory_stats().get("bytes_limit")
  if limit:
    info["device_memory_limit_bytes"] = int(limit)
  return info


_DISTRIBUTIONS = (("jax", "jax"), ("jaxlib", "jaxlib"), ("jax_cuda13_plugin", "jax-cuda13-plugin"),
                  ("jax_cuda12_plugin",
                   "jax-cuda12-plugin"), ("flax", "flax"), ("optax", "optax"), ("orbax_checkpoint", "orbax-checkpoint"),
                  ("ml_collections", "ml-collections"), ("torch", "torch"), ("transformers", "transformers"),
                  ("tensorflow", "tensorflow"), ("tokenizers", "tokenizers"), ("spacy", "spacy"), ("numpy", "numpy"))


def versions() -> dict:
  """Installed versions (None: not installed); the CUDA plugins only where one is."""
  out = {"python": platform.python_version()}
  for key, dist in _DISTRIBUTIONS:
    out[key] = None
    for name in (dist, f"{dist}-cpu"):
      try:
        out[key] = importlib.metadata.version(name)
        break
      except importlib.metadata.PackageNotFoundError:
        pass
  return {k: v for k, v in out.items() if v is not None or "plugin" not in k}


def matmul_peak(dtype: str, n: Optional[int] = None) -> dict:
  """The measured matmul peak of one device in ``dtype`` and the datasheet's 16-bit peak (None on CPU)."""
  n = n or (8192 if not on_cpu() else 2048)
  return {
      "measured_matmul_flops": perf.measure_matmul_peak(dtype, n=n),
      "measured_matmul": f"{n}x{n} @ {n}x{n} {dtype}, best of 5",
      "datasheet_flops": perf.device_peak_flops(dtype)
  }


def median_time(fn: Callable[[], Any], reps: int, warmup: int = 1) -> tuple[float, list[float]]:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times), times


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssPeak:
  """Peak resident memory over a block, sampled every ``interval`` s (Linux), minus the RSS at entry.

  ``getrusage``'s max RSS is a high-water mark of the whole process, so after an earlier,
  larger benchmark its delta reads 0; sampling sees this block's own peak.
  """

  def __init__(self, interval: float = 0.005):
    self.interval = interval
    self.start = self.peak = 0
    self._stop = threading.Event()

  def __enter__(self):
    self.start = self.peak = _rss_bytes()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()
    return self

  def _run(self):
    while not self._stop.wait(self.interval):
      self.peak = max(self.peak, _rss_bytes())

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, _rss_bytes())

  @property
  def delta(self) -> int:
    return self.peak - self.start


def device_memory_stats() -> dict:
  """The allocator's counters of device 0 (``peak_bytes_in_use`` is a high-water mark of the process); {} on CPU."""
  try:
    return dict(jax.devices()[0].memory_stats() or {})
  except Exception:  # noqa: BLE001 - CPU backends may not implement it
    return {}
