"""The serving artifact: exported once, it runs in a process that cannot import gpt1_jax (nor Flax) and
gives the logits GPT1ForTask gives, at any batch size and length."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_module
from gpt1_jax import export as gexport
from gpt1_jax.checkpoint import save_params
from gpt1_jax.model import GPT1ForTask, GPT1LM, ModelConfig, init_params

CFG = ModelConfig(vocab_size=90, n_ctx=24, n_embd=32, n_head=4, n_layer=2)

# Run with `python -I` (no PYTHONPATH, no user site, no cwd on sys.path) from /tmp; the editable
# install would still find gpt1_jax, so a finder refuses it, and Flax, outright.
LOADER = r"""
import importlib.abc, json, sys
class Refuse(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("gpt1_jax", "flax", "orbax", "tensorflow", "torch"):
      raise ImportError(f"{name} is not available to the serving process")
sys.meta_path.insert(0, Refuse())
try:
  import gpt1_jax
  raise SystemExit("gpt1_jax was importable")
except ImportError:
  pass
import numpy as np
from jax import export
inputs = np.load(sys.argv[1])
out = {}
for artifact, names in json.loads(sys.argv[2]).items():
  with open(artifact, "rb") as f:
    serve = export.deserialize(f.read())
  for name in names:
    out[name] = np.asarray(serve.call(inputs[name + "_ids"], inputs[name + "_mask"])).tolist()
json.dump(out, sys.stdout)
"""


def task_params(task_type, num_labels, k, seed=0):
  model = GPT1ForTask(CFG, task_type, num_labels)
  z = jnp.zeros((1, k, 8), jnp.int32)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(seed), z, z + 1, z[..., 0]))["params"]
  # A non-zero head bias, so that the artifact is seen to carry it.
  params["head"]["bias"] = params["head"]["bias"] + jnp.linspace(-0.3, 0.3, params["head"]["bias"].shape[0])
  return jax.tree.map(np.asarray, params)


def batch(rng, b, k, t):
  ids = rng.integers(1, CFG.vocab_size, (b, k, t)).astype(np.int32)
  lengths = rng.integers(2, t + 1, (b, k))
  lengths[0, 0] = t
  mask = (np.arange(t) < lengths[..., None]).astype(np.int32)
  return ids * mask, mask


def ours(task_type, num_labels, params, ids, mask):
  cls_index = mask.sum(-1) - 1
  with jax.default_matmul_precision("float32"):
    logits, _ = jax.jit(GPT1ForTask(CFG, task_type, num_labels).apply)({"params": params}, ids, mask, cls_index)
  return np.array(logits)


def run_loader(tmp_path, inputs, plan):
  """``plan``: artifact path -> the input names to run through it, all in one fresh process."""
  np.savez(tmp_path / "inputs.npz", **inputs)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  out = subprocess.run([sys.executable, "-I", "-c", LOADER,
                        str(tmp_path / "inputs.npz"),
                        json.dumps(plan)], cwd="/tmp", env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return {k: np.asarray(v) for k, v in json.loads(out.stdout).items()}


@pytest.mark.slow
def test_artifact_runs_without_gpt1_jax_and_matches_gpt1_for_task(tmp_path):
  rng = np.random.default_rng(0)
  cases = {"sst2": ("classification", 2, 1), "story_cloze": ("multiple_choice", 1, 2), "stsb": ("regression", 1, 2)}
  inputs, expected = {}, {}
  for name, (task_type, num_labels, k) in cases.items():
    params = task_params(task_type, num_labels, k)
    save_params(str(tmp_path / name), CFG, params, extra_meta={"task": name})
    gexport.main([f"--checkpoint={tmp_path / name}", f"--out={tmp_path / name}.jaxexport", "--platforms=cpu"])
    sig = json.loads((tmp_path / f"{name}.jaxexport.json").read_text())
    assert sig["task"] == name and sig["task_type"] == task_type
    # Two batch sizes and lengths through the one artifact: both dimensions are symbolic.
    for b, t in ((3, 11), (1, CFG.n_ctx)):
      ids, mask = batch(rng, b, k, t)
      inputs[f"{name}{b}x{t}_ids"], inputs[f"{name}{b}x{t}_mask"] = ids, mask
      expected[f"{name}{b}x{t}"] = ours(task_type, num_labels, params, ids, mask)
    # A multiple-choice candidate that is absent (all-zero mask) gets no probability, as in training.
    if task_type == "multiple_choice":
      ids, mask = batch(rng, 2, k, 9)
      mask[1, 1] = 0
      inputs[f"{name}gap_ids"], inputs[f"{name}gap_mask"] = ids * mask, mask
      want = ours(task_type, num_labels, params, ids * mask, mask)
      want[1, 1] = np.finfo(np.float32).min
      expected[f"{name}gap"] = want

  plan = {str(tmp_path / f"{name}.jaxexport"): [k for k in expected if k.startswith(name)] for name in cases}
  got = run_loader(tmp_path, inputs, plan)
  assert set(got) == set(expected)
  for key, want in expected.items():
    np.testing.assert_allclose(got[key], want, atol=1e-5, rtol=0, err_msg=key)


def test_language_model_checkpoint_exports_lm_logits(tmp_path):
  params = jax.tree.map(np.asarray, init_params(CFG, jax.random.key(3)))
  save_params(str(tmp_path / "lm"), CFG, params)
  gexport.main([f"--checkpoint={tmp_path / 'lm'}", f"--out={tmp_path / 'lm.bin'}", "--platforms=cpu"])
  serve = jax.export.deserialize((tmp_path / "lm.bin").read_bytes())
  ids = np.random.default_rng(1).integers(0, CFG.vocab_size, (2, 7)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 4:] = 0
  with jax.default_matmul_precision("float32"):
    want = np.asarray(GPT1LM(CFG).apply({"params": params}, ids, mask))
  got = np.asarray(serve.call(ids, mask))
  assert got.shape == (2, 7, CFG.vocab_size)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  assert json.loads((tmp_path / "lm.bin.json").read_text())["input_shape"] == "[batch, length]"


def test_export_lowers_for_every_serving_platform_by_default():
  exported = gexport.export_model(CFG, task_params("classification", 2, 1), None)
  assert set(exported.platforms) == {"cpu", "cuda", "rocm", "tpu"}


def test_bad_inputs_fail_in_one_line_and_write_nothing(tmp_path, capsys):
  params = task_params("classification", 2, 1)
  save_params(str(tmp_path / "ck"), CFG, params, extra_meta={"task": "sst2"})
  (tmp_path / "taken.bin").write_bytes(b"keep")
  before = sorted(os.listdir(tmp_path))
  for argv, words in [
      ([f"--checkpoint={tmp_path / 'missing'}", f"--out={tmp_path / 'x.bin'}"], ["missing", "no such directory"]),
      ([f"--checkpoint={tmp_path / 'ck'}", f"--out={tmp_path / 'taken.bin'}"], ["taken.bin", "already exists"]),
      ([f"--checkpoint={tmp_path / 'ck'}", f"--out={tmp_path / 'x.bin'}", "--platforms=cpu,gpu"], ["gpu"]),
  ]:
    with pytest.raises(SystemExit) as e:
      gexport.main(argv)
    message = str(e.value.code)
    assert "\n" not in message and all(w in message for w in words), message
  assert sorted(os.listdir(tmp_path)) == before
  assert (tmp_path / "taken.bin").read_bytes() == b"keep"

  save_params(str(tmp_path / "odd"), CFG, params, extra_meta={"task": "no_such_task"})
  with pytest.raises(SystemExit, match="unknown task 'no_such_task'"):
    gexport.main([f"--checkpoint={tmp_path / 'odd'}", f"--out={tmp_path / 'y.bin'}"])
  assert not (tmp_path / "y.bin").exists()


def test_cli_flags_take_both_spellings_and_keep_their_defaults():
  from gpt1_jax import errors
  for argv in (["--checkpoint=ck", "--out=f.bin", "--platforms=cpu,tpu", "--dtype=bfloat16", "--lm"],
               ["--checkpoint", "ck", "--out", "f.bin", "--platforms", "cpu,tpu", "--dtype", "bfloat16", "--lm"]):
    F, rest = errors.parse_own_flags(gexport.define_flags, gexport.PROG, argv)
    assert (F.checkpoint, F.out, F.platforms, F.dtype, F.lm, rest) == \
        ("ck", "f.bin", "cpu,tpu", "bfloat16", True, [gexport.PROG]), argv
  F, _ = errors.parse_own_flags(gexport.define_flags, gexport.PROG, ["--checkpoint=ck", "--out=f"])
  assert (F.platforms, F.dtype, F.lm) == (",".join(gexport.DEFAULT_PLATFORMS), None, False)
  for argv, words in [(["--out=f"], ["--checkpoint"]), (["--checkpoint=ck"], ["--out"]),
                      (["--checkpoint=ck", "--out=f", "--lm=perhaps"], ["--lm=perhaps"]),
                      (["--checkpoint=ck", "--out=f", "extra"], ["unexpected arguments: extra"])]:
    with pytest.raises(SystemExit) as e:
      gexport.main(argv)
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message and all(w in message for w in words), message


@pytest.mark.slow
def test_python_m_export_help_and_one_line_errors(tmp_path):

  def run(*args):
    return run_module("gpt1_jax.export", *args)

  r = run("--help")
  assert r.returncode == 0, r.stderr[-2000:]
  assert all(f in r.stdout for f in ("--checkpoint", "--out", "--platforms", "--dtype", "--[no]lm")), r.stdout
  for args, want in [([f"--out={tmp_path / 'x.bin'}"], "--checkpoint"),
                     (["--checkpoint", str(tmp_path / "missing"), "--out",
                       str(tmp_path / "x.bin")], "no such directory")]:
    r = run(*args)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and want in last, r.stderr[-3000:]
  assert os.listdir(tmp_path) == []
