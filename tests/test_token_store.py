"""The token store (issue 17): windows read by offset equal the in-memory stream's, format-1
directories load and migrate without changing a batch, the prefetch thread behaves, host
memory does not grow with the corpus, and pretraining runs with TensorFlow unimportable.

The reference for every batch is ``lm.LMData`` over the whole stream held in memory (whose
batches ``test_lm_data.test_batches_equal_those_of_the_tfrecord_era_pipeline`` pins to the
digests of the tf.data implementation this replaced).
"""

import hashlib
import itertools
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from gpt1_jax.data import lm
from gpt1_jax.data import pipeline
from gpt1_jax.data import prepare
from gpt1_jax.data import store

REPO = pathlib.Path(__file__).resolve().parents[1]
START = 40478


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A small real corpus (2,000 SST-2 phrases) prepared into 5 train shards."""
  root = tmp_path_factory.mktemp("store")
  with open(REPO / "data" / "sst2" / "unlabelled.txt", encoding="utf-8") as f:
    (root / "c.txt").write_text("".join(next(f) for _ in range(2000)), encoding="utf-8")
  out = root / "v2"
  manifest = prepare.prepare(str(out), inputs=[str(root / "c.txt")], doc_split="line", valid_fraction=0.05,
                             num_shards=5, workers=1, progress=False)
  return out, manifest


def _batches(it, n):
  return list(itertools.islice(it, n))


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)
      assert x[k].dtype == y[k].dtype


@pytest.mark.parametrize("n_ctx", [7, 64, 300])
def test_store_windows_equal_the_in_memory_stream_across_shard_boundaries(corpus, n_ctx):
  out, manifest = corpus
  data = lm.LMData.load(str(out), "train", n_ctx)
  assert isinstance(data._tokens, store.TokenStore) and len(data._tokens.paths) == 5
  stream = lm.load_tokens(str(out), "train")
  ref = lm.LMData(stream, n_ctx, fingerprint=data.fingerprint)
  epoch = -(-data.num_windows // 16) + 2  # a whole epoch and into the next
  _assert_same(_batches(data.train_batches(pipeline.Rows(16), seed=5), epoch),
               _batches(ref.train_batches(pipeline.Rows(16), seed=5), epoch))
  _assert_same(list(data.eval_batches(pipeline.Rows(16, 4, 8))), list(ref.eval_batches(pipeline.Rows(16, 4, 8))))
  # Every window that crosses a shard boundary, and the padded last one, read directly.
  bounds = np.cumsum([s["tokens"] + s["documents"] for s in manifest["splits"]["train"]["shards"]])
  crossing = np.unique(np.concatenate([(bounds[:-1] - 1) // n_ctx, bounds[:-1] // n_ctx, [data.num_windows - 1]]))
  crossing = crossing[crossing < data.num_windows]
  _assert_same([data.fetch(crossing)], [ref.fetch(crossing)])


def test_url_paths_read_through_tensorstore_byte_ranges(corpus):
  """``file://`` goes through the same tensorstore key-value path as ``gs://`` (ranged reads)."""
  out, _ = corpus
  url = "file://" + str(out)
  remote = lm.LMData.load(url, "train", 64)
  assert all(isinstance(f, store._RemoteFile) or f is None for f in remote._tokens._files)
  local = lm.LMData.load(str(out), "train", 64)
  assert remote.fingerprint == local.fingerprint
  _assert_same(_batches(remote.train_batches(pipeline.Rows(8), seed=1), 40),
               _batches(local.train_batches(pipeline.Rows(8), seed=1), 40))
  assert isinstance(remote._tokens._files[0], store._RemoteFile)
  np.testing.assert_array_equal(lm.load_tokens(url, "valid"), lm.load_tokens(str(out), "valid"))


def test_a_url_with_a_resized_shard_is_refused(corpus, tmp_path):
  out, manifest = corpus
  copy = tmp_path / "copy"
  shutil.copytree(out, copy)
  shard = copy / manifest["splits"]["train"]["shards"][2]["file"]
  shard.write_bytes(shard.read_bytes() + b"\0\0")
  with pytest.raises(ValueError, match=f"{shard}: a different size, but .* records"):
    lm.load_manifest("file://" + str(copy))
  shard.write_bytes(shard.read_bytes()[:-6])
  with pytest.raises(ValueError, match=f"{shard}: a different size"):
    lm.load_manifest("file://" + str(copy))
  shard.unlink()
  with pytest.raises(FileNotFoundError, match=f"{shard}: shard of split 'train' .* is missing"):
    lm.load_manifest("file://" + str(copy))


