"""Input pipelines. TensorFlow is used only for tf.data on the host CPU, and only where needed.

``from gpt1_jax.data import tf`` gives a stand-in that imports TensorFlow on first use: the
pretraining path (a prepared token store, ``lm.py``) runs without it, while the fine-tuning
pipelines, TFRecord data directories and ``prepare --tfds`` import it when they first touch it.
"""

import logging
import os
import re
import sys
import tempfile
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_tensorflow = None

# What TensorFlow's C++ writes to stderr at import and tells a user nothing: absl's line before its
# first log record, the oneDNN notice, the CPU-instructions notice (two lines).
_START_UP_NOTICES = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\)|"
                               r"[IW]\d{4} .*\] (oneDNN custom operations are on|This TensorFlow binary is optimized)|"
                               r"To enable the following instructions:")


def _import_quietly():
  """``import tensorflow`` with its C++ start-up notices off the console (logged at DEBUG).

  TensorFlow 2.21 writes them from C++ before any Python logging exists, and they ignore
  ``TF_CPP_MIN_LOG_LEVEL``; absl's C++ log level cannot be set from Python, and
  ``TF_ENABLE_ONEDNN_OPTS=0`` would change kernels rather than words. So stderr's descriptor points
  at a temporary file for the import; any other line written there is passed on unchanged, and
  everything is passed on if the import fails.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    ok = False
    try:
      import tensorflow
      ok = True
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      lines = capture.read().decode("utf-8", "replace").splitlines()
      notices = [line for line in lines if ok and _START_UP_NOTICES.match(line)]
      rest = [line for line in lines if line not in notices]
      if notices:
        logging.getLogger(__name__).debug("TensorFlow at import: %s", " / ".join(notices))
      if rest:
        sys.stderr.write("\n".join(rest) + "\n")
        sys.stderr.flush()
  return tensorflow


def import_tensorflow():
  """TensorFlow, configured to leave the accelerators to JAX; ImportError says what needed it."""
  global _tensorflow
  if _tensorflow is None:
    try:
      tensorflow = _import_quietly()
    except ImportError as e:
      raise ImportError(f"TensorFlow is not importable ({e}); it is needed only for the fine-tuning "
                        f"pipelines, TFRecord data directories (migrate them with `python -m "
                        f"gpt1_jax.data.prepare --migrate=DIR`) and prepare --tfds: "
                        f"pip install -e '.[tasks]'") from None
    # TF only feeds data: the accelerator (and its memory) belongs to JAX.
    tensorflow.config.set_visible_devices([], "GPU")
    if tensorflow.config.list_physical_devices("TPU"):
      tensorflow.config.set_visible_devices([], "TPU")
    _tensorflow = tensorflow
  return _tensorflow


def tensorflow_available() -> bool:
  try:
    import_tensorflow()
  except ImportError:
    return False
  return True


class _LazyTensorFlow(types.ModuleType):

  def __getattr__(self, name):
    return getattr(import_tensorflow(), name)


tf = _LazyTensorFlow("tensorflow (imported on first use)")
