"""`prepare` as the advice in its errors promises (issue 32).

Rerunning the command that wrote a store repairs a same-size corruption; ``--verify`` names
every bad shard at once; two runs on one ``--output`` cannot race; a new output refused for
bad input is not left behind; ``--doc_split=paragraph`` is ``blank_line``.
"""

import json
import logging
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from gpt1_jax.data import lm
from gpt1_jax.data import prepare
from gpt1_jax.data import store_writer

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def corpus(tmp_path):
  """400 SST-2 phrases, prepared into 3 train shards with the settings every rerun repeats."""
  with open(REPO / "data" / "sst2" / "unlabelled.txt", encoding="utf-8") as f:
    (tmp_path / "c.txt").write_text("".join(next(f) for _ in range(400)), encoding="utf-8")
  settings = dict(inputs=[str(tmp_path / "c.txt")], doc_split="line", valid_fraction=0.05, num_shards=3, workers=1,
                  progress=False)
  out = tmp_path / "store"
  manifest = prepare.prepare(str(out), **settings)
  return out, manifest, settings


def _flip(path: pathlib.Path, at: int):
  data = bytearray(path.read_bytes())
  data[at] ^= 0x01
  path.write_bytes(bytes(data))


def _prepare_cli(*args):
  return subprocess.run([sys.executable, "-m", "gpt1_jax.data.prepare", *args], capture_output=True, text=True,
                        cwd=REPO, timeout=300)


@pytest.mark.parametrize("which", ["file", "index"])
def test_rerunning_the_same_prepare_repairs_a_same_size_corruption(corpus, which, caplog):
  out, manifest, settings = corpus
  shard = manifest["splits"]["train"]["shards"][1]
  damaged = out / shard[which]
  good = damaged.read_bytes()
  _flip(damaged, 11 if which == "file" else 9)  # same size: only the content check sees it
  assert damaged.stat().st_size == len(good)
  with pytest.raises(ValueError, match=f"{out / shard['file']}: corrupt shard .*; re-run prepare$"):
    lm.verify(str(out))

  with caplog.at_level(logging.INFO):
    rebuilt = prepare.prepare(str(out), **settings)  # exactly the command that wrote it
  assert "matches these inputs but is damaged" in caplog.text
  assert "up to date" not in caplog.text
  assert damaged.read_bytes() == good
  assert lm.verify(str(out)) == {"train": 3, "valid": 1}
  assert {k: v for k, v in rebuilt.items() if k != "created"} == {k: v for k, v in manifest.items() if k != "created"}

  caplog.clear()
  with caplog.at_level(logging.INFO):
    prepare.prepare(str(out), **settings)
  assert "is up to date" in caplog.text  # intact now: nothing to do


def test_verify_reports_every_bad_shard_in_one_pass(corpus):
  out, manifest, _ = corpus
  train = manifest["splits"]["train"]["shards"]
  _flip(out / train[0]["file"], 3)
  _flip(out / train[2]["index"], 9)
  valid = out / manifest["splits"]["valid"]["shards"][0]["file"]
  valid.write_bytes(valid.read_bytes()[:-2])  # truncated
  with pytest.raises(ValueError) as e:
    lm.verify(str(out))
  message = str(e.value)
  for bad in (train[0]["file"], train[2]["file"], valid.name):
    assert str(out / bad) in message, message
  assert str(out / train[1]["file"]) not in message
  assert message.count("re-run prepare") == 1 and message.endswith("; re-run prepare")

  r = _prepare_cli(f"--verify={out}")
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert r.returncode == 1 and len(errors) == 1, r.stderr
  assert all(str(out / bad) in errors[0] for bad in (train[0]["file"], train[2]["file"], valid.name))


def test_a_second_prepare_on_one_output_is_refused_naming_the_first(corpus):
  out, manifest, settings = corpus
  # This process is the first run: it holds the output and has a live temporary directory there.
  with store_writer.locked(str(out)):
    live_tmp = out / f".prepare-tmp-{socket.gethostname()}-{os.getpid()}"
    live_tmp.mkdir()
    (live_tmp / "train-00000.bin").write_bytes(b"partial")
    r = _prepare_cli(f"--input={settings['inputs'][0]}", f"--output={out}", "--doc_split=line", "--force",
                     "--workers=1")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 1, r.stderr
    assert errors == [
        e for e in errors if f"is in use by another run: pid {os.getpid()} on host "
        f"{socket.gethostname()}" in e
    ] and len(errors) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert (live_tmp / "train-00000.bin").read_bytes() == b"partial"  # the first run's work is untouched
    assert json.loads((out / "manifest.json").read_text()) == manifest
    live_tmp.joinpath("train-00000.bin").unlink()
    live_tmp.rmdir()
  # Released: the next run gets it (the kernel drops a dead owner's flock the same way).
  prepare.prepare(str(out), **settings, force=True)
  assert lm.verify(str(out)) == {"train": 3, "valid": 1}


def test_a_new_output_refused_for_bad_input_is_not_left_behind(tmp_path):
  out = tmp_path / "new"
  with pytest.raises(prepare.PrepareError, match="matches no files"):
    prepare.prepare(str(out), inputs=[str(tmp_path / "nothing*.txt")], workers=1, progress=False)
  assert not out.exists()
  (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
  with pytest.raises(prepare.PrepareError, match="not valid UTF-8"):
    prepare.prepare(str(out), inputs=[str(tmp_path / "latin1.txt")], workers=1, progress=False)
  assert not out.exists()

  r = _prepare_cli(f"--input={tmp_path / 'latin1.txt'}", f"--output={out}")
  assert r.returncode == 1 and "not valid UTF-8" in r.stderr
  assert not out.exists()


def test_doc_split_paragraph_is_blank_line(tmp_path, caplog):
  (tmp_path / "p.txt").write_text("One paragraph here.\nStill the first.\n\nThe second one.\n", encoding="utf-8")
  common = dict(inputs=[str(tmp_path / "p.txt")], valid_fraction=0.0, num_shards=1, workers=1, progress=False)
  manifest = prepare.prepare(str(tmp_path / "out"), doc_split="paragraph", **common)
  assert manifest["doc_split"] == "blank_line"
  assert manifest["splits"]["train"]["documents"] == 2
  with caplog.at_level(logging.INFO):
    prepare.prepare(str(tmp_path / "out"), doc_split="blank_line", **common)
  assert "is up to date" in caplog.text
