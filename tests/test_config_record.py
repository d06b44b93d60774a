"""The config as a record: its defaults come from the dataclasses, and what a run wrote reads back.

``tests/fixtures/config_variants.json`` is every shipped variant's ``config.to_dict()`` as the
config files produced it when each file still spelt out every default (before ``config.defaults``);
building the files from the dataclasses must not move a key, a value or a value's type.
"""

import json
import os

import pytest

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
  assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
