"""The sampled softmax of pretraining (`train.softmax_samples`): its draws, its gradient, its use in a run."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import micro_pretrain_config
from gpt1_jax import loop, perf
from gpt1_jax.model import ModelConfig
from gpt1_jax.sampled_softmax import sample_candidates, sampled_softmax_cross_entropy, unigram_proposal
from gpt1_jax.train import LMObjective, cross_entropy


def test_unigram_proposal_is_smoothed_counts():
  lp = unigram_proposal([3, 0, 1])
  np.testing.assert_allclose(np.exp(lp), [4 / 7, 1 / 7, 2 / 7], rtol=1e-6)


def test_candidates_follow_the_proposal():
  counts = np.random.default_rng(0).integers(0, 1000, 300)
  lp = jnp.asarray(unigram_proposal(counts))
  draws = np.asarray(sample_candidates(jax.random.key(1), lp, 400_000))
  assert draws.min() >= 0 and draws.max() < 300
  freq = np.bincount(draws, minlength=300) / draws.size
  q = np.exp(np.asarray(lp))
  # Binomial standard error of a frequency <= sqrt(q / n) ~ 4e-4 here: 5 of them.
  np.testing.assert_allclose(freq, q, atol=5 * np.sqrt(q.max() / draws.size))


def test_gradient_approaches_the_full_softmax():
  """With many candidates, d loss / d logit -> p_v / (1 - p_target) off the target and -1 on it: the
  full softmax's gradient over the other tokens (the analytic limit, not our own formula run twice)."""
  v, n = 64, 8
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(n, v)) * 1.5, jnp.float32)
  targets = jnp.asarray(rng.integers(0, v, n), jnp.int32)
  lp = jnp.asarray(unigram_proposal(rng.integers(1, 1000, v)))
  sampled = sample_candidates(jax.random.key(0), lp, 300_000)

  def loss(l):
    return jnp.sum(sampled_softmax_cross_entropy(l[jnp.arange(n), targets], l[:, sampled], targets, sampled, lp))

  g = np.asarray(jax.grad(loss)(logits))
  p = np.asarray(jax.nn.softmax(logits))
  on_target = np.zeros((n, v), bool)
  on_target[np.arange(n), np.asarray(targets)] = True
  expected = p / (1 - p[on_target])[:, None]
  np.testing.assert_allclose(g[~on_target], expected[~on_target], rtol=0.05, atol=2e-3)
  np.testing.assert_allclose(g[on_target], -1.0, atol=0.01)
  # And it points where the full softmax's gradient does.
  full = np.asarray(jax.grad(lambda l: jnp.sum(cross_entropy(l, targets)))(logits))
  cos = np.sum(g * full) / np.linalg.norm(g) / np.linalg.norm(full)
  assert cos > 0.99


def test_a_candidate_equal_to_the_target_is_not_a_negative():
  lp = jnp.log(jnp.full((4,), 0.25))
  sampled = jnp.array([2, 2, 1], jnp.int32)
  targets = jnp.array([2], jnp.int32)
  logits = jnp.array([[0.0, 1.0, 5.0, 0.0]])
  got = sampled_softmax_cross_entropy(logits[:, 2], logits[:, sampled], targets, sampled, lp)
  # Only candidate 1 remains beside the target; every logit shifted by the same log(3 * 0.25).
  np.testing.assert_allclose(got, [np.log1p(np.exp(1.0 - 5.0))], rtol=1e-5)


def test_objective_without_a_proposal_is_an_error():
  cfg = ModelConfig(vocab_size=50, n_ctx=8, n_embd=16, n_head=2, n_layer=1)
  obj = LMObjective(cfg, softmax_samples=8)
  batch = obj.dummy_batch(2, 8)
  params = obj.init(jax.random.key(0), batch)["params"]
  with pytest.raises(ValueError, match="needs a proposal"):
    obj.loss_sums(params, batch, jax.random.key(1), deterministic=False)
  # Evaluation never samples: the full softmax, with or without a proposal.
  assert np.isfinite(float(obj.loss_sums(params, batch, None, deterministic=True)[0]))


def test_flops_count_only_the_rows_multiplied():
  cfg = ModelConfig(n_ctx=64, n_embd=128, n_head=4, n_layer=2)
  full = perf.flops_per_token(cfg, 64)
  sampled = perf.flops_per_token(cfg, 64, head_rows=2049)
  assert full - sampled == pytest.approx(6 * (cfg.vocab_size - 2049) * 128)


@pytest.mark.slow
def test_pretraining_with_a_sampled_softmax_learns_and_evaluates_exactly(lm_data_dir, tmp_path):
  c = micro_pretrain_config(lm_data_dir, steps=40)
  c.train.softmax_samples = 64
  c.eval.every_steps = 40
  result = loop.train_and_evaluate(c, str(tmp_path / "run"))
  with open(os.path.join(tmp_path, "run", "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert losses[-1] < losses[0]
  # The held-out loss is the full softmax's: exp(loss) is the perplexity the loop reports, and it is
  # below the uniform model's log(vocab) after training.
  assert result["eval/perplexity"] == pytest.approx(np.exp(result["eval/loss"]), rel=1e-6)
  assert result["eval/loss"] < np.log(c.model.vocab_size)


def test_resuming_a_run_saved_before_the_key_existed():
  from gpt1_jax import resume
  saved = {"train": {"learning_rate": 1e-3}}  # a config.json written before train.softmax_samples
  assert resume.config_changes(saved, {"train": {"learning_rate": 1e-3, "softmax_samples": 0}}) == {}
  assert resume.config_changes(saved, {"train": {
      "learning_rate": 1e-3,
      "softmax_samples": 64
  }}) == {
      "train.softmax_samples": (0, 64)
  }
