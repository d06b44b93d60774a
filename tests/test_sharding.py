"""Data / FSDP / tensor parallelism come from the rules alone and do not change the numbers."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gpt1_jax import config as config_lib
from gpt1_jax import sharding
from gpt1_jax import state as state_lib
from gpt1_jax.model import ModelConfig
from gpt1_jax.train import LMObjective, make_optimizer, train_step

CFG = ModelConfig(vocab_size=256, n_ctx=16, n_embd=64, n_head=8, n_layer=2, vocab_pad_multiple=8)
BATCH, SEQ, STEPS = 8, 16, 5


def train_cfg():
  return config_lib.Train(learning_rate=1e-3, warmup_steps=2, schedule="cosine")


def mesh_cfg(data=1, fsdp=1, tensor=1):
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def batches():
  rng = np.random.RandomState(0)
  for _ in range(STEPS):
    x = rng.randint(0, CFG.vocab_size, (BATCH, SEQ + 1)).astype(np.int32)
    yield {"inputs": x[:, :-1], "targets": x[:, 1:], "loss_mask": np.ones((BATCH, SEQ), np.float32)}


def run(mesh_sizes, devices, model_cfg=CFG, accum=1, loss_chunk=0):
  mesh = sharding.make_mesh(mesh_cfg(*mesh_sizes), devices)
  rules = sharding.DEFAULT_RULES
  objective = LMObjective(model_cfg, loss_chunk=loss_chunk)
  tx, schedule = make_optimizer(train_cfg(), 100)
  setup = state_lib.setup(objective, tx, objective.batch_spec(SEQ), BATCH, mesh, rules)
  state = setup.create(seed=0)
  compiled = setup.compile(
      functools.partial(train_step, objective=objective, tx=tx, schedule=schedule, seed=0, grad_accum_steps=accum))
  losses = []
  for b in batches():
    state, m = compiled(state, sharding.global_batch(b, mesh, rules, BATCH))
    losses.append(float(m["loss"]))
  return losses, state, compiled


@pytest.fixture(scope="module")
def reference():
  return run((1, 1, 1), jax.devices()[:1])


@pytest.mark.parametrize("sizes", [(8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2)], ids=["dp8", "fsdp8", "tp8", "2x2x2"])
def test_parallelism_matches_one_device(reference, sizes):
  ref_losses, ref_state, _ = reference
  losses, state, _ = run(sizes, jax.devices())
  np.testing.assert_allclose(losses, ref_losses, rtol=0, atol=1e-5)
  # Parameters after 5 updates agree too (f32; reductions reorder across devices).
  for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(ref_state["params"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_chunked_lm_loss_trains_exactly_like_the_full_one(reference):
  """`train.lm_loss_chunk`: the output layer 4 positions at a time, rematerialised, on a
  2x2x2 mesh (vocabulary split over `tensor`): the same 5 steps as the whole-sequence loss."""
  ref_losses, ref_state, _ = reference
  losses, state, _ = run((2, 2, 2), jax.devices(), loss_chunk=4)
  np.testing.assert_allclose(losses, ref_losses, rtol=0, atol=1e-5)
  for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(ref_state["params"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_parameter_shardings_follow_the_rules():
  _, state, _ = run((1, 4, 2), jax.devices())
  p = state["params"]["transformer"]
  P = jax.sharding.PartitionSpec
  assert p["embed"]["tokens"].sharding.spec == P("tensor", "fsdp")
  assert p["embed"]["positions"].sharding.spec == P(None, "fsdp")
  attn = p["decoder"]["h_0"]["attn"]
  assert attn["qkv_kernel"].sharding.spec == P("fsdp", None, "tensor", None)
  assert attn["out_kernel"].sharding.spec == P("tensor", None, "fsdp")
  mlp = p["decoder"]["h_0"]["mlp"]
  assert mlp["fc_kernel"].sharding.spec == P("fsdp", "tensor")
  assert mlp["proj_kernel"].sharding.spec == P("tensor", "fsdp")
  assert p["decoder"]["h_0"]["ln_1"]["scale"].sharding.spec == P("fsdp")
  # ZeRO-3: Adam's moments are sharded exactly like the parameters.
  mu = state["opt_state"][1][0].mu["transformer"]["decoder"]["h_0"]["mlp"]["fc_kernel"]
  assert mu.sharding.spec == P("fsdp", "tensor")
  # No device holds a whole matrix.
  shard = mlp["fc_kernel"].addressable_shards[0].data
  assert shard.shape == (CFG.n_embd // 4, 4 * CFG.n_embd // 2)


def test_activation_constraints_are_active():
  """Inside `sharding.activate` the model's logical constraints reach the lowered program;
  with the rules alone (no mesh set) Linen would drop them silently."""
  import flax.linen as nn
  from gpt1_jax.model import GPT1LM
  mesh = sharding.make_mesh(mesh_cfg(2, 2, 2), jax.devices())
  model = GPT1LM(CFG)
  ids = jnp.zeros((BATCH, SEQ), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), ids)["params"])
  f = jax.jit(lambda p, x: model.apply({"params": p}, x))

  def count(text):
    return text.count("sharding_constraint") + text.count("@Sharding")

  with sharding.activate(mesh, sharding.DEFAULT_RULES):
    active = count(f.lower(params, ids).as_text())
  with nn.logical_axis_rules(sharding.DEFAULT_RULES):
    inert = count(jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, ids).as_text())
  # embeddings, q/k/v, attention output, MLP hidden, block outputs: several per layer
  assert active >= 4 * CFG.n_layer, active
  assert inert == 0


def test_grad_accumulation_equals_large_batch(reference):
  ref_losses, ref_state, _ = reference
  cfg = CFG.replace(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
  full, s1, _ = run((1, 1, 1), jax.devices()[:1], cfg, accum=1)
  acc, s2, _ = run((1, 1, 1), jax.devices()[:1], cfg, accum=4)
  np.testing.assert_allclose(acc, full, atol=1e-5)


def test_mesh_errors_are_clear():
  with pytest.raises(ValueError, match="uses 6 devices but 8 are available"):
    sharding.make_mesh(mesh_cfg(3, 2, 1), jax.devices())
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    sharding.make_mesh(mesh_cfg(-1, -1, 1), jax.devices())
  with pytest.raises(ValueError, match="not divisible by 3"):
    sharding.make_mesh(mesh_cfg(-1, 3, 1), jax.devices())
  bad = CFG.replace(n_head=4, n_embd=36)  # 4 heads over tensor=8 cannot split
  with pytest.raises(ValueError, match="do not divide over the mesh"):
    run((1, 1, 8), jax.devices(), bad)
