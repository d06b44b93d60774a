"""Issue 18, item 1: what a GPU user needs first runs on a bare accelerator image.

The image has JAX, flax, optax, orbax-checkpoint, chex, numpy, scipy, tensorboard (and PyTorch
with transformers) but no TensorFlow, tensorflow-datasets, ml-collections, spaCy or ftfy; the
small ml-collections and absl-py wheels may be copied alongside. This builds a virtualenv that
holds exactly the CPU builds of those packages and what they depend on (linked from the test
environment, so no network is needed), puts the repository on its path without installing it
(installing would pull every dependency of the package), and runs there: a few pretraining steps
on a prepared token store with evaluation and a checkpoint, sampling from that checkpoint, and
the benchmark's train suite.
"""

import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# What the image has that exists for CPU, plus the two small wheels it may be given.
IMAGE = ("jax", "flax", "optax", "orbax-checkpoint", "chex", "numpy", "scipy", "tensorboard", "tqdm", "ml-collections",
         "absl-py")
ABSENT = ("tensorflow", "tensorflow_datasets", "spacy", "ftfy", "torch", "transformers", "sklearn")


def _closure(names) -> dict:
  """The installed distributions ``names`` need (their requirements without extras), by name."""
  from packaging.requirements import Requirement
  found, todo = {}, list(names)
  while todo:
    name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
    if name in found:
      continue
    try:
      dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = None  # not in the test environment either (chex): the image's copy is not needed
      continue
    found[name] = dist
    for spec in dist.requires or []:
      req = Requirement(spec)
      if req.marker is None or req.marker.evaluate({"extra": ""}):
        todo.append(req.name)
  return {k: v for k, v in found.items() if v is not None}


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
  root = tmp_path_factory.mktemp("bare_image")
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=300)
  site = root / "site"
  site.mkdir()
  for dist in _closure(IMAGE).values():
    tops = {pathlib.PurePath(f).parts[0] for f in dist.files or []}
    for top in sorted(tops):
      if top in ("..", "__pycache__") or top.endswith(".pth"):
        continue
      src = pathlib.Path(dist.locate_file(top))
      if src.exists() and not (site / top).exists():
        (site / top).symlink_to(src)
  python = root / "venv" / "bin" / "python"
  purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=True).stdout.strip()
  (pathlib.Path(purelib) / "bare_image.pth").write_text(f"{site}\n{REPO}\n")
  for name in ABSENT:
    r = subprocess.run([str(python), "-c", f"import {name}"], capture_output=True, text=True)
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, f"{name} is importable in the bare venv"
  r = subprocess.run([
      str(python), "-c", "import jax, flax, optax, orbax.checkpoint, ml_collections, gpt1_jax; "
      "print(gpt1_jax.__file__)"
  ], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.strip().startswith(str(REPO))
  return python


def _run(python, *args, timeout=900):
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  env["JAX_PLATFORMS"] = "cpu"
  r = subprocess.run([str(python), *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
  assert r.returncode == 0, f"{args}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
  return r


@pytest.mark.slow
def test_pretraining_and_sampling_run_on_a_bare_image(bare_python, tmp_path):
  from gpt1_jax.data import prepare
  from gpt1_jax.tokenizer import GPT1Tokenizer
  prepare.synthetic(str(tmp_path / "data"), 200_000, num_shards=2, valid_fraction=0.05,
                    tokenizer_fingerprint=GPT1Tokenizer().fingerprint)
  wd = tmp_path / "run"
  _run(bare_python, "-m", "gpt1_jax.main", "--config=configs/pretrain.py:tiny", f"--workdir={wd}",
       f"--config.data.dir={tmp_path / 'data'}", "--config.train.num_steps=6", "--config.log.every_steps=3",
       "--config.eval.every_steps=6", "--config.checkpoint.every_steps=6")
  metrics = (wd / "metrics.jsonl").read_text()
  assert '"eval/perplexity"' in metrics and '"step": 6' in metrics
  r = _run(bare_python, "-m", "gpt1_jax.generate", f"--checkpoint={wd}", "--prompt_ids=40478,249,1100",
           "--max_new_tokens=5", "--greedy")
  assert " >>> " in r.stdout
  # Text prompts need spaCy: a one-line error says so.
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  r = subprocess.run([str(bare_python), "-m", "gpt1_jax.generate", f"--checkpoint={wd}", "--prompt=hello"],
                     capture_output=True, text=True, cwd=REPO, env={
                         **env, "JAX_PLATFORMS": "cpu"
                     }, timeout=600)
  assert r.returncode != 0 and "encoding text needs spaCy" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_the_train_benchmark_runs_on_a_bare_image(bare_python, tmp_path):
  out = tmp_path / "bench.json"
  _run(bare_python, "-m", "gpt1_jax.bench", "--suite=train", "--shape=tiny", "--steps=2", "--warmup=1", "--hf=False",
       "--breakdown=False", f"--out={out}")
  assert out.exists() and "tokens_per_s" in out.read_text()
