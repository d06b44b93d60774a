"""The config as a record: its defaults come from the dataclasses, and what a run wrote reads back.

``tests/fixtures/config_variants.json`` is every shipped variant's ``config.to_dict()`` as the
config files produced it when each file still spelt out every default (before ``config.defaults``);
building the files from the dataclasses must not move a key, a value or a value's type.
"""

import json
import os

import pytest

from conftest import run_module
from gpt1_jax import config as config_lib
from gpt1_jax import project

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _frozen_variants() -> dict:
  with open(os.path.join(FIXTURES, "config_variants.json")) as f:
    return json.load(f)


def _variants() -> list[str]:
  return [f"pretrain.py:{v}" for v in ("gpt1", "tiny")] + [
      f"finetune.py:{t}{s}" for t in project.config_module("finetune").TASKS for s in ("", "_tiny")]


def test_every_variant_is_frozen():
  assert sorted(_variants()) == sorted(_frozen_variants())


@pytest.mark.parametrize("variant", _variants())
def test_every_variant_keeps_its_keys_values_and_types(variant):
  """Compared as sorted JSON text, so 0 and 0.0 (an int field and a float field) differ."""
  file, arg = variant.split(":")
  got = project.load_config(file[:-3], arg).to_dict()
  want = _frozen_variants()[variant]
  want["init"] = {"weights": want["init"].pop("from")}  # renamed since (issue 30); the old name still reads
  assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


def test_a_saved_config_with_init_from_reads_as_init_weights():
  """Configs written before the rename spell ``init.weights`` as ``init.from``."""
  saved = _frozen_variants()["finetune.py:sst2_tiny"]
  saved["init"] = {"from": "openai:/models/gpt1"}
  assert config_lib.resolve(saved).init.weights == "openai:/models/gpt1"
  with pytest.raises(ValueError, match=r"^config sets both init.from \(the old name\) and init.weights"):
    config_lib.resolve({**saved, "init": {"from": "a", "weights": "b"}})


def test_the_command_line_still_takes_init_from(tmp_path):
  """``--config.init.from=X`` reaches the run as ``init.weights``: the weights it names are read (and refused)."""
  r = run_module("gpt1_jax.main", "--config=configs/finetune.py:sst2_tiny", f"--workdir={tmp_path / 'wd'}",
                 f"--config.init.from={tmp_path / 'no_such_weights'}", "--config.task.source=data/sst2",
                 "--config.task.max_train_examples=16", "--config.mesh.num_devices=1", timeout=300)
  assert r.returncode == 1, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1] == f"error: no checkpoint directory at {tmp_path / 'no_such_weights'}"
