"""The sampled softmax that the tiny CPU recipe pretrains with (``train.softmax_samples``).

With GPT-1's 40,481-token vocabulary the tied output layer is most of a small model's step
(93% of the FLOPs at 2 x 128). A sampled softmax scores each position against its own token and
``K`` candidates shared by the batch, drawn from a proposal ``q``, with every logit corrected by
``-log(K q)``, so the gradient estimates the full softmax's at ``K / vocab`` of the output
layer's cost (Bengio & Senecal 2008; Jean et al. 2015). The proposal is the corpus's own unigram:
a data-free log-uniform over ids fails here, because GPT-1's ids are not in frequency order
(BENCHMARKS.md). Pure functions; :class:`gpt1_jax.train.LMObjective` calls them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def unigram_proposal(counts) -> np.ndarray:
  """A sampled softmax's proposal from corpus token counts: add-one smoothed unigram log-probabilities
  (float32 ``[vocab]``), so every id can be drawn and its correction is finite."""
  counts = np.asarray(counts, np.float64) + 1.0
  return np.log(counts / counts.sum()).astype(np.float32)


def sample_candidates(rng: jax.Array, log_probs: jax.Array, num: int) -> jax.Array:
  """``num`` ids drawn with replacement from ``exp(log_probs)`` by inverse CDF (``num`` binary
  searches, not a ``[num, vocab]`` Gumbel draw)."""
  cdf = jnp.cumsum(jnp.exp(log_probs))
  u = jax.random.uniform(rng, (num,)) * cdf[-1]
  return jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, log_probs.shape[0] - 1).astype(jnp.int32)


def sampled_softmax_cross_entropy(true_logits: jax.Array, sampled_logits: jax.Array, targets: jax.Array,
                                  sampled: jax.Array, log_probs: jax.Array) -> jax.Array:
  """Sampled softmax (Jean et al. 2015; Bengio & Senecal 2008): each position's cross-entropy over its
  own token and ``K`` shared candidates drawn with replacement from the proposal ``exp(log_probs)``,
  every logit corrected by ``-log(K * q(id))`` (the id's expected count among the candidates), and
  candidates equal to the position's target removed. Its gradient estimates the full softmax's at
  ``K / vocab`` of the output layer's cost; the estimate is the better the closer q is to the model.

  ``true_logits [...]``, ``sampled_logits [..., K]``, ``targets [...]``, ``sampled [K]`` -> ``[...]``.
  """
  log_k = jnp.log(float(sampled.shape[0]))
  true = true_logits.astype(jnp.float32) - (log_k + log_probs[targets])
  other = sampled_logits.astype(jnp.float32) - (log_k + log_probs[sampled])
  other = jnp.where(targets[..., None] == sampled, -jnp.inf, other)
  both = jnp.concatenate([true[..., None], other], axis=-1)
  return jax.nn.logsumexp(both, axis=-1) - true
