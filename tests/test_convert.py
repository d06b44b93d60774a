"""Converted weights compute what the source model computes, and convert back bit for bit.

The reference is ``transformers``' OpenAI-GPT (PyTorch). Its ``afn="gelu"`` is
the tanh approximation (``ACT_FNS["gelu"] = gelu_new``; there is no
``"gelu_new"`` key and no exact-erf option), which is GPT-1's activation and
our ``activation="gelu_tanh"``; our ``activation="gelu"`` (erf) has no
counterpart there, so it is not compared.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import OpenAIGPTConfig, OpenAIGPTDoubleHeadsModel, OpenAIGPTLMHeadModel, OpenAIGPTModel  # noqa: E402

from gpt1_jax import convert  # noqa: E402
from gpt1_jax.model import GPT1ForTask, GPT1LM, ModelConfig, stack_layers  # noqa: E402

SMALL = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=97, n_positions=24)
REAL_SHAPES = os.environ.get("GPT1_PARAMS_SHAPES", "/work/shared/gpt1_bpe/params_shapes.json")


def hf_model(cls=OpenAIGPTLMHeadModel, seed=0, **kw):
  torch.manual_seed(seed)
  return cls(OpenAIGPTConfig(afn="gelu", **kw)).eval()


def hf_logits(model, ids, mask=None):
  with torch.no_grad():
    out = model(torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask))
  return out.logits.numpy()


def our_logits(config, params, ids, mask=None):
  with jax.default_matmul_precision("float32"):
    return np.asarray(GPT1LM(config).apply({"params": params}, jnp.asarray(ids),
                                           None if mask is None else jnp.asarray(mask)))


def test_hf_activation_is_the_tanh_gelu():
  from transformers.activations import gelu_new
  from transformers.models.openai import modeling_openai
  assert modeling_openai.ACT_FNS["gelu"] is gelu_new


def test_from_hf_matches_hf_logits_with_and_without_right_padding():
  model = hf_model(**SMALL)
  config, params = convert.from_hf(model.state_dict(), n_head=4)
  assert (config.n_layer, config.n_embd, config.n_head, config.n_ctx, config.vocab_size) == (2, 64, 4, 24, 97)
  assert config.activation == "gelu_tanh"
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))

  rng = np.random.default_rng(0)
  ids = rng.integers(0, 97, (3, 24))
  np.testing.assert_allclose(our_logits(config, params, ids), hf_logits(model, ids), atol=1e-4, rtol=0)

  # Right padding: lengths 24, 17, 5; only real positions are compared.
  lengths = np.array([24, 17, 5])
  mask = (np.arange(24)[None] < lengths[:, None]).astype(np.int64)
  ours, ref = our_logits(config, params, ids, mask), hf_logits(model, ids, mask)
  real = mask.astype(bool)
  assert np.abs(ours[real] - ref[real]).max() < 1e-4


def test_from_hf_accepts_every_model_class_and_numpy():
  lm = hf_model(**SMALL)
  _, ref = convert.from_hf(lm.state_dict(), n_head=4)
  base = OpenAIGPTModel(lm.config)
  base.load_state_dict(lm.transformer.state_dict())
  assert not any(k.startswith("transformer.") for k in base.state_dict())
  for sd in (base.state_dict(), {k: v.numpy() for k, v in lm.state_dict().items()}):
    _, got = convert.from_hf(sd, n_head=4)
    jax.tree.map(np.testing.assert_array_equal, got, ref)


def test_to_hf_round_trips_exactly_and_loads_into_transformers():
  model = hf_model(**SMALL)
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  back = convert.to_hf(*convert.from_hf(sd, n_head=4))
  assert set(back) == set(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k], err_msg=k)

  # Scanned params and padded vocabularies convert to the same thing.
  config, params = convert.from_hf(sd, n_head=4, vocab_pad_multiple=8)
  assert params["transformer"]["embed"]["tokens"].shape == (104, 64)
  scanned = {"transformer": stack_layers(params["transformer"], config.n_layer)}
  again = convert.to_hf(config.replace(scan_layers=True), jax.tree.map(np.asarray, scanned))
  for k in sd:
    np.testing.assert_array_equal(again[k], sd[k], err_msg=k)

  fresh = OpenAIGPTLMHeadModel(model.config).eval()
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
  ids = np.random.default_rng(1).integers(0, 97, (2, 9))
  np.testing.assert_array_equal(hf_logits(fresh, ids), hf_logits(model, ids))


def test_double_heads_multiple_choice_matches_gpt1_for_task():
  model = hf_model(OpenAIGPTDoubleHeadsModel, **SMALL)
  config, params = convert.from_hf_double_heads(model.state_dict(), n_head=4)
  assert params["head"]["kernel"].shape == (64, 1)
  rng = np.random.default_rng(2)
  b, k, t = 2, 3, 10
  ids = rng.integers(0, 97, (b, k, t))
  cls = rng.integers(3, t, (b, k))
  mask = (np.arange(t)[None, None] <= cls[..., None]).astype(np.int64)
  with torch.no_grad():
    # transformers flattens the choices of input_ids but not of the mask.
    ref = model(torch.tensor(ids), attention_mask=torch.tensor(mask.reshape(b * k, t)),
                mc_token_ids=torch.tensor(cls))
  with jax.default_matmul_precision("float32"):
    task = GPT1ForTask(config, task_type="multiple_choice")
    mc, hidden = task.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(cls))
    lm = task.apply({"params": params}, hidden, method=GPT1ForTask.lm_logits)
  np.testing.assert_allclose(np.asarray(mc), ref.mc_logits.numpy(), atol=1e-4, rtol=0)
  real = mask.astype(bool)
  assert np.abs(np.asarray(lm)[real] - ref.logits.numpy()[real]).max() < 1e-4

  back = convert.to_hf(config, params, task=True)
  for key, v in model.state_dict().items():
    np.testing.assert_array_equal(back[key], v.numpy(), err_msg=key)


def test_from_hf_errors():
  sd = {k: v.numpy() for k, v in hf_model(**SMALL).state_dict().items()}
  untied = dict(sd, **{"lm_head.weight": sd["lm_head.weight"] + 1})
  with pytest.raises(convert.ConversionError, match="tied"):
    convert.from_hf(untied, n_head=4)
  with pytest.raises(convert.ConversionError, match="not divisible by n_head=5"):
    convert.from_hf(sd, n_head=5)
  with pytest.raises(convert.ConversionError, match=r"missing \['h.1.mlp.c_fc.bias'\]"):
    convert.from_hf({k: v for k, v in sd.items() if k != "transformer.h.1.mlp.c_fc.bias"}, n_head=4)
  with pytest.raises(convert.ConversionError, match="unexpected"):
    convert.from_hf(dict(sd, **{"transformer.h.0.attn.rotary": np.zeros(3)}), n_head=4)
  with pytest.raises(convert.ConversionError, match="tokens_embed"):
    convert.from_hf({k: v for k, v in sd.items() if "tokens_embed" not in k}, n_head=4)
  with pytest.raises(convert.ConversionError, match="DoubleHeads"):
    convert.from_hf(sd, n_head=4, task=True)
  bad = dict(sd, **{"transformer.h.0.mlp.c_fc.bias": np.zeros(7, np.float32)})
  with pytest.raises(convert.ConversionError, match="h.0.mlp.c_fc.bias has shape"):
    convert.from_hf(bad, n_head=4)


@pytest.mark.slow
def test_full_gpt1_config_matches_hf_and_appends_special_rows():
  model = hf_model(seed=1)  # OpenAIGPTConfig() defaults are GPT-1: 12 x 768, 512 positions, 40,478 tokens
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  assert sd["transformer.tokens_embed.weight"].shape == (40478, 768)
  config, params = convert.from_hf(sd)  # n_head=12 by default
  assert config == ModelConfig()  # exactly our GPT-1 defaults, vocab 40,481
  tokens = params["transformer"]["embed"]["tokens"]
  np.testing.assert_array_equal(tokens[:40478], sd["transformer.tokens_embed.weight"])
  special = tokens[40478:]
  assert special.shape == (3, 768) and 0.017 < special.std() < 0.023 and abs(special.mean()) < 0.005
  np.testing.assert_array_equal(special, convert.from_hf(sd, seed=0)[1]["transformer"]["embed"]["tokens"][40478:])
  assert not np.array_equal(special, convert.from_hf(sd, seed=1)[1]["transformer"]["embed"]["tokens"][40478:])

  ids = np.random.default_rng(3).integers(0, 40478, (2, 16))
  mask = np.ones((2, 16), np.int64)
  mask[1, 11:] = 0
  ours, ref = our_logits(config, params, ids, mask), hf_logits(model, ids, mask)
  assert ours.shape == (2, 16, 40481)
  real = mask.astype(bool)
  assert np.abs(ours[..., :40478][real] - ref[real]).max() < 1e-4

  back = convert.to_hf(config, params, vocab_size=convert.RELEASE_VOCAB_SIZE)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


# ----------------------------------------------------------------------------
# OpenAI's release format

def release_shapes(n_ctx, vocab, d, n_layer):
  per_layer = [[1, d, 3 * d], [3 * d], [1, d, d], [d], [d], [d], [1, d, 4 * d], [4 * d], [1, 4 * d, d], [d], [d],
               [d]]
  return [[n_ctx, d], [vocab, d]] + per_layer * n_layer


def write_release(directory, shapes, seed=0):
  """Random arrays in the release's layout: one float32 vector over the shapes, in 10 uneven shards."""
  rng = np.random.default_rng(seed)
  arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
  flat = np.concatenate([a.ravel() for a in arrays])
  cuts = np.sort(rng.choice(np.arange(1, flat.size), 9, replace=False))
  for n, shard in enumerate(np.split(flat, cuts)):
    np.save(os.path.join(directory, f"params_{n}.npy"), shard)
  with open(os.path.join(directory, "params_shapes.json"), "w") as f:
    json.dump(shapes, f)
  return arrays


