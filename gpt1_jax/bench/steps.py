"""What both sides of the train-step comparison share: the optimiser settings, synthetic batches,
the timed-step runner and the throughput record (ours in ``train.py``, Hugging Face's in
``hf_reference.py``)."""

from __future__ import annotations

import statistics
from typing import Callable, Optional

import numpy as np

from gpt1_jax import perf
from gpt1_jax.bench.options import Shape

# GPT-1's optimiser (Section 4.1) without the schedule, which costs nothing to evaluate:
# the same update Hugging Face's side runs with torch.optim.AdamW + clip_grad_norm_.
OPTIMIZER = dict(learning_rate=2.5e-4, warmup_steps=0, warmup_fraction=0.0, schedule="constant", b1=0.9, b2=0.999,
                 eps=1e-8, weight_decay=0.01, grad_clip=1.0)


def synthetic_lm_batches(shape: Shape, count: int = 2, seed: int = 0) -> list[dict]:
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    x = rng.integers(0, shape.model.vocab_size, (shape.batch, shape.seq_len + 1), dtype=np.int32)
    out.append({
        "inputs": x[:, :-1],
        "targets": x[:, 1:],
        "loss_mask": np.ones((shape.batch, shape.seq_len), np.float32)
    })
  return out


class Runner:
  """One implementation's train step, set up and warmed up, stepped one timed step at a time.

  ``step(record=False)`` runs a step that is not timed into the result (e.g. under a profiler).
  ``info`` holds what the setup learnt (compile time, the compiled program).
  """

  def __init__(self, step: Callable[[int], float], finish: Callable[[list, Optional[float], Optional[float]], dict],
               warmup_times: list, info: Optional[dict] = None):
    self._step, self._finish, self.warmup_times, self.times = step, finish, warmup_times, []
    self._extra = 0
    self.info = info or {}

  def step(self, record: bool = True) -> float:
    t = self._step(len(self.warmup_times) + len(self.times) + self._extra)
    if record:
      self.times.append(t)
    else:
      self._extra += 1
    return t

  def finish(self, peak: Optional[float], sheet_peak: Optional[float] = None) -> dict:
    return self._finish(self.times, peak, sheet_peak)


def throughput(shape: Shape, times: list, warmup_times: list, peak, sheet_peak) -> dict:
  step_s = statistics.median(times)
  tokens = shape.batch * shape.seq_len
  fpt = perf.flops_per_token(shape.model, shape.seq_len)
  return {
      "step_s": step_s,
      "step_times_s": list(times),
      "warmup_times_s": list(warmup_times),
      "tokens_per_s": tokens / step_s,
      "flops_per_token": fpt,
      "achieved_flops": fpt * tokens / step_s,
      "mfu_measured_peak": fpt * tokens / step_s / peak if peak else None,
      "mfu_datasheet": fpt * tokens / step_s / sheet_peak if sheet_peak else None
  }
