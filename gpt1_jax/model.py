"""The GPT-1 decoder (Radford et al. 2018) as functional Flax linen modules.

Exactly the released model: learned positions, 12 post-LN blocks
(``n = LN(x + attn(x)); h = LN(n + mlp(n))``), GELU in its tanh form, LayerNorm
epsilon 1e-5, N(0, 0.02) init, LM head tied to the token embedding.

Every parameter carries logical axis names (``vocab``, ``embed``, ``heads``,
``kv``, ``mlp``, ``layers``) and the main activations carry sharding
constraints (``batch``, ``length``, ``embed``): the trainer maps those names to
mesh axes with rules from the config, so the same module runs data-, FSDP- or
tensor-parallel. Outside a ``nn.logical_axis_rules`` context the names are inert
and the model is a plain Flax module you can drop into your own code.

Reuse::

    cfg = ModelConfig(n_layer=2, n_embd=128, n_head=4)
    hidden = GPT1(cfg).apply({"params": params}, ids)            # [B, T, n_embd]
    logits = GPT1LM(cfg).apply({"params": params}, ids)          # [B, T, vocab]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt1_jax import task_types

Array = jax.Array

ATTENTION_IMPLS = ("xla", "dot_product", "cudnn")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ACTIVATIONS = ("gelu_tanh", "gelu")
ARCHITECTURES = ("transformer", "lstm")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of the decoder. Defaults are GPT-1 as released."""

  vocab_size: int = 40481  # 40,478 BPE tokens + _start_, _delimiter_, _classify_
  n_ctx: int = 512
  n_embd: int = 768
  n_head: int = 12
  n_layer: int = 12
  embd_pdrop: float = 0.1
  attn_pdrop: float = 0.1
  resid_pdrop: float = 0.1
  layer_norm_epsilon: float = 1e-5
  initializer_range: float = 0.02
  # GPT-1 used the tanh approximation, as does Hugging Face's OpenAI-GPT (its
  # afn="gelu" is gelu_new); "gelu" here is the exact erf form.
  activation: str = "gelu_tanh"
  dtype: Any = "float32"  # compute dtype; "bfloat16" on accelerators
  param_dtype: Any = "float32"  # master weights
  attention: str = "xla"  # "xla" (einsum), "dot_product" or "cudnn" (jax.nn.dot_product_attention)
  remat: str = "none"  # rematerialisation policy per block
  scan_layers: bool = False  # nn.scan over blocks: one compiled block, [layers, ...] params
  # Rows added to the token table so its size is a multiple of this (MXU/
  # tensor-core friendly, and divisible by a tensor-parallel axis). The extra
  # rows are never looked up and their logits are sliced away, so outputs are
  # exactly those of the unpadded model.
  vocab_pad_multiple: int = 1
  architecture: str = "transformer"  # "lstm": the paper's Table 5 ablation
  lstm_units: int = 2048

  def __post_init__(self):
    # Frozen dataclass: normalise dtype names through object.__setattr__.
    object.__setattr__(self, "dtype", jnp.dtype(self.dtype).name)
    object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype).name)
    self.validate()

  def validate(self):

    def bad(msg):  # named as the config key (config.model.*) that sets it
      raise ValueError(f"model.{msg}")

    for name in ("vocab_size", "n_ctx", "n_embd", "n_head", "n_layer", "vocab_pad_multiple", "lstm_units"):
      if int(getattr(self, name)) <= 0:
        bad(f"{name}={getattr(self, name)!r}: expected an integer >= 1")
    if self.n_embd % self.n_head:
      bad(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
    for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
      if not 0.0 <= getattr(self, name) < 1.0:  # NaN fails both comparisons
        bad(f"{name}={getattr(self, name)!r}: expected a probability in [0, 1)")
    if not (math.isfinite(self.layer_norm_epsilon) and self.layer_norm_epsilon > 0):
      bad(f"layer_norm_epsilon={self.layer_norm_epsilon!r}: expected a finite number > 0")
    if not (math.isfinite(self.initializer_range) and self.initializer_range >= 0):
      bad(f"initializer_range={self.initializer_range!r}: expected a finite number >= 0")
    if self.attention not in ATTENTION_IMPLS:
      bad(f"attention={self.attention!r}, expected one of {ATTENTION_IMPLS}")
    if self.remat not in REMAT_POLICIES:
      bad(f"remat={self.remat!r}, expected one of {REMAT_POLICIES}")
    if self.activation not in ACTIVATIONS:
      bad(f"activation={self.activation!r}, expected one of {ACTIVATIONS}")
    if self.architecture not in ARCHITECTURES:
      bad(f"architecture={self.architecture!r}, expected one of {ARCHITECTURES}")
    if self.attention != "xla" and self.attn_pdrop > 0:
      # jax.nn.dot_product_attention has no dropout on the attention
      # probabilities; silently skipping GPT-1's attention dropout would train
      # a different model than configured.
      bad(f"attention={self.attention!r} cannot apply attention dropout; set attn_pdrop=0 "
          f"(GPT-1 used 0.1) or use attention='xla'")

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head

  @property
  def padded_vocab_size(self) -> int:
    m = self.vocab_pad_multiple
    return -(-self.vocab_size // m) * m

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def num_params(self, include_embeddings: bool = True) -> int:
    """Parameter count of the transformer (unpadded vocab)."""
    d, f = self.n_embd, 4 * self.n_embd
    per_layer = d * 3 * d + 3 * d + d * d + d + d * f + f + f * d + d + 4 * d
    n = self.n_layer * per_layer
    if include_embeddings:
      n += self.vocab_size * d + self.n_ctx * d
    return n


def _init(config: ModelConfig):
  return nn.initializers.normal(stddev=config.initializer_range)


def _param(module: nn.Module, name: str, init, shape, axes, dtype):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def constrain(x: Array, axes) -> Array:
  return nn.with_logical_constraint(x, axes)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis, statistics in float32 (bf16-safe)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    d = x.shape[-1]
    scale = _param(self, "scale", nn.initializers.ones, (d,), ("embed",), cfg.param_dtype)
    bias = _param(self, "bias", nn.initializers.zeros, (d,), ("embed",), cfg.param_dtype)
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + cfg.layer_norm_epsilon)
    y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(cfg.dtype)


class Attention(nn.Module):
  """Causal multi-head self-attention with one fused q/k/v projection.

  ``decode=True`` keeps keys and values in the ``cache`` collection (sized by
  the first call) so generation never recomputes the prefix.
  """

  config: ModelConfig
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, attention_mask: Optional[Array]) -> Array:
    cfg = self.config
    b, t, _ = x.shape
    h, dh, d = cfg.n_head, cfg.head_dim, cfg.n_embd
    # [embed, qkv, heads, kv]: q/k/v stay separate along axis 1 so that tensor
    # parallelism splits heads, not the q|k|v concatenation.
    w_qkv = _param(self, "qkv_kernel", _init(cfg), (d, 3, h, dh), ("embed", None, "heads", "kv"), cfg.param_dtype)
    b_qkv = _param(self, "qkv_bias", nn.initializers.zeros, (3, h, dh), (None, "heads", "kv"), cfg.param_dtype)
    qkv = jnp.einsum("btd,dshk->btshk", x, w_qkv.astype(cfg.dtype)) + b_qkv.astype(cfg.dtype)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q = constrain(q, ("batch", "length", "heads", "kv"))
    k = constrain(k, ("batch", "length", "heads", "kv"))
    v = constrain(v, ("batch", "length", "heads", "kv"))

    if self.decode:
      k, v, mask = self._update_cache(k, v, attention_mask)
    else:
      causal = jnp.tril(jnp.ones((t, t), dtype=bool))[None, None]
      mask = causal if attention_mask is None else causal & attention_mask[:, None, None, :].astype(bool)

    if cfg.attention == "xla" or self.decode:
      out = self._xla_attention(q, k, v, mask)
    else:
      impl = "cudnn" if cfg.attention == "cudnn" else None
      out = jax.nn.dot_product_attention(q, k, v, mask=jnp.broadcast_to(mask, (b, 1) + mask.shape[2:]),
                                         scale=1.0 / math.sqrt(dh), implementation=impl)
    out = constrain(out, ("batch", "length", "heads", "kv"))
    w_o = _param(self, "out_kernel", _init(cfg), (h, dh, d), ("heads", "kv", "embed"), cfg.param_dtype)
    b_o = _param(self, "out_bias", nn.initializers.zeros, (d,), ("embed",), cfg.param_dtype)
    y = jnp.einsum("bthk,hkd->btd", out, w_o.astype(cfg.dtype)) + b_o.astype(cfg.dtype)
    return nn.Dropout(cfg.resid_pdrop)(y, deterministic=self.deterministic)

  def _xla_attention(self, q, k, v, mask):
    cfg = self.config
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(cfg.head_dim)
    # finfo.min rather than -inf: a row whose keys are all padding gives a
    # uniform (ignored) distribution instead of NaNs.
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = nn.Dropout(cfg.attn_pdrop)(probs, deterministic=self.deterministic)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(cfg.dtype), v)

  def _update_cache(self, k, v, attention_mask):
    """Writes k/v at the cache cursor; returns the whole cache and its mask.

    In decode mode ``attention_mask`` is ``[B, cache_len]``: which cache slots
    hold real tokens (left-padded prompts have zeros there).
    """
    b, t, h, dh = k.shape
    is_init = not self.has_variable("cache", "key")
    # The first call (initialisation) fixes the cache length from the mask.
    cache_len = attention_mask.shape[1] if attention_mask is not None else self.config.n_ctx
    ck = self.variable("cache", "key", jnp.zeros, (b, cache_len, h, dh), k.dtype)
    cv = self.variable("cache", "value", jnp.zeros, (b, cache_len, h, dh), v.dtype)
    idx = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    cache_len = ck.value.shape[1]
    if is_init:
      return k, v, jnp.ones((1, 1, t, t), bool)
    i = idx.value
    ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, i, 0, 0))
    cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, i, 0, 0))
    idx.value = i + t
    q_pos = i + jnp.arange(t)
    k_pos = jnp.arange(cache_len)
    mask = (k_pos[None, :] <= q_pos[:, None])[None, None]
    if attention_mask is not None:
      mask = mask & attention_mask[:, None, None, :].astype(bool)
    return ck.value, cv.value, mask