def test_real_params_shapes_json_is_parsed_as_gpt1():
  if not os.path.isfile(REAL_SHAPES):
    pytest.skip(f"no {REAL_SHAPES}")
  shapes = convert.read_params_shapes(REAL_SHAPES)
  assert [list(s) for s in shapes] == release_shapes(512, 40478, 768, 12)
  # The release holds exactly GPT-1's parameters (before the 3 special rows).
  assert sum(int(np.prod(s)) for s in shapes) == ModelConfig(vocab_size=40478).num_params() == 116_534_784


def test_openai_release_lands_in_the_right_places(tmp_path):
  d, h, n_layer = 64, 4, 2
  dh = d // h
  arrays = write_release(tmp_path, release_shapes(16, 40478, d, n_layer))
  config, params = convert.from_openai_release(str(tmp_path), n_head=h, seed=0)
  assert (config.n_ctx, config.n_embd, config.n_layer, config.vocab_size) == (16, d, n_layer, 40481)

  emb = params["transformer"]["embed"]
  np.testing.assert_array_equal(emb["positions"], arrays[0])  # the first array is the position table
  np.testing.assert_array_equal(emb["tokens"][:40478], arrays[1])
  assert emb["tokens"].shape == (40481, d)

  layer1 = params["transformer"]["decoder"]["h_1"]
  c_attn_w, c_attn_b, c_proj_w = arrays[14], arrays[15], arrays[16]
  qkv = layer1["attn"]["qkv_kernel"]
  for s, head, k in [(0, 0, 0), (1, 2, 5), (2, 3, dh - 1)]:  # (q|k|v, head, feature)
    np.testing.assert_array_equal(qkv[:, s, head, k], c_attn_w[0, :, s * d + head * dh + k])
    assert layer1["attn"]["qkv_bias"][s, head, k] == c_attn_b[s * d + head * dh + k]
  np.testing.assert_array_equal(layer1["attn"]["out_kernel"][2, 3], c_proj_w[0, 2 * dh + 3])
  np.testing.assert_array_equal(layer1["ln_1"]["scale"], arrays[18])
  np.testing.assert_array_equal(layer1["mlp"]["fc_kernel"], arrays[20][0])
  np.testing.assert_array_equal(layer1["mlp"]["proj_kernel"], arrays[22][0])
  np.testing.assert_array_equal(layer1["ln_2"]["bias"], arrays[25])
  np.testing.assert_array_equal(params["transformer"]["decoder"]["h_0"]["mlp"]["proj_bias"], arrays[11])

  # The same arrays under Hugging Face names give the same params (and special rows, for the same seed).
  hf_named = {"tokens_embed.weight": arrays[1], "positions_embed.weight": arrays[0]}
  for j, a in enumerate(arrays[2:]):
    hf_named[f"h.{j // 12}.{convert._LAYER_KEYS[j % 12]}"] = a.reshape(a.shape[1:]) if a.ndim == 3 else a
  jax.tree.map(np.testing.assert_array_equal, params, convert.from_hf(hf_named, n_head=h, seed=0)[1])


