"""Objectives, optimiser and the sharded train / eval steps.

Everything here is a pure function of ``(state, batch)`` compiled with
``jax.jit`` and explicit shardings; the loop that drives it lives in
``gpt1_jax/loop.py``. The state is a plain dict ``{step, params, opt_state}``
so Orbax saves and restores it without custom handlers.

Losses return *sums* plus the count they are normalised by, so gradient
accumulation over micro-batches gives exactly the large-batch gradient.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpt1_jax import perf, task_types
from gpt1_jax.batch import BatchSpec

if TYPE_CHECKING:
  from gpt1_jax import config
from gpt1_jax.model import GPT1ForTask, GPT1LM, ModelConfig, map_position_chunks
from gpt1_jax.sampled_softmax import sample_candidates, sampled_softmax_cross_entropy

Batch = dict[str, jax.Array]

# ----------------------------------------------------------------------------
# Optimiser: GPT-1's Adam with decoupled ("modified L2") weight decay.


def learning_rate_schedule(train_cfg: "config.Train", num_steps: int) -> optax.Schedule:
  """Linear warmup then cosine to 0 (pretraining), linear to 0 (fine-tuning) or constant."""
  lr = train_cfg.learning_rate
  warmup = train_cfg.warmup_steps
  if train_cfg.warmup_fraction:
    warmup = max(1, int(round(train_cfg.warmup_fraction * num_steps)))
  warmup = min(warmup, num_steps)
  decay_steps = max(1, num_steps - warmup)
  if train_cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps)
  elif train_cfg.schedule == "linear":
    decay = optax.linear_schedule(lr, 0.0, decay_steps)
  elif train_cfg.schedule == "constant":
    decay = optax.constant_schedule(lr)
  else:
    raise ValueError(f"train.schedule={train_cfg.schedule!r}: expected cosine, linear or constant")
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def decay_mask(params):
  """Weight decay on every tensor of rank > 1 (matrices, embeddings), as the
  released GPT-1 code (``vector_l2=False``): not on biases or LayerNorm gains."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(train_cfg: "config.Train", num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """GPT-1's optimiser for ``num_steps`` under ``train_cfg`` (a ``gpt1_jax.config.Train``)."""
  schedule = learning_rate_schedule(train_cfg, num_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(train_cfg.grad_clip),
      # Decoupled decay scaled by the learning rate: p -= lr * (adam + wd * p).
      optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps, weight_decay=train_cfg.weight_decay,
                  mask=decay_mask),
  )
  return tx, schedule