class MLP(nn.Module):
  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    d, f = cfg.n_embd, 4 * cfg.n_embd
    w1 = _param(self, "fc_kernel", _init(cfg), (d, f), ("embed", "mlp"), cfg.param_dtype)
    b1 = _param(self, "fc_bias", nn.initializers.zeros, (f,), ("mlp",), cfg.param_dtype)
    w2 = _param(self, "proj_kernel", _init(cfg), (f, d), ("mlp", "embed"), cfg.param_dtype)
    b2 = _param(self, "proj_bias", nn.initializers.zeros, (d,), ("embed",), cfg.param_dtype)
    hdn = jnp.einsum("btd,df->btf", x, w1.astype(cfg.dtype)) + b1.astype(cfg.dtype)
    hdn = jax.nn.gelu(hdn, approximate=cfg.activation == "gelu_tanh")
    hdn = constrain(hdn, ("batch", "length", "mlp"))
    y = jnp.einsum("btf,fd->btd", hdn, w2.astype(cfg.dtype)) + b2.astype(cfg.dtype)
    return nn.Dropout(cfg.resid_pdrop)(y, deterministic=self.deterministic)


class Block(nn.Module):
  """One post-LN transformer block, as in GPT-1 (LayerNorm after each residual)."""

  config: ModelConfig
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, attention_mask: Optional[Array]):
    cfg = self.config
    a = Attention(cfg, self.deterministic, self.decode, name="attn")(x, attention_mask)
    n = LayerNorm(cfg, name="ln_1")(x + a)
    m = MLP(cfg, self.deterministic, name="mlp")(n)
    h = LayerNorm(cfg, name="ln_2")(n + m)
    h = constrain(h, ("batch", "length", "embed"))
    if cfg.scan_layers:
      return h, None
    return h