# ----------------------------------------------------------------------------- format 1
def to_format1(v2: pathlib.Path, v1: pathlib.Path) -> dict:
  """The same documents as a format-1 directory (one TFRecord per document, no marker), as
  ``prepare`` wrote them before the token store."""
  from gpt1_jax.data import tf
  manifest = json.loads((v2 / "manifest.json").read_text())
  v1.mkdir()
  for split in manifest["splits"].values():
    for shard in split["shards"]:
      tokens = np.frombuffer((v2 / shard["file"]).read_bytes(), "<u2")
      offsets = np.frombuffer((v2 / shard["index"]).read_bytes(), "<i8")
      name = shard["file"].replace(".bin", ".tfrecord")
      with tf.io.TFRecordWriter(str(v1 / name)) as w:
        for a, b in zip(offsets[:-1], offsets[1:]):
          w.write(tokens[a + 1:b].tobytes())
      data = (v1 / name).read_bytes()
      for k in ("index", "index_bytes", "index_sha256"):
        del shard[k]
      shard.update(file=name, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
  manifest.update(format_version=1, record="one TFRecord per document: its token ids as little-endian uint16, "
                  "no _start_")
  (v1 / "manifest.json").write_text(json.dumps(manifest, indent=1))
  return manifest


def test_format1_directories_load_and_migrate_without_changing_a_batch(corpus, tmp_path, caplog):
  out, _ = corpus
  v1 = tmp_path / "v1"
  old = to_format1(out, v1)
  caplog.set_level(logging.WARNING)
  before = lm.LMData.load(str(v1), "train", 64)
  assert "--migrate" in caplog.text and isinstance(before._tokens, store.ArrayTokens)
  batches = _batches(before.train_batches(pipeline.Rows(8), seed=2), 30)
  state = before.data_state(8, 2)

  manifest = prepare.migrate(str(v1))
  assert manifest["format_version"] == 2 and manifest["migrated_from"]["format_version"] == 1
  assert not list(v1.glob("*.tfrecord"))
  after = lm.LMData.load(str(v1), "train", 64)
  assert isinstance(after._tokens, store.TokenStore)
  _assert_same(_batches(after.train_batches(pipeline.Rows(8), seed=2), 30), batches)
  # Same fingerprint: a checkpoint trained on the old directory resumes on the new one.
  pipeline.check_state(state, after.data_state(8, 2), "ckpt")
  assert lm.data_fingerprint(manifest, "valid") == lm.data_fingerprint(old, "valid")
  assert lm.verify(str(v1)) == {"train": 5, "valid": 1}
  # The migrated shards are byte-identical to freshly prepared ones.
  fresh = json.loads((out / "manifest.json").read_text())
  for split in ("train", "valid"):
    assert [s["sha256"] for s in manifest["splits"][split]["shards"]
           ] == [s["sha256"] for s in fresh["splits"][split]["shards"]]
  assert prepare.migrate(str(v1)) == manifest  # already migrated: nothing to do


def test_prepare_over_a_format1_directory_of_the_same_inputs_migrates_it(corpus, tmp_path, caplog):
  out, manifest = corpus
  v1 = tmp_path / "v1"
  to_format1(out, v1)
  caplog.set_level(logging.INFO)
  again = prepare.prepare(str(v1), inputs=manifest["sources"]["input"], doc_split="line", valid_fraction=0.05,
                          num_shards=5, workers=1, progress=False)
  assert "migrating it instead of re-tokenising" in caplog.text
  assert again["format_version"] == 2 and "migrated_from" in again


def test_migrate_and_verify_cli_errors(tmp_path, corpus):
  out, manifest = corpus
  run = lambda *args: subprocess.run(
      [sys.executable, "-m", "gpt1_jax.data.prepare", *args],  # noqa: E731
      capture_output=True,
      text=True,
      cwd=REPO,
      timeout=300)
  r = run(f"--migrate={tmp_path}/nothing")
  assert r.returncode == 1 and f"error: --migrate={tmp_path}/nothing: {tmp_path}/nothing: no such data" in r.stderr
  r = run(f"--migrate={out}", f"--output={tmp_path}/x")
  assert r.returncode == 1 and "give exactly one of" in r.stderr
  copy = tmp_path / "copy"
  shutil.copytree(out, copy)
  shard = copy / manifest["splits"]["train"]["shards"][3]["file"]
  data = bytearray(shard.read_bytes())
  data[10] ^= 1
  shard.write_bytes(bytes(data))
  r = run(f"--verify={copy}")
  assert r.returncode == 1 and f"{shard}: corrupt shard (its bytes differ from the sha256" in r.stderr
  r = run(f"--verify={out}")
  assert r.returncode == 0 and "every shard matches its manifest (train: 5, valid: 1)" in r.stdout


# ----------------------------------------------------------------------------- prefetch
def test_prefetch_raises_the_failing_step_and_stops_its_thread():

  def make(step):
    if step == 3:
      raise RuntimeError("bad step 3")
    return {"step": np.array(step)}

  it = pipeline.Prefetch(make, itertools.count(0), depth=2)
  assert [int(next(it)["step"]) for _ in range(3)] == [0, 1, 2]
  with pytest.raises(RuntimeError, match="bad step 3"):
    next(it)
  with pytest.raises(StopIteration):
    next(it)
  it._thread.join(timeout=60)
  assert not it._thread.is_alive()

  endless = pipeline.Prefetch(lambda s: {"step": np.array(s)}, itertools.count(0), depth=2)
  next(endless)
  thread = endless._thread
  del endless  # dropping the iterator stops the thread (it holds no reference to it)
  thread.join(timeout=60)
  assert not thread.is_alive()
  assert not any(t.name == "gpt1_jax-prefetch" and t.is_alive() for t in threading.enumerate() if t is thread)


def test_synthetic_store_has_the_documented_shape(tmp_path):
  manifest = prepare.synthetic(str(tmp_path / "s"), 300_000, mean_document=500, num_shards=3, valid_fraction=0.01,
                               tokenizer_fingerprint="f" * 64)
  assert manifest["splits"]["train"]["tokens"] + manifest["splits"]["valid"]["tokens"] == 300_000
  assert len(manifest["splits"]["train"]["shards"]) == 3
  assert lm.verify(str(tmp_path / "s")) == {"train": 3, "valid": 1}
  stream = lm.load_tokens(str(tmp_path / "s"), "train")
  docs = manifest["splits"]["train"]["documents"]
  assert (stream == START).sum() == docs and 300 < 297_000 / docs < 800  # ~500 tokens a document
  assert stream[stream != START].max() < START  # ids of the vocabulary, never a special token


# ----------------------------------------------------------------------------- scale
@pytest.mark.slow
def test_host_memory_does_not_grow_with_the_corpus(tmp_path):
  """A 600 MB store is opened and 300 batches of GPT-1's shape (64 x 512) are read while the
  process's peak RSS grows by less than 64 MB (the old loader held the whole stream: 600 MB)."""
  prepare.synthetic(str(tmp_path / "big"), 300_000_000, num_shards=8, tokenizer_fingerprint="f" * 64)
  script = textwrap.dedent(f"""
      import itertools, json, sys, time
      import numpy as np
      from gpt1_jax.data import lm, pipeline
      # Peak resident memory of this process (VmHWM; ru_maxrss would carry over pytest's peak
      # across fork and exec).
      rss = lambda: int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
      base, t0 = rss(), time.perf_counter()
      data = lm.LMData.load({str(tmp_path / "big")!r}, "train", 512)
      opened = time.perf_counter() - t0
      for b in itertools.islice(data.train_batches(pipeline.Rows(64), seed=0), 300):
        assert b["inputs"].shape == (64, 512)
      growth = rss() - base
      whole = lm.load_tokens({str(tmp_path / "big")!r}, "train")  # what the old loader held: the test's yardstick
      print(json.dumps({{"growth": growth, "whole": rss() - base, "opened_s": opened, "windows": data.num_windows,
                         "tf": "tensorflow" in sys.modules}}))
  """)
  r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  print(result)
  assert result["windows"] > 500_000 and not result["tf"]
  assert result["growth"] < 64 << 20, result
  assert result["whole"] > 500 << 20, result  # the measurement sees a stream held in memory


NO_TENSORFLOW = """\
import sys
# As on an accelerator image without them: `import x` fails, importlib's find_spec says
# "not installed".
for name in ("tensorflow", "tensorflow_datasets", "ftfy", "spacy"):
  sys.modules[name] = None
"""


@pytest.mark.slow
def test_pretraining_runs_with_tensorflow_unimportable(tmp_path):
  from gpt1_jax.tokenizer import GPT1Tokenizer
  prepare.synthetic(str(tmp_path / "data"), 200_000, num_shards=2, valid_fraction=0.05,
                    tokenizer_fingerprint=GPT1Tokenizer().fingerprint)
  (tmp_path / "site").mkdir()
  (tmp_path / "site" / "sitecustomize.py").write_text(NO_TENSORFLOW)
  env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  probe = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True)
  assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr
  wd = tmp_path / "run"
  r = subprocess.run([
      sys.executable, "-m", "gpt1_jax.main", "--config=configs/pretrain.py:tiny", f"--workdir={wd}",
      f"--config.data.dir={tmp_path / 'data'}", "--config.train.num_steps=6", "--config.log.every_steps=3",
      "--config.eval.every_steps=6", "--config.checkpoint.every_steps=6"
  ], env=env, capture_output=True, text=True, cwd=REPO, timeout=900)
  assert r.returncode == 0, r.stderr[-4000:]
  rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
  assert [row["step"] for row in rows if "train/loss" in row] == [3, 6]
  assert any("eval/perplexity" in row for row in rows)
  assert list((wd / "tensorboard").iterdir())  # written by the tensorboard package, not tf.summary
  assert (wd / "checkpoints" / "6").is_dir()
