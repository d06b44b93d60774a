"""gpt1_jax: GPT-1 (Radford et al. 2018) in JAX/Flax."""

import glob
import importlib.util
import os
import pkgutil
import sys

__version__ = "0.1.0"


def _skip_tpu_backend_without_tpu():
  """With libtpu installed (the ``aot`` extra) but no TPU attached, JAX would still start the TPU
  backend at first use: libtpu prints half a dozen lines about TPU_ACCELERATOR_TYPE and
  TPU_WORKER_HOSTNAMES and no device comes of it. Where nothing else could take JAX's default
  (no TPU on the PCI bus, no GPU plugin installed) the platform is pinned to CPU instead. An
  explicit ``JAX_PLATFORMS`` always wins, and ``gpt1_jax.aot`` loads libtpu itself, for
  compiling only, whatever this says.
  """
  if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
    return
  for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor) as f:
        if f.read().strip() == "0x1ae0":  # Google: a TPU chip (or another Google device: leave JAX be)
          return
    except OSError:
      continue
  plugins = importlib.util.find_spec("jax_plugins")
  if plugins is not None and any(True for _ in pkgutil.iter_modules(plugins.submodule_search_locations or [])):
    return  # a GPU (or other) PJRT plugin: JAX's default choice must stay
  if "jax" in sys.modules:  # imported first by the caller: too late for the environment variable
    import jax
    from jax._src import xla_bridge
    if not xla_bridge.backends_are_initialized():
      jax.config.update("jax_platforms", "cpu")
    return
  os.environ["JAX_PLATFORMS"] = "cpu"


_skip_tpu_backend_without_tpu()
