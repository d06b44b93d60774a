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
from gpt1_jax import project, resume

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _frozen_variants() -> dict:
  with open(os.path.join(FIXTURES, "config_variants.json")) as f:
    return json.load(f)


def _variants() -> list[str]:
  return [f"pretrain.py:{v}" for v in ("gpt1", "tiny")
         ] + [f"finetune.py:{t}{s}" for t in project.config_module("finetune").TASKS for s in ("", "_tiny")]


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


def test_the_defaults_are_the_dataclasses_and_unchanged():
  """``config.defaults()`` is ``Run()``; its values are pinned because a config saved without a key
  reads back as that key's default (``config.upgraded``): changing one changes how old runs resume."""
  assert config_lib.resolve(config_lib.defaults()) == config_lib.Run()
  frozen = _frozen_variants()
  want = {
      **frozen["pretrain.py:gpt1"], "model": {
          **frozen["pretrain.py:gpt1"]["model"], "vocab_pad_multiple": 1
      },
      "task": {
          **frozen["finetune.py:sst2"]["task"], "name": "lm",
          "source": ""
      },
      "init": {
          "weights": frozen["pretrain.py:gpt1"]["init"]["from"]
      }
  }
  assert json.dumps(config_lib.defaults().to_dict(), sort_keys=True) == json.dumps(want, sort_keys=True)


def test_gpt1_is_the_defaults_but_for_the_vocabulary_padding():
  defaults = _flat(config_lib.defaults().to_dict())
  gpt1 = _flat(project.load_config("pretrain", "gpt1").to_dict())
  assert {k for k in gpt1 if gpt1[k] != defaults[k]} == {"model.vocab_pad_multiple"}
  assert set(defaults) - set(gpt1) == {k for k in defaults if k.startswith("task.")} - {"task.name"}


@pytest.mark.parametrize("variant", _variants())
def test_a_run_is_its_dict(variant):
  file, arg = variant.split(":")
  run = config_lib.resolve(project.load_config(file[:-3], arg))
  assert config_lib.resolve(json.loads(json.dumps(run.to_dict()))) == run


@pytest.mark.parametrize("variant", _variants())
def test_a_config_saved_in_the_old_format_is_the_same_run(variant):
  """What a run recorded before (config.json, a checkpoint's metadata: the config file's keys as given,
  ``init.from``) against the record now (every key, ``init.weights``): no change for resume to refuse."""
  file, arg = variant.split(":")
  now = config_lib.resolve(project.load_config(file[:-3], arg)).to_dict()
  saved = _frozen_variants()[variant]
  assert resume.config_changes(saved, now) == {}
  if not saved["train"].pop("softmax_samples"):
    # Saved before train.softmax_samples existed: the run used the full softmax, the key's default.
    assert resume.config_changes(saved, now) == {}
    now["train"]["softmax_samples"] = 64
    assert resume.config_changes(saved, now) == {"train.softmax_samples": (0, 64)}


def test_load_reads_a_run_directory_written_in_the_old_format(tmp_path):
  saved = _frozen_variants()["finetune.py:sst2_tiny"]
  saved["init"]["from"] = "openai:/models/gpt1"
  (tmp_path / "config.json").write_text(json.dumps(saved))
  run = config_lib.load(str(tmp_path))
  c = project.load_config("finetune", "sst2_tiny")
  c.init.weights = "openai:/models/gpt1"
  assert run == config_lib.resolve(c)
  assert run.max_seq_len == 64 and run.init.weights == "openai:/models/gpt1"
  with pytest.raises(FileNotFoundError, match=rf"^{tmp_path / 'elsewhere'}: no config.json"):
    config_lib.load(str(tmp_path / "elsewhere"))


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out
