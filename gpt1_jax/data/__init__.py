"""Input pipelines. TensorFlow is used only for tf.data on the host CPU."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

# TF only feeds data: the accelerator (and its memory) belongs to JAX.
tf.config.set_visible_devices([], "GPU")
tf.config.set_visible_devices([], "TPU") if tf.config.list_physical_devices("TPU") else None
