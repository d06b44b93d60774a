"""Input pipelines. TensorFlow is used only for tf.data on the host CPU, and only where needed.

``from gpt1_jax.data import tf`` gives a stand-in that imports TensorFlow on first use: the
pretraining path (a prepared token store, ``lm.py``) runs without it, while the fine-tuning
pipelines, TFRecord data directories and ``prepare --tfds`` import it when they first touch it.
"""

import os
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_tensorflow = None


def import_tensorflow():
  """TensorFlow, configured to leave the accelerators to JAX; ImportError says what needed it."""
  global _tensorflow
  if _tensorflow is None:
    try:
      import tensorflow
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
