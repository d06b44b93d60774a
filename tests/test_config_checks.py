"""Every numeric config value is checked for its domain when the config is resolved.

A refused value raises one ``ValueError`` naming ``section.key``, the value and the allowed
range, before any device, data or workdir is touched; the CLI turns it into one ``error:`` line.
"""

import math
import os
import subprocess
import sys

import pytest

from gpt1_jax import config as config_lib
from gpt1_jax.project import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN, INF = math.nan, math.inf

# (section.key, a refused value, the range the error must state)
BAD = [
    ("train.learning_rate", -1.0, "a finite number > 0"),
    ("train.learning_rate", 0.0, "a finite number > 0"),
    ("train.learning_rate", NAN, "a finite number > 0"),
    ("train.learning_rate", INF, "a finite number > 0"),
    ("train.warmup_steps", -1, "an integer >= 0"),
    ("train.warmup_fraction", 1.0, "a number in [0, 1)"),
    ("train.warmup_fraction", NAN, "a number in [0, 1)"),
    ("train.weight_decay", -0.01, "a finite number >= 0"),
    ("train.weight_decay", NAN, "a finite number >= 0"),
    ("train.grad_clip", 0.0, "a finite number > 0"),
    ("train.grad_clip", INF, "a finite number > 0"),
    ("train.b1", 1.0, "a number in [0, 1)"),
    ("train.b1", -0.1, "a number in [0, 1)"),
    ("train.b2", 1.0, "a number in [0, 1)"),
    ("train.b2", NAN, "a number in [0, 1)"),
    ("train.eps", 0.0, "a finite number > 0"),
    ("train.eps", NAN, "a finite number > 0"),
    ("train.batch_size", 0, "an integer >= 1"),
    ("train.grad_accum_steps", 0, "an integer >= 1"),
    ("train.num_steps", -5, "an integer >= 0"),
    ("train.num_epochs", -1.0, "a finite number >= 0"),
    ("train.num_epochs", INF, "a finite number >= 0"),
    ("train.lm_loss_chunk", -1, "an integer >= 0"),
    ("train.softmax_samples", -1, "an integer >= 0"),
    ("data.seq_len", -1, "an integer >= 0"),
    ("task.lm_coef", -0.5, "a finite number >= 0"),
    ("task.lm_coef", NAN, "a finite number >= 0"),
    ("task.clf_pdrop", 1.0, "a number in [0, 1)"),
    ("task.clf_pdrop", NAN, "a number in [0, 1)"),
    ("task.max_len", -1, "an integer >= 0"),
    ("task.max_train_examples", -1, "an integer >= 0"),
    ("checkpoint.every_steps", 0, "an integer >= 1"),
    ("checkpoint.keep", 0, "an integer >= 1"),
    ("checkpoint.keep_period", -1, "an integer >= 0"),
    ("checkpoint.every_minutes", -1.0, "a finite number >= 0"),
    ("checkpoint.every_minutes", NAN, "a finite number >= 0"),
    ("log.every_steps", 0, "an integer >= 1"),
    ("log.peak_flops_per_device", -1.0, "a finite number >= 0"),
    ("eval.every_steps", -1, "an integer >= 0"),
    ("eval.batch_size", -8, "an integer >= 0"),
    ("mesh.data", 0, "-1 (fill the devices) or a size >= 1"),
    ("mesh.fsdp", -2, "-1 (fill the devices) or a size >= 1"),
    ("mesh.dcn_data", 0, "an integer >= 1"),
    ("mesh.num_devices", -1, "an integer >= 0"),
    ("debug.nan_at_step", -2, "an integer >= -1"),
    ("model.embd_pdrop", 1.0, "a probability in [0, 1)"),
    ("model.attn_pdrop", -0.1, "a probability in [0, 1)"),
    ("model.resid_pdrop", NAN, "a probability in [0, 1)"),
    ("model.layer_norm_epsilon", 0.0, "a finite number > 0"),
    ("model.initializer_range", NAN, "a finite number >= 0"),
    ("model.n_layer", 0, "an integer >= 1"),
]

PRETRAIN_VARIANTS = ["gpt1", "tiny"]
FINETUNE_VARIANTS = [
    "sst2", "cola", "mnli", "snli", "qnli", "rte", "scitail", "mrpc", "qqp", "stsb", "race", "story_cloze"
]


def _config(key: str, value):
  config = load_config("finetune", "sst2")  # holds every section, task included
  section, name = key.split(".")
  config[section][name] = value
  return config


@pytest.mark.parametrize("key, value, allowed", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_an_out_of_domain_value_is_refused_naming_key_value_and_range(key, value, allowed):
  with pytest.raises(ValueError) as e:
    config_lib.resolve(_config(key, value))
  message = str(e.value)
  assert message.startswith(f"{key}={value!r}: expected "), message
  assert allowed in message
  assert "\n" not in message


def test_softmax_samples_must_be_fewer_than_the_vocabulary():
  config = _config("train.softmax_samples", 40481)
  with pytest.raises(
      ValueError, match=r"^train\.softmax_samples=40481: expected 0 \(the full softmax\) or fewer "
      r"candidates than model\.vocab_size=40481$"):
    config_lib.resolve(config)
  config.train.softmax_samples = 40480
  assert config_lib.resolve(config).train.softmax_samples == 40480


@pytest.mark.parametrize("name, variant",
                         [("pretrain", v) for v in PRETRAIN_VARIANTS] + [("finetune", v) for v in FINETUNE_VARIANTS] +
                         [("finetune", v + "_tiny") for v in FINETUNE_VARIANTS])
def test_every_shipped_variant_resolves(name, variant):
  run = config_lib.resolve(load_config(name, variant))
  assert run.train.learning_rate > 0


def test_edge_values_inside_the_domain_are_accepted():
  config = load_config("finetune", "sst2")
  config.train.update(weight_decay=0.0, warmup_steps=0, warmup_fraction=0.0, b1=0.0, num_epochs=0.0, num_steps=10)
  config.task.update(lm_coef=0.0, clf_pdrop=0.0)
  config.model.update(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
  config.checkpoint.update(every_minutes=0.0, keep=1)
  config.mesh.update(data=-1, fsdp=1)
  config.debug.update(nan_at_step=-1)
  config_lib.resolve(config)


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_the_cli_refuses_with_one_error_line_and_creates_nothing(tmp_path, value):
  workdir = tmp_path / "run"
  r = subprocess.run([
      sys.executable, "-m", "gpt1_jax.main", "--config=configs/pretrain.py:tiny", f"--workdir={workdir}",
      f"--config.train.learning_rate={value}"
  ], capture_output=True, text=True, cwd=REPO, timeout=120, env={
      **os.environ, "JAX_PLATFORMS": "cpu"
  })
  assert r.returncode != 0
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert errors == [f"error: train.learning_rate={float(value)!r}: expected a finite number > 0"], r.stderr
  assert "Traceback" not in r.stderr
  assert not workdir.exists()