def test_openai_release_errors(tmp_path):
  shapes = release_shapes(8, 50, 32, 1)
  write_release(tmp_path, shapes)
  assert convert.from_openai_release(str(tmp_path), n_head=4)[0].vocab_size == 50  # other vocabularies kept

  shard = tmp_path / "params_3.npy"
  x = np.load(shard)
  np.save(shard, x[:-1])
  with pytest.raises(convert.ConversionError, match="params_3.npy=") as e:
    convert.from_openai_release(str(tmp_path), n_head=4)
  assert "truncated" in str(e.value)
  np.save(shard, x.astype(np.int32))
  with pytest.raises(convert.ConversionError, match="params_3.npy: dtype int32"):
    convert.from_openai_release(str(tmp_path), n_head=4)
  os.remove(shard)
  with pytest.raises(FileNotFoundError, match="params_3.npy"):
    convert.from_openai_release(str(tmp_path), n_head=4)

  with open(tmp_path / "params_shapes.json", "w") as f:
    json.dump(shapes[:-1], f)
  with pytest.raises(convert.ConversionError, match="12 per layer"):
    convert.read_params_shapes(str(tmp_path / "params_shapes.json"))
  bad = [list(s) for s in shapes]
  bad[4] = [1, 32, 33]
  with open(tmp_path / "params_shapes.json", "w") as f:
    json.dump(bad, f)
  with pytest.raises(convert.ConversionError, match=r"layer 0 attn.c_proj.weight\) has shape \[1, 32, 33\]"):
    convert.read_params_shapes(str(tmp_path / "params_shapes.json"))
  os.remove(tmp_path / "params_shapes.json")
  with pytest.raises(FileNotFoundError, match="params_shapes.json"):
    convert.from_openai_release(str(tmp_path))