def _remat_policy(name: str):
  return {
      "full": None,  # save nothing: recompute the whole block
      "dots": jax.checkpoint_policies.checkpoint_dots,
      "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
  }[name]


class Embed(nn.Module):
  """Token table (tied with the output layer) and learned position table."""

  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.tokens = _param(self, "tokens", _init(cfg), (cfg.padded_vocab_size, cfg.n_embd), ("vocab", "embed"),
                         cfg.param_dtype)
    self.positions = _param(self, "positions", _init(cfg), (cfg.n_ctx, cfg.n_embd), (None, "embed"), cfg.param_dtype)

  def __call__(self, input_ids: Array, position_ids: Array) -> Array:
    cfg = self.config
    x = jnp.take(self.tokens, input_ids, axis=0) + jnp.take(self.positions, position_ids, axis=0)
    return x.astype(cfg.dtype)

  def attend(self, h: Array) -> Array:
    """Tied LM head: logits over the real vocabulary (padding rows sliced away)."""
    cfg = self.config
    logits = jnp.einsum("...d,vd->...v", h, self.tokens.astype(cfg.dtype))
    return logits[..., :cfg.vocab_size]

  def attend_rows(self, h: Array, ids: Array) -> Array:
    """Logits of the tied head for the vocabulary rows ``ids [K]`` only: ``[..., n_embd] -> [..., K]``."""
    return jnp.einsum("...d,kd->...k", h, jnp.take(self.tokens, ids, axis=0).astype(self.config.dtype))

  def target_logits(self, h: Array, ids: Array) -> Array:
    """The logit of each position's own token: ``h [..., n_embd]``, ``ids [...]`` -> ``[...]``."""
    rows = jnp.take(self.tokens, ids, axis=0).astype(self.config.dtype)
    return jnp.sum(h.astype(jnp.float32) * rows.astype(jnp.float32), axis=-1)


