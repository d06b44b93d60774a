"""The files a gpt1_jax checkout ships beside the package: ``configs/`` and ``data/``.

The library itself (model, steps, checkpoints, pipelines, ``main`` with an explicit
``--config`` path) needs neither. The default job and the experiment tools do: the demo reads
``data/imdb`` and ``data/sst2``, the benchmark and the ablation grid read ``configs/*.py`` by
name, zero-shot evaluation defaults to ``data/<task>``. They find the checkout here, in one
place: ``$GPT1_JAX_HOME`` if set, else the directory above the package (an editable install or
a clone on ``PYTHONPATH``). A wheel installed elsewhere gets a clear error naming what is
missing and how to point at a checkout, never a silent wrong path.
"""

from __future__ import annotations

import importlib.util
import os

_BESIDE_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def root() -> str:
  """The checkout: ``$GPT1_JAX_HOME``, else the directory that holds the ``gpt1_jax`` package."""
  return os.path.abspath(os.environ.get("GPT1_JAX_HOME") or _BESIDE_PACKAGE)


def path(*parts: str, must_exist: bool = True) -> str:
  """``ROOT/parts...``; with ``must_exist``, a FileNotFoundError that says where it looked."""
  p = os.path.join(root(), *parts)
  if must_exist and not os.path.exists(p):
    raise FileNotFoundError(
        f"{p}: not found; {os.path.join(*parts)} ships with the gpt1_jax checkout, not with the package: "
        "run from a clone or set GPT1_JAX_HOME=/path/to/checkout")
  return p


def config_module(name: str):
  """``configs/NAME.py`` as a module, loaded by path as ``--config=configs/NAME.py`` does."""
  spec = importlib.util.spec_from_file_location(f"_gpt1_jax_configs_{name}", path("configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(name: str, arg: str):
  """``configs/NAME.py:ARG``: what ``--config=configs/NAME.py:ARG`` resolves to (a ConfigDict)."""
  return config_module(name).get_config(arg)
