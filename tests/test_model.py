"""The decoder's contract: shapes, init, masks, layouts and implementations agree."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt1_jax.model import (GPT1, GPT1ForTask, GPT1LM, ModelConfig, gather_positions, init_params, stack_layers,
                            unstack_layers)

CFG = ModelConfig(vocab_size=300, n_ctx=32, n_embd=64, n_head=4, n_layer=3)


def ids(b=2, t=12, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randint(0, CFG.vocab_size, (b, t)))


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.key(0), length=12)


def test_gpt1_defaults_are_the_released_model():
  c = ModelConfig()
  assert (c.vocab_size, c.n_ctx, c.n_embd, c.n_head, c.n_layer) == (40481, 512, 768, 12, 12)
  assert (c.embd_pdrop, c.attn_pdrop, c.resid_pdrop, c.layer_norm_epsilon) == (0.1, 0.1, 0.1, 1e-5)
  # 116,534,784 released weights + 3 special-token rows
  assert c.num_params() == 116_534_784 + 3 * 768


def test_shapes_and_every_param_has_logical_axes():
  v = GPT1LM(CFG).init(jax.random.key(0), ids())
  boxed = jax.tree.leaves(v["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(b, nn.Partitioned) and len(b.names) == b.value.ndim for b in boxed)
  names = {n for b in boxed for n in b.names if n}
  assert names == {"vocab", "embed", "heads", "kv", "mlp"}
  p = nn.meta.unbox(v["params"])
  assert GPT1(CFG).apply({"params": p["transformer"]}, ids()).shape == (2, 12, 64)
  assert GPT1LM(CFG).apply({"params": p}, ids()).shape == (2, 12, 300)


def test_init_statistics(params):
  t = params["transformer"]
  for w in (t["embed"]["tokens"], t["decoder"]["h_0"]["mlp"]["fc_kernel"]):
    assert abs(float(np.std(w)) - 0.02) < 0.002 and abs(float(np.mean(w))) < 0.002
  assert not np.any(t["decoder"]["h_1"]["attn"]["qkv_bias"])
  assert np.all(t["decoder"]["h_2"]["ln_2"]["scale"] == 1) and not np.any(t["decoder"]["h_2"]["ln_2"]["bias"])


def test_lm_head_is_the_tied_token_embedding(params):
  x = ids()
  h = GPT1(CFG).apply({"params": params["transformer"]}, x)
  logits = GPT1LM(CFG).apply({"params": params}, x)
  np.testing.assert_allclose(logits, h @ params["transformer"]["embed"]["tokens"].T, atol=1e-5)


def test_causal_future_tokens_do_not_change_the_past(params):
  a, b = ids(seed=1), ids(seed=1)
  b = b.at[:, 8:].set(7)
  la = GPT1LM(CFG).apply({"params": params}, a)
  lb = GPT1LM(CFG).apply({"params": params}, b)
  np.testing.assert_allclose(la[:, :8], lb[:, :8], atol=1e-6)
  assert np.abs(la[:, 8:] - lb[:, 8:]).max() > 1e-3


def test_appended_padding_does_not_change_real_positions(params):
  x = ids(t=9)
  padded = jnp.concatenate([x, jnp.zeros((2, 7), x.dtype)], 1)
  mask = jnp.concatenate([jnp.ones((2, 9)), jnp.zeros((2, 7))], 1)
  ref = GPT1LM(CFG).apply({"params": params}, x)
  out = GPT1LM(CFG).apply({"params": params}, padded, mask)
  np.testing.assert_allclose(out[:, :9], ref, atol=1e-5)


def test_scan_and_remat_layouts_compute_the_same_function(params):
  x = ids()
  ref = GPT1LM(CFG).apply({"params": params}, x)
  for cfg in (CFG.replace(scan_layers=True), CFG.replace(scan_layers=True, remat="full"), CFG.replace(remat="dots")):
    p = stack_layers(params, CFG.n_layer) if cfg.scan_layers else params
    np.testing.assert_allclose(GPT1LM(cfg).apply({"params": p}, x), ref, atol=2e-5)
  assert jax.tree.all(jax.tree.map(np.array_equal, unstack_layers(stack_layers(params, 3)), params))


def test_dot_product_attention_matches_einsum(params):
  cfg = CFG.replace(attention="dot_product", attn_pdrop=0.0)
  x = ids()
  mask = jnp.ones((2, 12)).at[1, 9:].set(0)
  np.testing.assert_allclose(
      GPT1LM(cfg).apply({"params": params}, x, mask),
      GPT1LM(CFG).apply({"params": params}, x, mask), atol=2e-5)


def test_attention_dropout_needs_the_einsum_path():
  with pytest.raises(ValueError, match="cannot apply attention dropout"):
    ModelConfig(attention="cudnn")


def test_vocab_padding_keeps_outputs_exact(params):
  cfg = CFG.replace(vocab_pad_multiple=128)
  p = jax.tree.map(lambda x: x, params)
  tok = p["transformer"]["embed"]["tokens"]
  p["transformer"]["embed"]["tokens"] = jnp.concatenate([tok, jnp.ones((84, 64))])
  out = GPT1LM(cfg).apply({"params": p}, ids())
  assert out.shape[-1] == 300
  np.testing.assert_allclose(out, GPT1LM(CFG).apply({"params": params}, ids()), atol=1e-6)


def test_bf16_compute_keeps_f32_master_weights(params):
  cfg = CFG.replace(dtype="bfloat16")
  out = GPT1LM(cfg).apply({"params": params}, ids())
  assert out.dtype == jnp.bfloat16
  ref = GPT1LM(CFG).apply({"params": params}, ids())
  assert np.abs(np.asarray(out, np.float32) - ref).max() < 0.1
  v = GPT1LM(cfg).init(jax.random.key(0), ids())
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.meta.unbox(v)))


def test_dropout_is_active_in_training_and_seeded(params):
  x = ids()
  f = lambda r: GPT1LM(CFG).apply({"params": params}, x, deterministic=False, rngs={"dropout": r})
  a, b, c = f(jax.random.key(1)), f(jax.random.key(1)), f(jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_config_errors_are_clear():
  with pytest.raises(ValueError, match="n_embd=100 is not divisible by n_head=12"):
    ModelConfig(n_embd=100)
  with pytest.raises(ValueError, match="exceeds the position table n_ctx=32"):
    GPT1LM(CFG).init(jax.random.key(0), jnp.zeros((1, 33), jnp.int32))


def test_task_heads_read_the_classify_state_at_its_position(params):
  x = ids(b=3, t=10).reshape(3, 1, 10)
  cls = jnp.array([[9], [4], [6]])
  mask = (jnp.arange(10)[None, None] <= cls[..., None]).astype(jnp.int32)
  model = GPT1ForTask(CFG, "classification", 2)
  v = model.init(jax.random.key(0), x, mask, cls)
  p = nn.meta.unbox(v["params"])
  p["transformer"] = params["transformer"]
  logits, hidden = model.apply({"params": p}, x, mask, cls)
  h = GPT1(CFG).apply({"params": params["transformer"]}, x[:, 0], mask[:, 0])
  want = h[jnp.arange(3), cls[:, 0]] @ p["head"]["kernel"] + p["head"]["bias"]
  np.testing.assert_allclose(logits, want, atol=1e-5)
  np.testing.assert_allclose(gather_positions(hidden, cls)[:, 0], h[jnp.arange(3), cls[:, 0]], atol=1e-6)


def test_similarity_sums_both_orderings_before_the_head(params):
  x = ids(b=2, t=8).reshape(1, 2, 8)
  cls = jnp.array([[7, 7]])
  mask = jnp.ones((1, 2, 8), jnp.int32)
  model = GPT1ForTask(CFG, "similarity", 2)
  p = nn.meta.unbox(model.init(jax.random.key(0), x, mask, cls)["params"])
  p["transformer"] = params["transformer"]
  logits, _ = model.apply({"params": p}, x, mask, cls)
  h = GPT1(CFG).apply({"params": params["transformer"]}, x[0])
  np.testing.assert_allclose(logits[0], (h[0, 7] + h[1, 7]) @ p["head"]["kernel"] + p["head"]["bias"], atol=1e-5)


def test_lstm_ablation_is_causal_and_shares_the_heads():
  cfg = CFG.replace(architecture="lstm", lstm_units=48)
  x = ids()
  v = GPT1LM(cfg).init(jax.random.key(0), x)
  p = nn.meta.unbox(v["params"])
  a = GPT1LM(cfg).apply({"params": p}, x)
  b = GPT1LM(cfg).apply({"params": p}, x.at[:, 6:].set(3))
  np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)
  assert p["transformer"]["decoder"]["lstm"]["recurrent_kernel"].shape == (48, 4 * 48)
  m = GPT1ForTask(cfg, "multiple_choice")
  out, _ = m.apply(m.init(jax.random.key(0), x[None], jnp.ones((1, 2, 12)), jnp.array([[11, 11]])), x[None],
                   jnp.ones((1, 2, 12)), jnp.array([[11, 11]]))
  assert out.shape == (1, 2)
