"""Hugging Face's GPT-1 (``transformers``, PyTorch): the reference our step and tokenizer are timed against.

The only module of the benchmark that imports torch or transformers; the others import it
when a comparison runs, so the train suite and the GPU check run where neither is installed.

``python -m gpt1_jax.bench.hf_reference SPEC.json OUT.json`` runs one train-step measurement
in a process of its own (the GPU check does, so a CUDA fault or a hung ``torch.compile`` costs
one row, and PyTorch's allocator never competes with JAX's inside one process).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as F
from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel, OpenAIGPTTokenizer

from gpt1_jax import tokenizer as tok_lib
from gpt1_jax.bench.machine import RssPeak, cpu_cores
from gpt1_jax.bench.options import Shape
from gpt1_jax.bench.steps import OPTIMIZER, Runner, synthetic_lm_batches, throughput
from gpt1_jax.model import ModelConfig


def unavailable(device: str) -> Optional[str]:
  """Why the twin cannot run on ``device`` ("cpu" or "cuda"), or None."""
  if device == "cuda" and not torch.cuda.is_available():
    return "torch cannot run on this accelerator (no CUDA build), so no like-for-like comparison"
  return None


def prepare_hf(shape: Shape, *, warmup: int, threads: Optional[int] = None, device: Optional[str] = None,
               dtype: str = "float32", autocast: Optional[bool] = None, compile: bool = False) -> Runner:
  """``OpenAIGPTLMHeadModel`` at the same shape, dropout as configured, AdamW + ``clip_grad_norm_(1.0)``, warmed up.

  The loss is ``F.cross_entropy`` of the model's logits against the same next-token
  targets as ours (the leanest use of the model: passing ``labels=`` would add HF's
  shift-and-pad copy of the logits). ``autocast`` (default: on CUDA when ``dtype`` is
  bfloat16) runs the forward under ``torch.autocast(bfloat16)`` with float32 weights, as
  our bf16 compute does; ``compile`` wraps the model in ``torch.compile`` (its compilation
  happens in the warm-up steps).
  """
  cfg = shape.model
  threads = threads or cpu_cores()
  torch.set_num_threads(threads)
  device = device or ("cuda" if torch.cuda.is_available() else "cpu")
  if autocast is None:
    autocast = device == "cuda" and dtype == "bfloat16"
  torch.manual_seed(0)
  hf_cfg = OpenAIGPTConfig(
      vocab_size=cfg.vocab_size,
      n_positions=cfg.n_ctx,
      n_embd=cfg.n_embd,
      n_layer=cfg.n_layer,
      n_head=cfg.n_head,
      afn="gelu",  # OpenAI-GPT's "gelu" is the tanh form, as GPT-1's
      resid_pdrop=cfg.resid_pdrop,
      embd_pdrop=cfg.embd_pdrop,
      attn_pdrop=cfg.attn_pdrop,
      layer_norm_epsilon=cfg.layer_norm_epsilon,
      initializer_range=cfg.initializer_range)
  batches = [{
      k: torch.from_numpy(v).long().to(device) for k, v in b.items() if k != "loss_mask"
  } for b in synthetic_lm_batches(shape)]
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  box, losses = {}, []

  def step(i):
    model, opt = box["run"], box["opt"]
    b = batches[i % len(batches)]
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
      logits = model(input_ids=b["inputs"]).logits
    loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), b["targets"].view(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(box["model"].parameters(), OPTIMIZER["grad_clip"])
    opt.step()
    losses.append(loss.item())  # synchronises
    return time.perf_counter() - t

  with RssPeak() as rss:
    model = box["model"] = OpenAIGPTLMHeadModel(hf_cfg).to(device).train()
    box["run"] = torch.compile(model) if compile else model
    box["opt"] = torch.optim.AdamW(model.parameters(), lr=OPTIMIZER["learning_rate"],
                                   betas=(OPTIMIZER["b1"], OPTIMIZER["b2"]), eps=OPTIMIZER["eps"],
                                   weight_decay=OPTIMIZER["weight_decay"])
    t = time.perf_counter()
    warmup_times = [step(i) for i in range(warmup)]
    warmup_s = time.perf_counter() - t
  info = {
      "impl": "transformers.OpenAIGPTLMHeadModel" + (" + torch.compile" if compile else ""),
      "device": device,
      "threads": threads,
      "attn_implementation": getattr(model.config, "_attn_implementation", None),
      "tied_lm_head": model.lm_head.weight.data_ptr() == model.transformer.tokens_embed.weight.data_ptr(),
      "autocast_bf16": autocast,
      "torch_compile": compile,
      "warmup_s": warmup_s,
      "params": sum(p.numel() for p in model.parameters())
  }
  del model

  def finish(times, peak, sheet_peak):
    if not all(math.isfinite(x) for x in losses):
      raise RuntimeError(f"{shape.name}: Hugging Face's loss is not finite: {losses}")
    out = {
        **info,
        **throughput(shape, times, warmup_times, peak, sheet_peak), "memory_rss_delta": rss.delta,
        "loss_first": losses[0],
        "loss_last": losses[-1]
    }
    if device == "cuda":
      out["memory_device_peak"] = torch.cuda.max_memory_allocated()
    box.clear()
    return out

  return Runner(step, finish, warmup_times)


def hf_tokenizer():
  """Hugging Face's ``OpenAIGPTTokenizer`` on our packaged vocabulary and merges.

  transformers 5 ignores ``vocab_file=``/``merges_file=`` (silently giving a 1-token
  vocabulary); ``vocab=``/``merges=`` are the arguments it reads.
  """
  assets = os.path.join(os.path.dirname(os.path.abspath(tok_lib.__file__)), "assets")
  tok = OpenAIGPTTokenizer(vocab=os.path.join(assets, tok_lib.ENCODER_FILE),
                           merges=os.path.join(assets, tok_lib.MERGES_FILE))
  if tok.vocab_size != 40478:
    raise RuntimeError(f"Hugging Face's OpenAIGPTTokenizer loaded {tok.vocab_size} tokens, expected 40478: this "
                       f"transformers version reads the vocabulary through other arguments")
  return tok


def measure(spec: dict) -> dict:
  """One train-step measurement from a JSON-able spec (what the GPU check sends to a subprocess)."""
  shape = Shape(spec["name"], ModelConfig(**spec["model"]), int(spec["batch"]), int(spec["seq_len"]))
  runner = prepare_hf(shape, warmup=int(spec["warmup"]), device=spec.get("device"), dtype=spec["dtype"],
                      autocast=spec.get("autocast"), compile=bool(spec.get("compile")), threads=spec.get("threads"))
  for _ in range(int(spec["steps"])):
    runner.step()
  out = runner.finish(spec.get("peak"), spec.get("sheet_peak"))
  out["versions"] = {
      "torch": torch.__version__,
      "cuda": torch.version.cuda,
      "device_name": torch.cuda.get_device_name(0) if out["device"] == "cuda" else None
  }
  return out


if __name__ == "__main__":
  with open(sys.argv[1]) as f:
    result = measure(json.load(f))
  with open(sys.argv[2], "w") as f:
    json.dump(result, f)