# ----------------------------------------------------------------------------
# The command line

@pytest.mark.slow
def test_cli_writes_checkpoints_that_load_params_reads_back(tmp_path):
  checkpoint = pytest.importorskip("gpt1_jax.checkpoint")

  (tmp_path / "release").mkdir()
  write_release(tmp_path / "release", release_shapes(8, 50, 32, 2))
  convert.main(["--from=openai", f"--openai_dir={tmp_path / 'release'}", "--n_head=4",
                f"--out={tmp_path / 'ckpt_openai'}"])
  config, params = checkpoint.load_params(str(tmp_path / "ckpt_openai"))
  ref_config, ref_params = convert.from_openai_release(str(tmp_path / "release"), n_head=4)
  assert config == ref_config
  jax.tree.map(np.testing.assert_array_equal, params, ref_params)

  model = hf_model(**SMALL)
  model.save_pretrained(tmp_path / "hf")  # model.safetensors + config.json (n_head=4 read from it)
  convert.main(["--from=hf", f"--hf_path={tmp_path / 'hf'}", f"--out={tmp_path / 'ckpt_hf'}"])
  config, params = checkpoint.load_params(str(tmp_path / "ckpt_hf"))
  ref_config, ref_params = convert.from_hf(model.state_dict(), n_head=4)
  assert config == ref_config
  jax.tree.map(np.testing.assert_array_equal, params, ref_params)
