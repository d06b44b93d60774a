"""The optional parts of the install, and the one error a feature gives when its part is missing.

``pip install -e .`` is the core: the model, weights in and out, sharding, checkpoints,
pretraining on a prepared token store, sampling from ids. Everything else is an extra named for
what it enables (``setup.cfg``); a feature imports its heavy dependency through ``require``, so a
missing one is one ``error:`` line naming the ``pip install`` that adds it.
"""

from __future__ import annotations

import importlib
import importlib.util

# extra -> what it enables (setup.cfg's [options.extras_require] holds the packages).
EXTRAS = {
    "tokenizer": "GPT-1's original tokenisation of text (ftfy, spaCy)",
    "tasks": "fine-tuning data and tf.data pipelines, prepare --tfds (TensorFlow, tensorflow-datasets)",
    "experiments": "the demo's probes and the plots (scikit-learn, matplotlib)",
    "demo": "the default job: tokenizer + tasks + experiments",
    "hf": "Hugging Face comparisons and the GPU check's reference rows (torch, transformers)",
    "aot": "compiling for TPU slices on any machine (libtpu)",
}


def install_hint(extra: str) -> str:
  return f"pip install -e '.[{extra}]' (from a clone; or pip install 'gpt1_jax[{extra}]')"


def require(module: str, extra: str, what: str, name: str = ""):
  """``importlib.import_module(module)``, or an ImportError naming ``what`` needs it (``name``, e.g.
  "spaCy", else the module's) and the extra."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f"{what} needs {name or module.split('.')[0]}, which is not installed ({e}): "
                      f"{install_hint(extra)}") from None


def check(modules: tuple[str, ...], extra: str, what: str):
  """Refuses up front (ImportError, the install named) when any of ``modules`` is missing, without
  importing them: for a command that would otherwise fail minutes in."""
  missing = [m for m in modules if not _importable(m)]
  if missing:
    raise ImportError(f"{what} needs {', '.join(missing)}, not installed: {install_hint(extra)}")


def _importable(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):  # a broken or blocked install counts as missing
    return False
