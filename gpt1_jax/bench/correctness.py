"""Numerical checks of the accelerator path: bf16 against f32 logits, fused attention against ours.

Each check runs the same weights on the same inputs two ways and compares the outputs with
statistics that do not depend on the logits' scale (errors over the reference's standard
deviation), against a tolerance stated with its reason. The f32 reference runs with
``jax.default_matmul_precision("highest")``: on NVIDIA GPUs f32 matmuls otherwise use TF32,
whose 10-bit mantissa would make the reference itself a reduced-precision result.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gpt1_jax.model import GPT1LM, ModelConfig, init_params
from gpt1_jax.train import cross_entropy

# bf16 keeps 8 significant bits: one rounding is off by at most 2**-9 (0.2%) relative. A forward
# pass rounds every activation a few dozen times, and post-LN blocks renormalise what they pass
# on, so the errors add up roughly as a random walk: a few tenths of a percent per block, 1-3%
# of the logits' spread after 12 blocks. 5% leaves room for that and for the 40k-wide output
# dot; a real defect (a wrong layout, a scale, a mask) moves logits by their whole spread (~100%).
BF16_LOGITS_TOL = 0.05
# Two attention implementations in the same dtype differ only in the order of their sums and,
# in bf16, in where they round (a fused kernel keeps the softmax in f32 on chip). Against the f32
# reference each must be within this many times the error of our own XLA path in that dtype
# (plus a floor for f32, where both errors are at rounding level).
ATTENTION_ERROR_RATIO = 2.0
ATTENTION_F32_FLOOR = 1e-4
ATTENTION_BF16_FLOOR = 5e-3


def compare(x, ref, valid=None) -> dict:
  """Error statistics of ``x`` against ``ref`` (same shape), over the positions ``valid`` marks."""
  x = jnp.asarray(x, jnp.float32)
  ref = jnp.asarray(ref, jnp.float32)
  w = jnp.ones(ref.shape[:-1], jnp.float32) if valid is None else jnp.asarray(valid, jnp.float32)
  n = jnp.maximum(w.sum(), 1.0)
  wf = w[..., None]
  mean = (ref * wf).sum() / (n * ref.shape[-1])
  std = jnp.sqrt((jnp.square(ref - mean) * wf).sum() / (n * ref.shape[-1]))
  diff = x - ref
  rms = jnp.sqrt((jnp.square(diff) * wf).sum() / (n * ref.shape[-1]))
  top1 = ((jnp.argmax(x, -1) == jnp.argmax(ref, -1)) * w).sum() / n
  logp_ref = jax.nn.log_softmax(ref, -1)
  kl = ((jnp.exp(logp_ref) * (logp_ref - jax.nn.log_softmax(x, -1))).sum(-1) * w).sum() / n
  return {
      "rel_rms": float(rms / std),
      "max_abs_over_std": float(jnp.max(jnp.abs(diff) * wf) / std),
      "top1_agreement": float(top1),
      "kl_nats": float(kl),
      "ref_std": float(std)
  }


def _tree_compare(x, ref) -> dict:
  """Relative RMS error of a whole gradient tree (every leaf flattened into one vector)."""
  num = sum(
      float(jnp.sum(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32))))
      for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(ref)))
  den = sum(float(jnp.sum(jnp.square(b.astype(jnp.float32)))) for b in jax.tree.leaves(ref))
  return {"rel_rms": float(np.sqrt(num / max(den, 1e-30)))}


def _inputs(cfg: ModelConfig, batch: int, seq_len: int, pad: bool):
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, seq_len + 1), dtype=np.int32))
  mask = np.ones((batch, seq_len), np.int32)
  if pad and batch > 1:
    mask[-1, seq_len - seq_len // 4:] = 0  # the last row's final quarter is padding (as fine-tuning batches are)
  return ids[:, :-1], ids[:, 1:], jnp.asarray(mask)


def _params(cfg: ModelConfig):
  return jax.jit(functools.partial(init_params, cfg.replace(dtype="float32")))(jax.random.key(0))


def _logits_fn(cfg: ModelConfig):
  model = GPT1LM(cfg)
  return jax.jit(lambda p, i, m: model.apply({"params": p}, i, m)[..., :cfg.vocab_size])


def _loss_and_grad_fn(cfg: ModelConfig):
  model = GPT1LM(cfg)

  def loss(p, i, t, m):
    logits = model.apply({"params": p}, i, m)[..., :cfg.vocab_size]
    return jnp.sum(cross_entropy(logits, t) * m) / jnp.sum(m), logits

  return jax.jit(jax.value_and_grad(loss, has_aux=True))


def logits_bf16_vs_f32(cfg: ModelConfig, *, batch: int, seq_len: int) -> dict:
  """The model in bfloat16 compute (float32 weights) against float32 at the highest matmul precision."""
  params = _params(cfg)
  ids, _, mask = _inputs(cfg, batch, seq_len, pad=False)
  with jax.default_matmul_precision("highest"):
    ref = _logits_fn(cfg.replace(dtype="float32"))(params, ids, mask)
  out = _logits_fn(cfg.replace(dtype="bfloat16"))(params, ids, mask)
  stats = compare(out, ref)
  return {
      "status": "pass" if stats["rel_rms"] <= BF16_LOGITS_TOL else "fail",
      "metric": "rel_rms",
      "value": stats["rel_rms"],
      "tolerance": BF16_LOGITS_TOL,
      **stats, "shape": f"batch {batch} x {seq_len}, n_layer {cfg.n_layer}, n_embd {cfg.n_embd}",
      "why_tolerance": "bf16 rounds each activation to 8 significant bits (2^-9 relative); over a forward "
                       "pass that adds up to 1-3% of the logits' spread, while a real defect moves them by "
                       "~100%; rel_rms = RMS(bf16 - f32) / std(f32 logits); the f32 run uses the highest "
                       "matmul precision (no TF32)"
  }


def attention_vs_xla(cfg: ModelConfig, impl: str, *, batch: int, seq_len: int,
                     dtypes: tuple = ("float32", "bfloat16")) -> dict:
  """``attention=impl`` against ``attention=xla``: logits and gradients, same weights and inputs, no dropout.

  The inputs carry a padded tail in one row (the key mask of fine-tuning batches), and only
  real positions are compared. The reference is our XLA path in f32 at the highest matmul
  precision. In f32, ``impl`` (also at the highest precision) must be within
  ``ATTENTION_F32_FLOOR`` of it; in bf16, its error must be within ``ATTENTION_ERROR_RATIO``
  times our XLA path's error in bf16 (or under a floor).
  """
  cfg = cfg.replace(attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
  params = _params(cfg)
  ids, targets, mask = _inputs(cfg, batch, seq_len, pad=True)
  with jax.default_matmul_precision("highest"):
    (ref_loss, ref_logits), ref_grads = _loss_and_grad_fn(cfg.replace(attention="xla", dtype="float32"))(params, ids,
                                                                                                         targets, mask)
  out = {
      "impl": impl,
      "shape": f"batch {batch} x {seq_len} (row {batch - 1}: last quarter padding), "
               f"n_layer {cfg.n_layer}, n_embd {cfg.n_embd}, n_head {cfg.n_head}",
      "ref_loss": float(ref_loss),
      "dtypes": {}
  }
  passed = True
  for dtype in dtypes:
    per = {}
    if dtype == "float32":
      # Both at the highest precision: our XLA path there *is* the reference (error 0), so the
      # floor is the whole allowance.
      floor = ATTENTION_F32_FLOOR
      with jax.default_matmul_precision("highest"):
        (loss, logits), grads = _loss_and_grad_fn(cfg.replace(attention=impl, dtype=dtype))(params, ids, targets, mask)
      per["xla"] = {"logits": {"rel_rms": 0.0}, "grads": {"rel_rms": 0.0}, "loss": float(ref_loss)}
      per[impl] = {
          "logits": compare(logits, ref_logits, mask),
          "grads": _tree_compare(grads, ref_grads),
          "loss": float(loss)
      }
    else:
      floor = ATTENTION_BF16_FLOOR
      for name in ("xla", impl):
        (loss, logits), grads = _loss_and_grad_fn(cfg.replace(attention=name, dtype=dtype))(params, ids, targets, mask)
        per[name] = {
            "logits": compare(logits, ref_logits, mask),
            "grads": _tree_compare(grads, ref_grads),
            "loss": float(loss)
        }
    d = {"xla": per["xla"], impl: per[impl]}
    checks = {}
    for what in ("logits", "grads"):
      allowed = max(ATTENTION_ERROR_RATIO * per["xla"][what]["rel_rms"], floor)
      checks[what] = {
          "error": per[impl][what]["rel_rms"],
          "allowed": allowed,
          "ok": per[impl][what]["rel_rms"] <= allowed
      }
      passed &= checks[what]["ok"]
    d["checks"] = checks
    out["dtypes"][dtype] = d
  worst = max(c["error"] / c["allowed"] for d in out["dtypes"].values() for c in d["checks"].values())
  out.update(
      status="pass" if passed else "fail", metric="max over dtypes and logits/grads of error / allowed", value=worst,
      tolerance=1.0,
      why_tolerance=f"relative RMS error against our XLA path in f32 at the highest matmul precision: in f32 "
      f"(also at the highest precision) at most {ATTENTION_F32_FLOOR:g}; in bf16 at most "
      f"{ATTENTION_ERROR_RATIO}x our XLA path's own bf16 error (floor {ATTENTION_BF16_FLOOR:g}): "
      f"the kernels differ only in summation order and where they round")
  return out
