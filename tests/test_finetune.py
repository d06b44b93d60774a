"""The joint objective L3 = L2 + 0.5 * L1 against an independent computation on Hugging Face's model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import OpenAIGPTConfig, OpenAIGPTDoubleHeadsModel

from gpt1_jax import convert
from gpt1_jax.train import TaskObjective


def test_joint_loss_is_mc_loss_plus_half_lm_loss_on_hf_weights():
  torch.manual_seed(0)
  hf = OpenAIGPTDoubleHeadsModel(
      OpenAIGPTConfig(afn="gelu", n_layer=2, n_embd=64, n_head=4, vocab_size=97, n_positions=24)).eval()
  config, params = convert.from_hf_double_heads(hf.state_dict(), n_head=4)
  rng = np.random.default_rng(0)
  b, k, t = 3, 4, 12
  ids = rng.integers(0, 97, (b, k, t))
  lengths = rng.integers(5, t + 1, (b, k))
  mask = (np.arange(t)[None, None] < lengths[..., None]).astype(np.int64)
  cls = lengths - 1
  choice_mask = np.ones((b, k), np.float32)
  choice_mask[2, 3] = 0  # the third example has only 3 candidates
  labels = np.array([1, 3, 0])

  with torch.no_grad():
    out = hf(torch.tensor(ids), attention_mask=torch.tensor(mask.reshape(b * k, t)), mc_token_ids=torch.tensor(cls))
  mc = out.mc_logits.numpy().astype(np.float64)
  mc[choice_mask == 0] = -np.inf
  mc_loss = -(mc[np.arange(b), labels] - np.log(np.exp(mc - mc.max(1, keepdims=True)).sum(1)) - mc.max(1))
  # L1, normalised as the released GPT-1 code: mean over each sequence's real
  # next-token predictions, then mean over the example's (real) sequences.
  lp = torch.log_softmax(out.logits.double(), -1).numpy().reshape(b, k, t, -1)
  lm_example = []
  for i in range(b):
    per_seq = []
    for j in range(k):
      if choice_mask[i, j] == 0:
        continue
      n = lengths[i, j]
      per_seq.append(-np.mean([lp[i, j, s, ids[i, j, s + 1]] for s in range(n - 1)]))
    lm_example.append(np.mean(per_seq))
  expected = np.mean(mc_loss + 0.5 * np.array(lm_example))

  objective = TaskObjective(config, "multiple_choice", 1, lm_coef=0.5)
  batch = {
      "input_ids": jnp.asarray(ids, jnp.int32),
      "attention_mask": jnp.asarray(mask, jnp.int32),
      "cls_index": jnp.asarray(cls, jnp.int32),
      "choice_mask": jnp.asarray(choice_mask),
      "label": jnp.asarray(labels, jnp.int32)
  }
  with jax.default_matmul_precision("float32"):
    total, count, aux = objective.loss_sums(params, batch, None, deterministic=True)
  assert float(count) == b
  np.testing.assert_allclose(float(total) / b, expected, rtol=1e-5)
  np.testing.assert_allclose(float(aux["task_loss"]) / b, mc_loss.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(aux["lm_loss"]) / b, np.mean(lm_example), rtol=1e-5)

  no_aux = TaskObjective(config, "multiple_choice", 1, lm_coef=0.0)
  total0, _, aux0 = no_aux.loss_sums(params, batch, None, deterministic=True)
  assert "lm_loss" not in aux0
  np.testing.assert_allclose(float(total0) / b, mc_loss.mean(), rtol=1e-5)


@pytest.mark.parametrize("task_type, labels", [("classification", [0, 1]), ("regression", [0.5, 4.0])])
def test_task_losses(task_type, labels):
  from gpt1_jax.model import ModelConfig
  cfg = ModelConfig(vocab_size=50, n_ctx=8, n_embd=16, n_head=2, n_layer=1)
  obj = TaskObjective(cfg, task_type, 2, lm_coef=0.0)
  logits = jnp.array([[0.3, -1.0], [2.0, 0.5]]) if task_type == "classification" else jnp.array([1.0, 3.0])
  got = obj.task_losses(logits, jnp.asarray(labels))
  if task_type == "classification":
    lp = jax.nn.log_softmax(logits)
    want = -lp[jnp.arange(2), jnp.array(labels)]
  else:
    want = (logits - jnp.asarray(labels))**2
  np.testing.assert_allclose(got, want, rtol=1e-6)
