"""Converted weights compute what the source model computes, and convert back bit for bit.

The reference is ``transformers``' OpenAI-GPT (PyTorch). Its ``afn="gelu"`` is
the tanh approximation (``ACT_FNS["gelu"] = gelu_new``; there is no
``"gelu_new"`` key and no exact-erf option), which is GPT-1's activation and
our ``activation="gelu_tanh"``; our ``activation="gelu"`` (erf) has no
counterpart there, so it is not compared.
"""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import OpenAIGPTConfig, OpenAIGPTDoubleHeadsModel, OpenAIGPTLMHeadModel, OpenAIGPTModel  # noqa: E402

from conftest import run_module  # noqa: E402
from gpt1_jax import convert  # noqa: E402
from gpt1_jax.model import GPT1ForTask, GPT1LM, ModelConfig, init_params, stack_layers  # noqa: E402

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
    return np.asarray(
        GPT1LM(config).apply({"params": params}, jnp.asarray(ids), None if mask is None else jnp.asarray(mask)))


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
    ref = model(torch.tensor(ids), attention_mask=torch.tensor(mask.reshape(b * k, t)), mc_token_ids=torch.tensor(cls))
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
  per_layer = [[1, d, 3 * d], [3 * d], [1, d, d], [d], [d], [d], [1, d, 4 * d], [4 * d], [1, 4 * d, d], [d], [d], [d]]
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
    hf_named[f"h.{j // 12}.{convert.LAYER_KEYS[j % 12]}"] = a.reshape(a.shape[1:]) if a.ndim == 3 else a
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
  convert.main(
      ["--from=openai", f"--openai_dir={tmp_path / 'release'}", "--n_head=4", f"--out={tmp_path / 'ckpt_openai'}"])
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


# ----------------------------------------------------------------------------
# Writing Hugging Face directories (--to=hf) and reading them back

TINY = ModelConfig(vocab_size=40481, n_ctx=16, n_embd=32, n_head=4, n_layer=2)  # GPT-1's vocabulary: tokenizer too

# A separate interpreter, as a user's would be: transformers' own loading report and log, and the logits.
HF_LOADER = r"""
import io, json, logging, sys
import numpy as np, torch, transformers
from transformers.utils import logging as hf_logging
log = io.StringIO()
hf_logging.set_verbosity_warning()
handler = logging.StreamHandler(log)
hf_logging.get_logger().addHandler(handler)
out = {}
for name, (cls, directory, inputs) in json.loads(sys.argv[1]).items():
  model, info = getattr(transformers, cls).from_pretrained(directory, output_loading_info=True)
  model.eval()
  kwargs = {k: torch.tensor(np.asarray(v)) for k, v in inputs.items()}
  with torch.no_grad():
    result = model(**kwargs)
  out[name] = {"info": {k: sorted(map(str, v)) for k, v in info.items()},
               "logits": result.logits.numpy().tolist(),
               "mc_logits": result.mc_logits.numpy().tolist() if hasattr(result, "mc_logits") else None,
               "class": type(model).__name__}
tok = transformers.OpenAIGPTTokenizer.from_pretrained(json.loads(sys.argv[2]))
out["tokenizer"] = {"specials": tok.convert_tokens_to_ids(["_start_", "_delimiter_", "_classify_"]),
                    "ids": tok("_start_ it 's a charming film _classify_")["input_ids"], "len": len(tok)}
out["log"] = log.getvalue()
json.dump(out, sys.stdout)
"""


