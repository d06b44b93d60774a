"""The serving artifact's length limit is visible (issue 32): ``export.load`` refuses a length over
``max_length`` (the model's ``n_ctx``) with a ``ValueError`` naming it, where the bare artifact fails
inside JAX with ``Error refining shapes``."""

import jax
import numpy as np
import pytest

from gpt1_jax import export as gexport
from gpt1_jax.checkpoint import save_params
from gpt1_jax.model import GPT1LM, ModelConfig, init_params

CFG = ModelConfig(vocab_size=90, n_ctx=16, n_embd=32, n_head=4, n_layer=2)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
  root = tmp_path_factory.mktemp("export")
  params = jax.tree.map(np.asarray, init_params(CFG, jax.random.key(0)))
  save_params(str(root / "lm"), CFG, params)
  gexport.main([f"--checkpoint={root / 'lm'}", f"--out={root / 'lm.bin'}", "--platforms=cpu"])
  return str(root / "lm.bin"), params


def _inputs(length, batch=2):
  ids = np.random.default_rng(length).integers(0, CFG.vocab_size, (batch, length)).astype(np.int32)
  return ids, np.ones_like(ids)


def test_load_serves_up_to_max_length_as_the_bare_artifact_does(artifact):
  path, params = artifact
  served = gexport.load(path)
  assert served.max_length == CFG.n_ctx == served.signature["max_length"]
  ids, mask = _inputs(CFG.n_ctx)
  np.testing.assert_array_equal(np.asarray(served(ids, mask)), np.asarray(served.exported.call(ids, mask)))
  with jax.default_matmul_precision("float32"):
    want = np.asarray(GPT1LM(CFG).apply({"params": params}, ids, mask))
  np.testing.assert_allclose(np.asarray(served(ids, mask)), want, atol=1e-5, rtol=0)


def test_a_length_over_max_length_is_refused_naming_the_limit(artifact):
  path, _ = artifact
  served = gexport.load(path)
  ids, mask = _inputs(CFG.n_ctx + 1)
  with pytest.raises(Exception, match="refining shapes"):  # the bare artifact: why the wrapper exists
    served.exported.call(ids, mask)
  with pytest.raises(
      ValueError, match=rf"^{path}: input length 17 is outside 1\.\.16: the model's context "
      rf"\(n_ctx, max_length in its \.json\) is 16 tokens; truncate"):
    served(ids, mask)


def test_other_shapes_are_refused_with_the_expected_signature(artifact):
  path, _ = artifact
  served = gexport.load(path)
  ids, mask = _inputs(8)
  with pytest.raises(ValueError, match=r"inputs of shape \(2, 1, 8\); expected \[batch, length\]"):
    served(ids[:, None], mask[:, None])
  with pytest.raises(ValueError, match=r"differ in shape"):
    served(ids, mask[:, :4])