# ----------------------------------------------------------------------------
# Objectives. `loss_sums` -> (sum of per-unit losses, number of units, aux sums).


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-position softmax cross-entropy in float32."""
  logits = logits.astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


@dataclasses.dataclass(frozen=True)
class LMObjective:
  """L1: next-token cross-entropy averaged over real target tokens.

  ``loss_chunk`` > 0 projects the hidden states onto the 40k vocabulary that
  many positions at a time, under ``jax.checkpoint``, so the full ``[B, T,
  vocab]`` logits and their gradient never exist at once: the same loss and
  gradient (up to float summation order) for the price of recomputing the
  output layer in the backward pass. Off by default: on CPU it is ~30% slower
  per step at the tiny shape (BENCHMARKS.md); it is for batches whose logits
  would not fit.

  ``softmax_samples`` > 0 trains with a sampled softmax instead
  (:mod:`gpt1_jax.sampled_softmax`): each training step scores every
  position against its own token and that many candidates drawn from
  ``proposal`` (log-probabilities, the corpus unigram from
  ``sampled_softmax.unigram_proposal``), shared by the batch. It is a training-time
  estimate only: evaluation (``deterministic=True``) always uses the full
  softmax, so held-out perplexities compare across recipes. The tiny CPU config
  uses it, where the output layer is 93% of a step's FLOPs.
  """

  model_config: ModelConfig
  loss_chunk: int = 0
  softmax_samples: int = 0
  # log q [vocab] of the sampled softmax (`unigram_proposal`); not part of equality.
  proposal: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)

  @property
  def model(self) -> nn.Module:
    return GPT1LM(self.model_config)

  @staticmethod
  def batch_spec(seq_len: int) -> BatchSpec:
    """Windows of ``seq_len`` tokens, their next tokens, and which targets are real text."""
    return BatchSpec.of(inputs=((seq_len,), np.int32), targets=((seq_len,), np.int32),
                        loss_mask=((seq_len,), np.float32, 1))

  def dummy_batch(self, batch_size: int, seq_len: int) -> Batch:
    return jax.tree.map(jnp.asarray, self.batch_spec(seq_len).zeros(batch_size))

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token: the full output layer, or only the sampled softmax's rows."""
    rows = self.softmax_samples + 1 if self.softmax_samples else 0
    return perf.flops_per_token(self.model_config, seq_len, head_rows=rows)

  def eval_outputs(self, params, batch: Batch) -> dict:
    """Sums for an exact held-out mean (padding rows carry example_mask 0); always the full softmax."""
    return _eval_sums(self.loss_sums(params, batch, None, deterministic=True))

  def init(self, rng, batch: Batch):
    return self.model.init({"params": rng, "dropout": rng}, batch["inputs"])

  def loss_sums(self, params, batch: Batch, rng, deterministic: bool):
    rngs = None if deterministic else {"dropout": rng}
    mask = batch["loss_mask"].astype(jnp.float32)
    if "example_mask" in batch:
      mask = mask * batch["example_mask"][:, None]
    t = batch["inputs"].shape[1]
    if self.softmax_samples and not deterministic:
      hidden = self.model.apply({"params": params}, batch["inputs"], deterministic=deterministic, rngs=rngs,
                                method=GPT1LM.hidden)
      losses = self._sampled_cross_entropy(params, hidden, batch["targets"], jax.random.fold_in(rng, 1))
      total = jnp.sum(losses * mask)
      return total, jnp.sum(mask), {"lm_loss": total}
    chunk = int(self.loss_chunk)
    if not chunk or chunk >= t:
      logits = self.model.apply({"params": params}, batch["inputs"], deterministic=deterministic, rngs=rngs)
      total = jnp.sum(cross_entropy(logits, batch["targets"]) * mask)
      return total, jnp.sum(mask), {"lm_loss": total}
    if t % chunk:
      raise ValueError(f"train.lm_loss_chunk={chunk} must divide the sequence length {t}")
    hidden = self.model.apply({"params": params}, batch["inputs"], deterministic=deterministic, rngs=rngs,
                              method=GPT1LM.hidden)

    @jax.checkpoint  # the backward pass recomputes each chunk's logits instead of storing them
    def chunk_loss(h, y, m):
      logits = self.model.apply({"params": params}, h, method=GPT1LM.project)
      return jnp.sum(cross_entropy(logits, y) * m)

    sums = map_position_chunks(chunk_loss, chunk, hidden, batch["targets"], mask)
    total = jnp.sum(sums)
    return total, jnp.sum(mask), {"lm_loss": total}

  def _sampled_cross_entropy(self, params, hidden, targets, rng):
    if self.proposal is None:
      raise ValueError(
          "softmax_samples > 0 needs a proposal: LMObjective(proposal=sampled_softmax.unigram_proposal(counts))")
    log_probs = jnp.asarray(self.proposal)
    sampled = sample_candidates(rng, log_probs, int(self.softmax_samples))
    apply = lambda method, *a: self.model.apply({"params": params}, *a, method=method)  # noqa: E731
    return sampled_softmax_cross_entropy(apply(GPT1LM.target_logits, hidden, targets),
                                         apply(GPT1LM.project_rows, hidden, sampled), targets, sampled, log_probs)


def lm_loss_per_sequence(logits: jax.Array, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """Auxiliary L1 on task inputs: mean next-token loss over each sequence's real tokens.

  Normalised per sequence (then averaged over sequences), as the released
  GPT-1 fine-tuning code does, so each example weighs the same whatever its length.
  """
  targets = input_ids[..., 1:]
  mask = (attention_mask[..., 1:] * attention_mask[..., :-1]).astype(jnp.float32)
  ce = cross_entropy(logits[..., :-1, :], targets)
  return jnp.sum(ce * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0)


@dataclasses.dataclass(frozen=True)
class TaskObjective:
  """L3 = L2 + lm_coef * L1 (Section 3.2); lm_coef = 0 is the paper's "no aux LM" ablation."""

  model_config: ModelConfig
  task_type: str
  num_labels: int
  lm_coef: float = 0.5
  clf_pdrop: float = 0.1

  @property
  def model(self) -> nn.Module:
    return GPT1ForTask(self.model_config, self.task_type, self.num_labels, self.clf_pdrop)

  def batch_spec(self, num_seqs: int, seq_len: int) -> BatchSpec:
    """Each example as ``num_seqs`` transformed sequences (one per candidate, or one), where each
    is read out (``cls_index``), which candidates exist (``choice_mask``) and the label."""
    return BatchSpec.of(input_ids=((num_seqs, seq_len), np.int32), attention_mask=((num_seqs, seq_len), np.int32, 1),
                        cls_index=((num_seqs,), np.int32), choice_mask=((num_seqs,), np.float32, 1),
                        label=((), task_types.get(self.task_type).label_dtype))

  def dummy_batch(self, batch_size: int, num_seqs: int, seq_len: int) -> Batch:
    return jax.tree.map(jnp.asarray, self.batch_spec(num_seqs, seq_len).zeros(batch_size))

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token; without the auxiliary LM (lm_coef 0) the output layer never runs."""
    return perf.flops_per_token(self.model_config, seq_len, lm_head=self.lm_coef != 0)

  def eval_outputs(self, params, batch: Batch) -> dict:
    """The loss sums and each example's prediction (the metrics are computed on the host)."""
    return {
        **_eval_sums(self.loss_sums(params, batch, None, deterministic=True)), "predictions": self.predict(
            params, batch)
    }

  def init(self, rng, batch: Batch):
    return self.model.init({
        "params": rng,
        "dropout": rng
    }, batch["input_ids"], batch["attention_mask"], batch["cls_index"])

  def forward(self, params, batch: Batch, rng, deterministic: bool):
    model = self.model
    logits, hidden = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["cls_index"],
                                 deterministic=deterministic, rngs=None if deterministic else {"dropout": rng})
    return task_types.get(self.task_type).mask_absent(logits, batch["choice_mask"] > 0, jnp), hidden

  def task_losses(self, logits, labels):
    if task_types.get(self.task_type).regression:
      return jnp.square(logits - labels.astype(jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))

  def loss_sums(self, params, batch: Batch, rng, deterministic: bool):
    logits, hidden = self.forward(params, batch, rng, deterministic)
    weight = batch.get("example_mask", jnp.ones(logits.shape[0], jnp.float32)).astype(jnp.float32)
    task = self.task_losses(logits, batch["label"])
    aux = {"task_loss": jnp.sum(task * weight)}
    total = aux["task_loss"]
    if self.lm_coef:
      lm_logits = self.model.apply({"params": params}, hidden, method=GPT1ForTask.lm_logits)
      per_seq = lm_loss_per_sequence(lm_logits, batch["input_ids"], batch["attention_mask"])
      seq_w = batch["choice_mask"].astype(jnp.float32)
      per_example = jnp.sum(per_seq * seq_w, -1) / jnp.maximum(jnp.sum(seq_w, -1), 1.0)
      aux["lm_loss"] = jnp.sum(per_example * weight)
      total = total + self.lm_coef * aux["lm_loss"]
    return total, jnp.sum(weight), aux

  def predict(self, params, batch: Batch):
    logits, _ = self.forward(params, batch, None, True)
    return task_types.get(self.task_type).predict(logits, jnp)


