"""FLOP counts, peak throughput and memory figures for MFU and the memory plan."""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from gpt1_jax.model import ModelConfig

# Dense bf16 peak per chip (datasheet, FLOP/s), by device_kind prefix.
DATASHEET_BF16 = {
    "NVIDIA H100 PCIe": 756e12,  # before the SXM entry: the first matching prefix wins
    "NVIDIA H100 NVL": 835e12,
    "NVIDIA H100": 989e12,  # SXM ("NVIDIA H100 80GB HBM3")
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def flops_per_token(cfg: ModelConfig, seq_len: int, training: bool = True, lm_head: bool = True,
                    head_rows: int = 0) -> float:
  """Model FLOPs per token (PaLM appendix B convention).

  ``6 * N + 12 * n_layer * n_embd * seq_len`` for training (forward + backward),
  where ``N`` counts the weight matrices that multiply every token: the
  blocks plus the tied output projection ``vocab x n_embd`` (the embedding
  lookup itself is free and the position table is not multiplied). The second
  term is attention's scores and weighted sum (2 matmuls of ``T x d`` per
  token and layer, x3 for backward). Inference: divide by 3. ``head_rows`` > 0: the output layer
  multiplies each token by that many vocabulary rows only (a sampled softmax's candidates and target).
  """
  d = cfg.n_embd
  v = (head_rows or cfg.vocab_size) if lm_head else 0  # a task head without the auxiliary LM never projects
  if cfg.architecture == "lstm":
    u = cfg.lstm_units
    n = d * 4 * u + u * 4 * u + u * d + v * d
    attn = 0.0
  else:
    n = cfg.n_layer * (d * 3 * d + d * d + 2 * d * 4 * d) + v * d
    # The full T x T score matrix is counted although causal masking makes half
    # of it unused: the PaLM / nanoGPT convention, so MFUs compare.
    attn = 12 * cfg.n_layer * d * seq_len
  total = 6 * n + attn
  return total if training else total / 3


def device_peak_flops(dtype="bfloat16") -> float | None:
  """Datasheet peak of one device for 16-bit matmuls, or None (CPU, unknown)."""
  kind = jax.devices()[0].device_kind
  for prefix, peak in DATASHEET_BF16.items():
    if kind.startswith(prefix):
      return peak if jnp.dtype(dtype).itemsize <= 2 else peak / 2 if "TPU" in kind else peak / 15
  return None


def measure_matmul_peak(dtype="float32", n: int | None = None, reps: int = 5) -> float:
  """Measured FLOP/s of one device on a large square matmul in ``dtype`` (best of ``reps``)."""
  dev = jax.devices()[0]
  n = n or (8192 if dev.platform != "cpu" else 2048)
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.device_put(jax.random.normal(k1, (n, n), dtype), dev)
  b = jax.device_put(jax.random.normal(k2, (n, n), dtype), dev)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = math.inf
  for _ in range(reps):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best


def tree_bytes_per_device(abstract_tree, shardings) -> int:
  """Bytes one device holds for a tree of ShapeDtypeStructs under ``shardings``."""
  total = 0
  for leaf, sh in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
    shard = sh.shard_shape(leaf.shape) if hasattr(sh, "shard_shape") else leaf.shape
    total += int(np.prod(shard)) * jnp.dtype(leaf.dtype).itemsize
  return total


def compiled_memory(compiled) -> dict:
  """XLA's memory plan of a compiled program: what one call holds on the device at its peak."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend reports it
    m = None
  if m is None:
    return {}
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  return {
      "arguments": int(m.argument_size_in_bytes),
      "outputs": int(m.output_size_in_bytes),
      "aliased": int(m.alias_size_in_bytes),
      "temporaries": int(m.temp_size_in_bytes),
      "total": int(total)
  }


def device_memory_limit() -> int | None:
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001 - CPU backends may not implement it
    return None
  return stats.get("bytes_limit")


def fmt_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
    n /= 1024
  return f"{n:.1f} TiB"


def peak_flops(dtype: str, given: float = 0.0, measure: bool = True) -> tuple[float, str]:
  """``(per-device peak for MFU, where it came from)``: ``given`` (``log.peak_flops_per_device``),
  else the datasheet's for this device, else measured with a matmul (``log.measure_peak``), else 0
  (MFU not reported)."""
  if given:
    return given, "log.peak_flops_per_device"
  sheet = device_peak_flops(dtype)
  if sheet:
    return sheet, f"datasheet for {jax.devices()[0].device_kind}, {dtype}"
  if measure:
    return measure_matmul_peak(dtype), f"measured at start with a {dtype} matmul: it varies with the machine's load"
  return 0.0, "none: MFU not reported; set log.peak_flops_per_device"