class LSTMBody(nn.Module):
  """The paper's Table 5 ablation: one 2048-unit LSTM layer in place of the transformer.

  Projects back to ``n_embd`` so the tied output layer and every task head are
  shared with the transformer. Causal by construction; right padding is harmless.
  """

  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    d, u = cfg.n_embd, cfg.lstm_units
    wi = _param(self, "input_kernel", _init(cfg), (d, 4 * u), ("embed", "mlp"), cfg.param_dtype)
    wh = _param(self, "recurrent_kernel", _init(cfg), (u, 4 * u), (None, "mlp"), cfg.param_dtype)
    bias = _param(self, "bias", nn.initializers.zeros, (4 * u,), ("mlp",), cfg.param_dtype)
    wo = _param(self, "out_kernel", _init(cfg), (u, d), ("mlp", "embed"), cfg.param_dtype)
    bo = _param(self, "out_bias", nn.initializers.zeros, (d,), ("embed",), cfg.param_dtype)
    # The input projection of every step at once; only h @ wh is sequential.
    xi = (jnp.einsum("btd,dg->btg", x, wi.astype(cfg.dtype)) + bias.astype(cfg.dtype)).astype(jnp.float32)

    def step(carry, g_in):
      h, c = carry
      g = g_in + h @ wh.astype(jnp.float32)
      i, f, gg, o = jnp.split(g, 4, axis=-1)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (h, c), h

    b = x.shape[0]
    zeros = jnp.zeros((b, u), jnp.float32)
    _, hs = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(xi, 0, 1))
    hs = jnp.swapaxes(hs, 0, 1).astype(cfg.dtype)
    hs = nn.Dropout(cfg.resid_pdrop)(hs, deterministic=self.deterministic)
    return jnp.einsum("btu,ud->btd", hs, wo.astype(cfg.dtype)) + bo.astype(cfg.dtype)


