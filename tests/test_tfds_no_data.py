"""A task read from tensorflow-datasets with no data to be had is one ``error:`` line, fast (issue 32).

No network is used: the HTTP(S) proxy is set to a closed port on the loopback address, so tfds's
download fails at once, as it does on a machine without network.
"""

import os
import pathlib
import subprocess
import sys
import time

import pytest

from gpt1_jax.data import tasks as T

pytest.importorskip("tensorflow_datasets")
REPO = pathlib.Path(__file__).resolve().parents[1]
_NO_NETWORK = {k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}


@pytest.fixture
def offline(monkeypatch):
  for key, value in _NO_NETWORK.items():
    monkeypatch.setenv(key, value)
  monkeypatch.delenv("NO_PROXY", raising=False)
  monkeypatch.delenv("no_proxy", raising=False)


def _one_line(message: str):
  assert "\n" not in message, message


def test_race_with_nothing_prepared_and_no_network_names_task_place_and_local_source(offline, tmp_path):
  started = time.monotonic()
  with pytest.raises(RuntimeError) as e:
    T.load_split("race", "validation", f"tfds:{tmp_path}")
  assert time.monotonic() - started < 60
  message = str(e.value)
  _one_line(message)
  assert message.startswith(f"race: tfds race/middle is not prepared in {tmp_path}/race/middle/")
  assert "preparing it failed (" in message
  assert "--config.task.source=DIR" in message and "--source=race=DIR" in message


def test_download_off_says_so(tmp_path):
  with pytest.raises(
      RuntimeError, match=rf"^mnli: tfds glue/mnli is not prepared in {tmp_path}/glue/mnli/\S+ and "
      r"downloading is off; point task.source at a folder holding train.tsv"):
    T.load_tfds(T.get_task("mnli"), "train", str(tmp_path), download=False)


def test_story_cloze_manual_download_advice_is_one_line(tmp_path):
  with pytest.raises(RuntimeError) as e:
    T.load_split("story_cloze", "validation", f"tfds:{tmp_path}")
  _one_line(str(e.value))
  assert "needs a manual download" in str(e.value) and "--source=story_cloze=DIR" in str(e.value)


@pytest.mark.parametrize("command, task", [
    (["-m", "gpt1_jax.zeroshot", "--task=race", "--checkpoint=/nonexistent/ckpt"], "race"),
    (["-m", "gpt1_jax.main", "--config=configs/finetune.py:mnli_tiny"], "mnli"),
])
def test_the_cli_fails_in_one_error_line_within_a_minute(tmp_path, command, task):
  workdir = tmp_path / "run"
  if "gpt1_jax.main" in command:
    command = [*command, f"--workdir={workdir}"]
  env = {**os.environ, **_NO_NETWORK, "TFDS_DATA_DIR": str(tmp_path / "tfds"), "JAX_PLATFORMS": "cpu"}
  env.pop("NO_PROXY", None)
  env.pop("no_proxy", None)
  started = time.monotonic()
  r = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
  assert time.monotonic() - started < 60
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert r.returncode == 1 and len(errors) == 1, r.stderr[-3000:]
  assert "Traceback" not in r.stderr and "importlib_resources" not in r.stderr
  assert errors[0].startswith(f"error: {task}: tfds ") and str(tmp_path / "tfds") in errors[0]
  assert "task.source" in errors[0]