# ----------------------------------------------------------------------------
# State and steps.


def init_state_fn(objective, tx, dummy: Batch) -> Callable[[jax.Array], dict]:
  """``rng -> state`` with params still boxed in ``nn.Partitioned`` (for sharding discovery)."""

  def init(rng):
    params = objective.init(rng, dummy)["params"]
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  return init


def train_step(state: dict, batch: Batch, *, objective, tx: optax.GradientTransformation, schedule: optax.Schedule,
               seed: int, grad_accum_steps: int = 1, skip_nonfinite: bool = False, nan_at_step: int = -1):
  """One optimiser update over a global batch (optionally in micro-batches)."""
  step = state["step"]
  # Dropout randomness is a function of the step: resuming replays it exactly.
  rng = jax.random.fold_in(jax.random.key(seed), step)
  params = state["params"]

  def grads_of(micro, micro_rng):

    def f(p):
      total, count, aux = objective.loss_sums(p, micro, micro_rng, deterministic=False)
      return total, (count, aux)

    (total, (count, aux)), g = jax.value_and_grad(f, has_aux=True)(params)
    return total, count, aux, g

  if grad_accum_steps == 1:
    total, count, aux, grads = grads_of(batch, rng)
  else:
    micro_batches = jax.tree.map(lambda x: x.reshape((grad_accum_steps, x.shape[0] // grad_accum_steps) + x.shape[1:]),
                                 batch)

    def body(carry, xs):
      i, micro = xs
      t, c, a, g = grads_of(micro, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (t, c, a, g)), None

    zero = jax.tree.map(jnp.zeros_like,
                        jax.eval_shape(lambda: grads_of(jax.tree.map(lambda x: x[0], micro_batches), rng)))
    (total, count, aux, grads), _ = jax.lax.scan(body, zero, (jnp.arange(grad_accum_steps), micro_batches))

  count = jnp.maximum(count, 1.0)
  grads = jax.tree.map(lambda g: g / count, grads)
  loss = total / count
  if nan_at_step >= 0:  # fault injection for the reliability suite only
    loss = jnp.where(step == nan_at_step, jnp.nan, loss)
    grads = jax.tree.map(lambda g: jnp.where(step == nan_at_step, jnp.nan, g), grads)
  grad_norm = optax.global_norm(grads)
  updates, new_opt = tx.update(grads, state["opt_state"], params)
  new_params = optax.apply_updates(params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if skip_nonfinite:
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_params, new_opt = keep(new_params, params), keep(new_opt, state["opt_state"])
  metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(step), "finite": finite, "count": count}
  metrics.update({k: v / count for k, v in aux.items()})
  return {"step": step + 1, "params": new_params, "opt_state": new_opt}, metrics


def _eval_sums(loss_sums) -> dict:
  total, count, aux = loss_sums
  return {"loss_sum": total, "count": count, **{f"{k}_sum": v for k, v in aux.items()}}


def eval_step(params, batch: Batch, *, objective) -> dict:
  """What the objective reports for one eval batch (``eval_outputs``), compiled by ``evaluate``."""
  return objective.eval_outputs(params, batch)


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)
