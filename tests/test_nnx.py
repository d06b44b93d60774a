"""GPT1 from a Flax NNX codebase: the example in docs/weights.md runs as written, and converted weights compute
what the source model computes once wrapped."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gpt1_jax import convert
from gpt1_jax.model import GPT1, ModelConfig, init_params, stack_layers
from gpt1_jax.nnx_bridge import to_nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_nnx_example() -> str:
  """The NNX example of docs/weights.md (the README's "Weights out" section until it moved there)."""
  with open(os.path.join(ROOT, "docs", "weights.md")) as f:
    text = f.read()
  section = text[text.index("## Weights out"):]
  blocks = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "to_nnx" in b]
  assert len(blocks) == 1, "docs/weights.md's Weights out section should hold exactly one NNX example"
  return blocks[0]


@pytest.mark.slow
def test_readme_nnx_example_runs_as_written(tmp_path):
  # A fresh interpreter outside the repository: the snippet must need nothing the README does not show.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", readme_nnx_example()], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", out.stdout).groups())
  assert last < first  # the head (and body) trained under nnx.jit


def test_to_nnx_with_converted_hf_weights_matches_transformers(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  hf = transformers.OpenAIGPTLMHeadModel(
      transformers.OpenAIGPTConfig(afn="gelu", n_layer=2, n_embd=32, n_head=4, vocab_size=61, n_positions=16)).eval()
  hf.save_pretrained(tmp_path / "hf")
  config, params = convert.from_hf_pretrained(str(tmp_path / "hf"))

  ids = np.random.default_rng(0).integers(0, 61, (2, 9))
  mask = np.ones((2, 9), np.int64)
  mask[1, 6:] = 0
  with torch.no_grad():
    ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  with jax.default_matmul_precision("float32"):
    lm = to_nnx(config, params, lm_head=True)
    got = np.asarray(lm(jnp.asarray(ids), jnp.asarray(mask)))
    body = to_nnx(config, params)
    hidden = np.asarray(body(jnp.asarray(ids), jnp.asarray(mask)))
    want_hidden = np.asarray(GPT1(config).apply({"params": params["transformer"]}, jnp.asarray(ids), jnp.asarray(mask)))
  real = mask.astype(bool)
  assert np.abs(got[real] - ref[real]).max() < 1e-4
  np.testing.assert_array_equal(hidden, want_hidden)

  # Back out: the NNX state is our parameter tree again.
  back = nnx.to_pure_dict(nnx.state(body, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, back, params["transformer"])


def test_to_nnx_trains_a_head_under_nnx_jit_and_accepts_scanned_params():
  config = ModelConfig(vocab_size=50, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
  params = init_params(config, jax.random.key(1))
  ids = jnp.asarray(np.random.default_rng(1).integers(0, 50, (4, 8)))
  mask = jnp.ones_like(ids)
  labels = jnp.array([0, 1, 1, 0])

  # Scanned checkpoints load into a per-layer config and the other way round, computing the same.
  scanned = {"transformer": stack_layers(params["transformer"], config.n_layer)}
  forward = nnx.jit(lambda m, ids, mask: m(ids, mask))  # one compiled call, not op-by-op dispatch
  a = forward(to_nnx(config, scanned), ids, mask)
  b = forward(to_nnx(config.replace(scan_layers=True), params), ids, mask)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)

  class Classifier(nnx.Module):

    def __init__(self, rngs):
      self.gpt = to_nnx(config, params, rngs=rngs)
      self.head = nnx.Linear(config.n_embd, 2, rngs=rngs)

    def __call__(self, ids, mask):
      return self.head(self.gpt(ids, mask, deterministic=False)[:, -1])

  model = Classifier(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  head_before = np.asarray(model.head.kernel[...])

  @nnx.jit
  def step(model, optimizer):

    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(ids, mask), labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(15)]
  assert losses[-1] < 0.5 * losses[0]
  assert not np.array_equal(np.asarray(model.head.kernel[...]), head_before)


def test_to_nnx_refuses_weights_of_another_shape():
  config = ModelConfig(vocab_size=50, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
  params = init_params(config, jax.random.key(0))
  with pytest.raises(ValueError, match="parameter trees differ"):
    to_nnx(config.replace(n_layer=3), params)
  with pytest.raises(ValueError, match=r"shapes \(50, 32\)"):
    to_nnx(config.replace(vocab_size=60), params)