class Decoder(nn.Module):
  """The stack of blocks (or the LSTM of the ablation) over embedded inputs."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, attention_mask, deterministic: bool, decode: bool):
    cfg = self.config
    if cfg.architecture == "lstm":
      if decode:
        raise NotImplementedError("decode=True (KV cache) applies to the transformer only")
      return LSTMBody(cfg, deterministic, name="lstm")(x)
    block = Block
    if cfg.remat != "none":
      block = nn.remat(block, policy=_remat_policy(cfg.remat), prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(block, variable_axes={
          "params": 0,
          "cache": 0
      }, split_rngs={
          "params": True,
          "dropout": True
      }, in_axes=nn.broadcast, length=cfg.n_layer, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(cfg, deterministic, decode, name="h")(x, attention_mask)
    else:
      for i in range(cfg.n_layer):
        x = block(cfg, deterministic, decode, name=f"h_{i}")(x, attention_mask)
    return x


class GPT1(nn.Module):
  """The decoder: ``input_ids [B, T] -> hidden states [B, T, n_embd]``.

  ``attention_mask`` ([B, T], 1 = real token) masks padded keys; causal
  masking is always on. ``position_ids`` default to ``0..T-1``; when decoding
  with a cache the caller passes them (left-padded prompts shift them).
  """

  config: ModelConfig

  def setup(self):
    self.embed = Embed(self.config)
    self.embed_dropout = nn.Dropout(self.config.embd_pdrop)
    self.decoder = Decoder(self.config)

  def __call__(self, input_ids: Array, attention_mask: Optional[Array] = None, *, deterministic: bool = True,
               position_ids: Optional[Array] = None, decode: bool = False) -> Array:
    cfg = self.config
    _, t = input_ids.shape
    if position_ids is None:
      if t > cfg.n_ctx:
        raise ValueError(f"sequence length {t} exceeds the position table n_ctx={cfg.n_ctx}")
      position_ids = jnp.arange(t)[None, :]
    x = self.embed(input_ids, position_ids)
    x = self.embed_dropout(x, deterministic=deterministic)
    x = constrain(x, ("batch", "length", "embed"))
    return self.decoder(x, attention_mask, deterministic, decode)

  def logits(self, hidden: Array) -> Array:
    return self.embed.attend(hidden)


class GPT1LM(nn.Module):
  """The language model: ``input_ids [B, T] -> logits [B, T, vocab_size]`` (tied head)."""

  config: ModelConfig

  def setup(self):
    self.transformer = GPT1(self.config)

  def __call__(self, input_ids: Array, attention_mask: Optional[Array] = None, *, deterministic: bool = True,
               position_ids: Optional[Array] = None, decode: bool = False) -> Array:
    h = self.transformer(input_ids, attention_mask, deterministic=deterministic, position_ids=position_ids,
                         decode=decode)
    return self.transformer.logits(h)

  def hidden(self, input_ids: Array, attention_mask: Optional[Array] = None, *, deterministic: bool = True) -> Array:
    """The last block's states ``[B, T, n_embd]``, for losses that project them chunk by chunk."""
    return self.transformer(input_ids, attention_mask, deterministic=deterministic)

  def project(self, hidden: Array) -> Array:
    """The tied output layer alone: ``[..., n_embd] -> [..., vocab_size]``."""
    return self.transformer.logits(hidden)

  def project_rows(self, hidden: Array, ids: Array) -> Array:
    """The tied output layer restricted to the vocabulary rows ``ids [K]``: ``[..., K]``."""
    return self.transformer.embed.attend_rows(hidden, ids)

  def target_logits(self, hidden: Array, targets: Array) -> Array:
    """The tied output layer's logit of each position's target token alone: ``[...]``."""
    return self.transformer.embed.target_logits(hidden, targets)