def _perturbed(params, seed):
  """Trained-looking weights: LayerNorm biases and head bias away from their zero init."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.standard_normal(np.shape(x)).astype(np.float32), params)


def tiny_task_checkpoint(directory, task_type, num_labels, k, task, seed=0, config=TINY):
  model = GPT1ForTask(config, task_type, num_labels)
  z = jnp.zeros((1, k, 8), jnp.int32)
  params = _perturbed(nn.meta.unbox(jax.jit(model.init)(jax.random.key(seed), z, z + 1, z[..., 0]))["params"], seed)
  from gpt1_jax.checkpoint import save_params
  save_params(str(directory), config, params, extra_meta={"task": task})
  return params


def right_padded(rng, b, k, t, config=TINY):
  """Transformed-looking inputs: real tokens, _classify_ last, id 0 padding after it."""
  lengths = rng.integers(3, t + 1, (b, k))
  lengths.flat[0] = t
  ids = rng.integers(1, convert.RELEASE_VOCAB_SIZE, (b, k, t))
  np.put_along_axis(ids, (lengths - 1)[..., None], config.vocab_size - 1, axis=-1)
  mask = (np.arange(t) < lengths[..., None]).astype(np.int64)
  return ids * mask, mask, lengths - 1


@pytest.mark.slow
def test_hf_directories_load_in_a_fresh_transformers_process_with_our_logits(tmp_path):
  from gpt1_jax import checkpoint
  rng = np.random.default_rng(0)
  lm_params = _perturbed(jax.tree.map(np.asarray, init_params(TINY, jax.random.key(0))), 1)
  checkpoint.save_params(str(tmp_path / "lm"), TINY, lm_params)
  mc = tiny_task_checkpoint(tmp_path / "mc", "multiple_choice", 1, 2, "story_cloze", seed=2)
  clf = tiny_task_checkpoint(tmp_path / "clf", "entailment", 3, 1, "mnli", seed=3)
  for name in ("lm", "mc", "clf"):
    convert.main(["--to=hf", f"--checkpoint={tmp_path / name}", f"--out={tmp_path / (name + '_hf')}"])

  ids, mask, _ = right_padded(rng, 3, 1, 12)
  lm_ids, lm_mask = ids[:, 0], mask[:, 0]
  mc_ids, mc_mask, mc_cls = right_padded(rng, 2, 2, 10)
  clf_ids, clf_mask, clf_cls = right_padded(rng, 4, 1, 12)
  plan = {
      "lm": ("OpenAIGPTLMHeadModel", str(tmp_path / "lm_hf"), {
          "input_ids": lm_ids,
          "attention_mask": lm_mask
      }),
      # transformers flattens the candidates of input_ids but not of the mask.
      "mc": ("OpenAIGPTDoubleHeadsModel", str(tmp_path / "mc_hf"), {
          "input_ids": mc_ids,
          "attention_mask": mc_mask.reshape(4, 10),
          "mc_token_ids": mc_cls
      }),
      "clf": ("OpenAIGPTForSequenceClassification", str(tmp_path / "clf_hf"), {
          "input_ids": clf_ids[:, 0],
          "attention_mask": clf_mask[:, 0]
      }),
  }
  plan = {k: (c, d, {n: np.asarray(v).tolist() for n, v in x.items()}) for k, (c, d, x) in plan.items()}
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, "-c", HF_LOADER,
                         json.dumps(plan),
                         json.dumps(str(tmp_path / "clf_hf"))], capture_output=True, text=True, timeout=300, env=env,
                        cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  hf = json.loads(proc.stdout)

  for name in ("lm", "mc", "clf"):
    assert hf[name]["info"] == {
        "missing_keys": [],
        "unexpected_keys": [],
        "mismatched_keys": [],
        "error_msgs": []
    }, (name, hf[name]["info"])
  for words in ("newly initialized", "not used", "missing", "unexpected"):
    assert words not in (hf["log"] + proc.stderr).lower(), (words, hf["log"], proc.stderr[-2000:])

  with jax.default_matmul_precision("float32"):
    lm_ours = np.asarray(jax.jit(GPT1LM(TINY).apply)({"params": lm_params}, lm_ids, lm_mask))
    mc_model = GPT1ForTask(TINY, "multiple_choice", 1)
    mc_ours, mc_hidden = jax.jit(mc_model.apply)({"params": mc}, mc_ids, mc_mask, mc_cls)
    clf_ours, _ = jax.jit(GPT1ForTask(TINY, "entailment", 3).apply)({"params": clf}, clf_ids, clf_mask, clf_cls)
  real = lm_mask.astype(bool)
  assert np.abs(np.asarray(hf["lm"]["logits"])[real] - lm_ours[real]).max() < 1e-4
  np.testing.assert_allclose(np.asarray(hf["mc"]["mc_logits"]), np.asarray(mc_ours), atol=1e-4, rtol=0)
  # The head's bias, folded into the bias-free score layer, and pooling at the last non-pad token.
  assert np.abs(np.asarray(clf["head"]["bias"])).min() > 0
  np.testing.assert_allclose(np.asarray(hf["clf"]["logits"]), np.asarray(clf_ours), atol=1e-4, rtol=0)

  assert hf["tokenizer"]["specials"] == [40478, 40479, 40480] and hf["tokenizer"]["len"] == 40481
  from gpt1_jax.tokenizer import GPT1Tokenizer
  tok = GPT1Tokenizer()
  ours_ids = [tok.start_id] + tok.encode("it 's a charming film") + [tok.classify_id]
  # Same special ids and BPE table, other pre-tokenisation: GPT-1 keeps "'s" whole, BERT's splitter does not.
  assert hf["tokenizer"]["ids"][0] == ours_ids[0] and hf["tokenizer"]["ids"][-1] == ours_ids[-1]
  assert hf["tokenizer"]["ids"] != ours_ids and tok.token_to_id("'s</w>") in ours_ids


def test_hf_export_round_trips_bit_for_bit(tmp_path):
  from gpt1_jax import checkpoint
  # Scanned layers and a classification head with a bias: the layout and the head come back as they were.
  scanned = TINY.replace(scan_layers=True, dtype="bfloat16")
  params = tiny_task_checkpoint(tmp_path / "clf", "classification", 2, 1, "sst2", seed=4)
  params["transformer"] = jax.tree.map(np.asarray, stack_layers(params["transformer"], TINY.n_layer))
  checkpoint.save_params(str(tmp_path / "clf_scanned"), scanned, params, extra_meta={"task": "sst2"})
  mc = tiny_task_checkpoint(tmp_path / "mc", "multiple_choice", 1, 4, "race", seed=5)
  for name, want_config, want in (("clf_scanned", scanned, params), ("mc", TINY, mc)):
    convert.main(["--to=hf", f"--checkpoint={tmp_path / name}", f"--out={tmp_path / 'hf' / name}"])
    convert.main(["--from=hf", f"--hf_path={tmp_path / 'hf' / name}", f"--out={tmp_path / 'back' / name}"])
    config, got, meta = checkpoint.load_params(str(tmp_path / "back" / name), with_meta=True)
    assert config == want_config
    assert meta["task"] == {"clf_scanned": "sst2", "mc": "race"}[name]
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(np.testing.assert_array_equal, got, want)

  # A score changed after export (fine-tuned further in transformers) wins over the stale side file.
  from safetensors.numpy import load_file, save_file
  path = tmp_path / "hf" / "clf_scanned" / "model.safetensors"
  tensors = load_file(str(path))
  tensors["score.weight"] = tensors["score.weight"] + 1
  save_file(tensors, str(path), metadata={"format": "pt"})
  _, changed = convert.from_hf_pretrained(str(tmp_path / "hf" / "clf_scanned"), task=None)
  np.testing.assert_array_equal(changed["head"]["kernel"], tensors["score.weight"].T)
  np.testing.assert_array_equal(changed["head"]["bias"], np.zeros(2, np.float32))


def test_hf_export_shards_above_max_shard_size_with_the_standard_index(tmp_path):
  from gpt1_jax import checkpoint
  config = ModelConfig(vocab_size=97, n_ctx=16, n_embd=32, n_head=4, n_layer=3)
  params = _perturbed(jax.tree.map(np.asarray, init_params(config, jax.random.key(0))), 6)
  checkpoint.save_params(str(tmp_path / "lm"), config, params)
  convert.main(["--to=hf", f"--checkpoint={tmp_path / 'lm'}", f"--out={tmp_path / 'hf'}", "--max_shard_size=30KB"])
  files = sorted(os.listdir(tmp_path / "hf"))
  shards = [f for f in files if f.startswith("model-")]
  assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
  assert "model.safetensors" not in files and "vocab.json" not in files  # not GPT-1's vocabulary: no tokenizer
  index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
  assert set(index["weight_map"].values()) == set(shards)
  sizes = [os.path.getsize(tmp_path / "hf" / s) for s in shards]
  assert max(sizes) < 30_000 + 4096  # the limit plus each file's small JSON header
  assert index["metadata"]["total_size"] == 4 * sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))

  model, info = OpenAIGPTLMHeadModel.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  ids = np.random.default_rng(0).integers(0, 97, (2, 8))
  np.testing.assert_allclose(hf_logits(model.eval(), ids), our_logits(config, params, ids), atol=1e-4, rtol=0)
  _, back = convert.from_hf_pretrained(str(tmp_path / "hf"))
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_classification_bias_fold_is_exact_and_refused_when_it_cannot_be():
  model = GPT1ForTask(TINY.replace(vocab_size=50), "classification", 3)
  z = jnp.zeros((1, 1, 4), jnp.int32)
  params = _perturbed(nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), z, z + 1, z[..., 0]))["params"], 7)
  score = convert.fold_bias_into_score(TINY, params)
  # On any LayerNorm output of the last block the folded, bias-free score equals kernel + bias.
  ln = params["transformer"]["decoder"]["h_1"]["ln_2"]
  y = np.random.default_rng(1).standard_normal((64, 32))
  y = (y - y.mean(1, keepdims=True)) / y.std(1, keepdims=True)
  h = (y * ln["scale"] + ln["bias"]).astype(np.float32)
  np.testing.assert_allclose(h @ score.T, h @ params["head"]["kernel"] + params["head"]["bias"], atol=1e-5, rtol=0)

  # A zero bias needs no fold; an untrained LayerNorm (c = 0) carries no constant to fold it into.
  zero_bias = dict(params, head={**params["head"], "bias": np.zeros(3, np.float32)})
  np.testing.assert_array_equal(convert.fold_bias_into_score(TINY, zero_bias), params["head"]["kernel"].T)
  untrained = jax.tree.map(np.copy, params)
  untrained["transformer"]["decoder"]["h_1"]["ln_2"]["bias"][:] = 0
  with pytest.raises(convert.ConversionError, match="has none.*--drop_head"):
    convert.fold_bias_into_score(TINY, untrained)


def test_to_hf_bad_inputs_fail_in_one_line_and_touch_nothing(tmp_path):
  tiny = TINY.replace(vocab_size=50)
  tiny_task_checkpoint(tmp_path / "sim", "similarity", 2, 2, "mrpc", config=tiny)
  tiny_task_checkpoint(tmp_path / "odd", "classification", 2, 1, "no_such_task", config=tiny)
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "keep.txt").write_text("mine")
  before = sorted(str(p) for p in tmp_path.rglob("*"))
  cases = [
      (["--to=hf", f"--checkpoint={tmp_path / 'nowhere'}", f"--out={tmp_path / 'o1'}"], ["nowhere", "no such"]),
      (["--to=hf", f"--checkpoint={tmp_path / 'sim'}", f"--out={tmp_path / 'full'}"], ["full", "non-empty"]),
      (["--to=hf", f"--checkpoint={tmp_path / 'sim'}",
        f"--out={tmp_path / 'o2'}"], ["mrpc", "both sentence orderings", "--drop_head"]),
      (["--to=hf", f"--checkpoint={tmp_path / 'odd'}", f"--out={tmp_path / 'o3'}"], ["unknown task 'no_such_task'"]),
      (["--from=hf", f"--hf_path={tmp_path / 'nowhere'}", f"--out={tmp_path / 'o4'}"], ["nowhere", "no such"]),
  ]
  for argv, words in cases:
    with pytest.raises(SystemExit) as e:
      convert.main(argv)
    message = str(e.value.code)
    assert "\n" not in message and all(w in message for w in words), message
  assert sorted(str(p) for p in tmp_path.rglob("*")) == before
  assert (tmp_path / "full" / "keep.txt").read_text() == "mine"

  # --drop_head: the fine-tuned body of an unmappable head, as the language model.
  convert.main(["--to=hf", f"--checkpoint={tmp_path / 'sim'}", f"--out={tmp_path / 'body'}", "--drop_head"])
  assert json.loads((tmp_path / "body" / "config.json").read_text())["architectures"] == ["OpenAIGPTLMHeadModel"]


# ----------------------------------------------------------------------------
# The command line's flags (absl, as every other command)


def _flags(argv):
  from gpt1_jax import errors
  return errors.parse_own_flags(convert.cli.define_flags, convert.PROG, argv)


def test_cli_flags_take_both_spellings_defaults_and_sizes():
  for argv in (["--to=hf", "--checkpoint=ck", "--out=o", "--max_shard_size=500MB", "--drop_head"],
               ["--to", "hf", "--checkpoint", "ck", "--out", "o", "--max_shard_size", "500MB", "--drop_head"]):
    F, rest = _flags(argv)
    assert (F.to, F["from"].value, F.checkpoint, F.out, F.max_shard_size, F.drop_head) == \
        ("hf", None, "ck", "o", 500 * 10**6, True), argv
    assert rest == [convert.PROG]
  F, _ = _flags(["--from", "openai", "--openai_dir", "rel", "--out=o", "--n_head", "4", "--seed=3"])
  assert (F["from"].value, F.openai_dir, F.n_head, F.seed) == ("openai", "rel", 4, 3)
  F, _ = _flags(["--from=hf", "--hf_path=p", "--out=o"])
  assert (F.n_head, F.seed, F.drop_head, F.max_shard_size) == (None, 0, False, convert.DEFAULT_MAX_SHARD_BYTES)
  for text, size in [("30KB", 30_000), ("2GB", 2 * 10**9), ("1000000", 10**6), ("1.5g", 15 * 10**8), ("7B", 7),
                     (" 5 MB ", 5 * 10**6)]:
    assert _flags(["--to=hf", "--out=o", f"--max_shard_size={text}"])[0].max_shard_size == size, text


def test_cli_mistakes_are_one_line_errors_before_any_work(tmp_path):
  out = f"--out={tmp_path / 'o'}"
  ck = f"--checkpoint={tmp_path}"
  cases = [
      (["--to=hf", ck, out, "--max_shard_size=5XB"], ["--max_shard_size=5XB", "expected a size such as 500MB"]),
      (["--to=hf", ck, out, "--max_shard_size", "lots"], ["--max_shard_size=lots", "expected a size"]),
      (["--from=hf", "--to=hf", out], ["--from and --to exclude each other"]),
      ([out], ["give one of --from", "--to"]),
      (["--to=hf", ck], ["--out"]),
      (["--to=hf", out], ["--to=hf needs --checkpoint"]),
      (["--from=hf", out], ["--from=hf needs --hf_path"]),
      (["--from=openai", out], ["--from=openai needs --openai_dir"]),
      (["--from=onnx", out], ["--from=onnx", "hf|openai"]),
      (["--to=openai", ck, out], ["--to=openai", "<hf>"]),
      (["--to=hf", ck, out, "--seed=x"], ["--seed=x"]),
      (["--to=hf", ck, out, "--nosuchflag"], ["nosuchflag"]),
      (["--to=hf", ck, out, "stray"], ["unexpected arguments: stray"]),
  ]
  for argv, words in cases:
    with pytest.raises(SystemExit) as e:
      convert.main(argv)
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message and all(w in message for w in words), (argv, message)
  assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_python_m_convert_help_and_one_line_errors(tmp_path):

  def run(*args):
    return run_module("gpt1_jax.convert", *args)

  for flag in ("--help", "-h"):
    r = run(flag)
    assert r.returncode == 0, r.stderr[-2000:]
    assert all(f in r.stdout for f in ("--from:", "--to:", "--hf_path", "--openai_dir", "--checkpoint", "--out",
                                       "--n_head", "--seed", "--[no]drop_head", "--max_shard_size")), r.stdout
    assert "(default: '5GB')" in r.stdout
  for args, want in [(["--to", "hf", "--out", str(tmp_path / "o"), "--max_shard_size",
                       "5XB"], "error: flag --max_shard_size=5XB: expected a size such as 500MB, 2GB or 1000000"),
                     (["--from=hf", "--to=hf", f"--out={tmp_path / 'o'}"], "error: --from and --to exclude each other"),
                     (["--from=openai", f"--openai_dir={tmp_path / 'nowhere'}",
                       f"--out={tmp_path / 'o'}"], "params_shapes.json")]:
    r = run(*args)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and want in last, r.stderr[-3000:]
  assert os.listdir(tmp_path) == []
