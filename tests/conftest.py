"""Test-wide setup: 8 simulated CPU devices, set before JAX is imported anywhere."""

import contextlib
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import pytest  # noqa: E402

# configs/NAME.py:ARG as `--config=configs/NAME.py:ARG` loads it (tests import it from here).
from gpt1_jax.project import load_config  # noqa: E402,F401


def micro_model(config):
  """Shrinks a tiny config further so an end-to-end run compiles and trains in seconds."""
  config.model.update(n_ctx=32, n_embd=32, n_head=2, n_layer=2, vocab_pad_multiple=8)
  return config


def micro_pretrain_config(data_dir, steps=40, **overrides):
  """The micro pretraining run as a config; ``overrides`` are ``{"section.key": value}``
  (``num_devices`` selects the first N devices)."""
  c = micro_model(load_config("pretrain", "tiny"))
  c.data.dir = data_dir
  c.train.update(num_steps=steps, batch_size=8, learning_rate=3e-3, warmup_steps=5)
  c.checkpoint.update(every_steps=10, keep=10)
  c.log.update(every_steps=5, measure_peak=False, peak_flops_per_device=1e12)
  c.eval.update(every_steps=20, batch_size=8)
  c.mesh.update(num_devices=overrides.pop("num_devices", 1), data=-1)
  for k, v in overrides.items():
    section, key = k.split(".")
    c[section][key] = v
  return c


@pytest.fixture(scope="session")
def lm_data_dir(tmp_path_factory):
  """Real English: the first 3,000 phrases of the shipped corpus, tokenised once per session."""
  from gpt1_jax.data import prepare
  src = tmp_path_factory.mktemp("corpus") / "sst2_head.txt"
  with open(os.path.join(REPO, "data", "sst2", "unlabelled.txt")) as f:
    src.write_text("".join(f.readline() for _ in range(3000)))
  out = tmp_path_factory.mktemp("lm_data")
  prepare.prepare(str(out), inputs=[str(src)], doc_split="line", num_shards=4, valid_fraction=0.05, workers=1,
                  progress=False)
  return str(out)


def micro_cli(workdir, data_dir, steps=40, extra=()):
  """`python -m gpt1_jax.main` for the micro pretraining run used by the process-level tests."""
  return [
      sys.executable, "-m", "gpt1_jax.main", "--config=configs/pretrain.py:tiny", f"--workdir={workdir}",
      f"--config.data.dir={data_dir}", "--config.model.n_ctx=32", "--config.model.n_embd=32", "--config.model.n_head=2",
      "--config.model.n_layer=2", "--config.model.vocab_pad_multiple=8", f"--config.train.num_steps={steps}",
      "--config.train.batch_size=8", "--config.train.learning_rate=3e-3", "--config.train.warmup_steps=5",
      "--config.checkpoint.every_steps=10", "--config.checkpoint.keep=10", "--config.log.every_steps=5",
      "--config.log.measure_peak=False", "--config.log.peak_flops_per_device=1e12", "--config.eval.every_steps=20",
      "--config.eval.batch_size=8", "--config.mesh.num_devices=1", *extra
  ]


@contextlib.contextmanager
def xla_compiles(name):
  """The XLA compilations of the jitted function ``name`` while the block runs, one entry each
  (JAX's backend-compile monitoring event, which names the function)."""
  import jax
  compiles = []

  def listen(event, duration, **labels):
    if event == "/jax/core/compile/backend_compile_duration" and labels.get("fun_name") == f"jit({name})":
      compiles.append(duration)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)


def run_module(module: str, *args, timeout: int = 600):
  """``python -m MODULE ARGS`` from the checkout on CPU, output captured."""
  import subprocess
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO, env={
      **os.environ, "JAX_PLATFORMS": "cpu"
  }, timeout=timeout)