def map_position_chunks(fn, chunk: int, *arrays: Array) -> Array:
  """``fn`` on each ``[B, chunk, ...]`` slice (along T) of the ``[B, T, ...]`` ``arrays``, one
  slice after another (``lax.map``), so that only one chunk's ``[B, chunk, vocab]`` logits exist at
  a time (GPT-1's whole ``[32, 512, 40k]`` float32 logits are 2.6 GB). Returns ``fn``'s outputs
  stacked on a leading axis of ``T / chunk``; the batch axis keeps its sharding."""
  b, t = arrays[0].shape[:2]
  if t % chunk:
    raise ValueError(f"chunk {chunk} does not divide the sequence length {t}")
  split = lambda x: jnp.moveaxis(x.reshape((b, t // chunk, chunk) + x.shape[2:]), 1, 0)  # noqa: E731
  return jax.lax.map(lambda xs: fn(*xs), tuple(split(x) for x in arrays))


# ----------------------------------------------------------------------------
# Fine-tuning heads (Section 3.3): the task input is one or more transformed
# sequences; the head reads the hidden state at each sequence's _classify_ token.

TASK_TYPES = task_types.NAMES


def gather_positions(hidden: Array, index: Array) -> Array:
  """``hidden [..., T, D]``, ``index [...]`` -> ``[..., D]``: the state at ``index`` per sequence."""
  return jnp.take_along_axis(hidden, index[..., None, None].astype(jnp.int32), axis=-2)[..., 0, :]


class TaskHead(nn.Module):
  """Classifier dropout then a linear layer (N(0, 0.02) weights, zero bias)."""

  num_outputs: int
  config: ModelConfig
  pdrop: float = 0.1

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    cfg = self.config
    x = nn.Dropout(self.pdrop)(x, deterministic=deterministic)
    w = _param(self, "kernel", _init(cfg), (cfg.n_embd, self.num_outputs), ("embed", None), cfg.param_dtype)
    b = _param(self, "bias", nn.initializers.zeros, (self.num_outputs,), (None,), cfg.param_dtype)
    return (x.astype(jnp.float32) @ w.astype(jnp.float32)) + b.astype(jnp.float32)


class GPT1ForTask(nn.Module):
  """GPT-1 with a task head and the tied LM head, for the joint objective L3 = L2 + lambda*L1.

  Inputs are ``[B, K, T]``: K transformed sequences per example (1 for
  classification/entailment, 2 orderings for similarity, one per candidate
  for multiple choice). ``cls_index [B, K]`` locates each ``_classify_`` token.
  Returns ``(task_logits, hidden)``: ``[B, num_labels]`` (``[B, K]`` for
  multiple choice, ``[B]`` for regression) and the hidden states
  ``[B, K, T, D]`` for the auxiliary LM loss (``self.lm_logits``).
  """

  config: ModelConfig
  task_type: str
  num_labels: int = 2
  clf_pdrop: float = 0.1

  def setup(self):
    self.kind = task_types.get(self.task_type)
    self.transformer = GPT1(self.config)
    self.head = TaskHead(self.kind.head_width(self.num_labels), self.config, self.clf_pdrop)

  def __call__(self, input_ids: Array, attention_mask: Array, cls_index: Array, *, deterministic: bool = True):
    b, k, t = input_ids.shape
    h = self.transformer(input_ids.reshape(b * k, t), attention_mask.reshape(b * k, t), deterministic=deterministic)
    h = h.reshape(b, k, t, -1)
    pooled = gather_positions(h, cls_index)  # [B, K, D]
    if self.kind.pooling == "each":
      logits = self.head(pooled, deterministic)[..., 0]  # one scalar per candidate
    elif self.kind.pooling == "sum":
      logits = self.head(pooled.sum(axis=1), deterministic)  # both orderings summed (Section 3.3)
    else:
      logits = self.head(pooled[:, 0], deterministic)
    if self.kind.regression:
      logits = logits[..., 0]
    return logits, h

  def lm_logits(self, hidden: Array) -> Array:
    return self.transformer.logits(hidden)


# ----------------------------------------------------------------------------
# Layout helpers: scanned (``h/...`` with a leading layer axis) <-> per-layer
# (``h_0/...``) parameter trees, so checkpoints and converted weights load
# whichever way the model is compiled.


def stack_layers(params: dict, n_layer: int) -> dict:
  """Per-layer ``{..., 'h_0': tree, 'h_1': tree}`` -> scanned ``{'h': stacked}`` (any nesting depth)."""

  def go(tree):
    if not isinstance(tree, dict):
      return tree
    if "h_0" in tree:
      layers = [tree[f"h_{i}"] for i in range(n_layer)]
      rest = {k: v for k, v in tree.items() if not (k.startswith("h_") and k[2:].isdigit())}
      rest["h"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
      return rest
    return {k: go(v) for k, v in tree.items()}

  return go(params)


def unstack_layers(params: dict) -> dict:
  """Scanned ``{'h': stacked}`` -> per-layer ``{'h_0': ..., 'h_1': ...}`` (any nesting depth)."""

  def go(tree):
    if not isinstance(tree, dict):
      return tree
    if isinstance(tree.get("h"), dict) and "attn" in tree["h"]:
      stacked = tree["h"]
      n = jax.tree.leaves(stacked)[0].shape[0]
      rest = {k: go(v) for k, v in tree.items() if k != "h"}
      for i in range(n):
        rest[f"h_{i}"] = jax.tree.map(lambda x: x[i], stacked)
      return rest
    return {k: go(v) for k, v in tree.items()}

  return go(params)


def init_params(config: ModelConfig, rng: Array, batch: int = 1, length: Optional[int] = None) -> dict:
  """Unboxed float params of ``GPT1LM`` (convenience for notebooks and tests)."""
  length = length or min(config.n_ctx, 8)
  variables = GPT1LM(config).init(rng, jnp.zeros((batch, length), jnp.int32))
  return nn.meta.unbox(variables["params"])
