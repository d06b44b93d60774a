"""The pretraining data path: corpus -> prepare (shards + manifest) -> LMData windows.

Counts are checked against an independent re-tokenisation of the same text, the held-out
split against a separate pure-Python splitmix64, and packing against a stream whose every
token names its own position.
"""

import hashlib
import itertools
import json
import logging
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gpt1_jax.data import lm
from gpt1_jax.data import pipeline
from gpt1_jax.data import prepare
from gpt1_jax.data import store_writer
from gpt1_jax.data import tf
from gpt1_jax.tokenizer import GPT1Tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
SST2 = REPO / "data" / "sst2" / "unlabelled.txt"
START = 40478


@pytest.fixture(scope="module")
def tokenizer():
  return GPT1Tokenizer()


@pytest.fixture(scope="module")
def sst2_lines():
  with open(SST2, encoding="utf-8") as f:
    return [next(f) for _ in range(2000)]


@pytest.fixture(scope="module")
def sst2_corpus(tmp_path_factory, sst2_lines):
  path = tmp_path_factory.mktemp("corpus") / "sst2_head.txt"
  path.write_text("".join(sst2_lines), encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def sst2_prepared(tmp_path_factory, sst2_corpus):
  out = tmp_path_factory.mktemp("prepared") / "sst2"
  manifest = prepare.prepare(str(out), inputs=[str(sst2_corpus)], doc_split="line", valid_fraction=0.05, num_shards=4,
                             workers=2, progress=False)
  return out, manifest


def splitmix64_uniform(i: int) -> float:
  """Reference for the held-out rule, written with Python integers."""
  mask = (1 << 64) - 1
  z = (i + 0x9E3779B97F4A7C15) & mask
  z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
  z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
  z ^= z >> 31
  return (z >> 11) / 2.0**53


def marked_stream(docs):
  return np.array([t for d in docs for t in [START, *d]], np.uint16)


# ----------------------------------------------------------------------------- prepare
def test_prepare_counts_and_streams_match_an_independent_retokenisation(sst2_prepared, sst2_lines, tokenizer):
  out, manifest = sst2_prepared
  docs = [line.strip() for line in sst2_lines if line.strip()]
  encoded = [tokenizer.encode(d) for d in docs]
  valid = [splitmix64_uniform(i) < 0.05 for i in range(len(docs))]
  expected = {"train": [e for e, v in zip(encoded, valid) if not v], "valid": [e for e, v in zip(encoded, valid) if v]}
  assert manifest["tokenizer_fingerprint"] == tokenizer.fingerprint
  assert manifest["vocab_size"] == 40481 and manifest["start_id"] == START
  assert 0 < len(expected["valid"]) < 0.1 * len(docs)
  for split, split_docs in expected.items():
    info = manifest["splits"][split]
    assert info["documents"] == len(split_docs)
    assert info["tokens"] == sum(map(len, split_docs))
    assert sum(s["documents"] for s in info["shards"]) == len(split_docs)
    assert sum(s["tokens"] for s in info["shards"]) == info["tokens"]
    # Documents in corpus order, each behind one _start_ marker.
    np.testing.assert_array_equal(lm.load_tokens(str(out), split), marked_stream(split_docs))
  assert [s["file"] for s in manifest["splits"]["train"]["shards"]] == [f"train-{i:05d}-of-00004.bin" for i in range(4)]
  assert [s["file"] for s in manifest["splits"]["valid"]["shards"]] == ["valid-00000-of-00001.bin"]
  assert manifest["format_version"] == 2
  for shard in manifest["splits"]["train"]["shards"] + manifest["splits"]["valid"]["shards"]:
    data = (out / shard["file"]).read_bytes()
    assert len(data) == shard["bytes"] == 2 * (shard["tokens"] + shard["documents"])
    assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    # The index: each document's marker offset, then the shard length.
    offsets = np.frombuffer((out / shard["index"]).read_bytes(), "<i8")
    assert hashlib.sha256(offsets.tobytes()).hexdigest() == shard["index_sha256"]
    tokens = np.frombuffer(data, "<u2")
    assert len(offsets) == shard["documents"] + 1 and offsets[-1] == len(tokens)
    np.testing.assert_array_equal(np.flatnonzero(tokens == START), offsets[:-1])
  # Shards are balanced by tokens.
  tokens = [s["tokens"] for s in manifest["splits"]["train"]["shards"]]
  assert max(tokens) - min(tokens) < 0.05 * sum(tokens)
  assert json.loads((out / "manifest.json").read_text()) == manifest
  assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == sorted(  # .lock: prepare's output lock
      ["manifest.json"] +
      [s[k] for split in ("train", "valid") for s in manifest["splits"][split]["shards"] for k in ("file", "index")])


def _write_books(root: pathlib.Path, lines):
  """Three files of blank-line separated paragraphs of real text, plus an empty file."""
  root.mkdir()
  paragraphs = ["\n".join(l.strip() for l in lines[i:i + 3]) for i in range(0, 90, 3)]
  for k in range(3):
    text = "\n\n".join(paragraphs[k * 10:(k + 1) * 10])
    (root / f"book{k}.txt").write_text(text.replace("\n\n", "\n \n\n", 1) + "\n", encoding="utf-8")
  (root / "empty.txt").write_text("  \n", encoding="utf-8")
  return paragraphs


def test_multi_file_corpus_by_file_and_by_paragraph(tmp_path, sst2_lines, tokenizer):
  paragraphs = _write_books(tmp_path / "books", sst2_lines)
  by_para = prepare.prepare(str(tmp_path / "para"), inputs=[str(tmp_path / "books" / "*.txt")], doc_split="blank_line",
                            valid_fraction=0, num_shards=2, workers=1, progress=False)
  assert by_para["splits"]["train"]["documents"] == 30
  assert by_para["splits"]["valid"] == {"documents": 0, "tokens": 0, "shards": []}
  files = by_para["sources"]["files"]
  assert [pathlib.Path(f["path"]).name for f in files] == ["book0.txt", "book1.txt", "book2.txt", "empty.txt"]
  np.testing.assert_array_equal(lm.load_tokens(str(tmp_path / "para"), "train"),
                                marked_stream(tokenizer.encode(p) for p in paragraphs))

  by_file = prepare.prepare(str(tmp_path / "file"), inputs=[str(tmp_path / "books" / "*.txt")], doc_split="file",
                            valid_fraction=0, num_shards=16, workers=2, progress=False)
  info = by_file["splits"]["train"]
  assert info["documents"] == 3 and by_file["empty_documents_skipped"] == 1
  assert len(info["shards"]) == 3  # never more shards than documents, none empty
  books = [(tmp_path / "books" / f"book{k}.txt").read_text(encoding="utf-8") for k in range(3)]
  np.testing.assert_array_equal(lm.load_tokens(str(tmp_path / "file"), "train"),
                                marked_stream(tokenizer.encode(b) for b in books))


def test_split_documents_and_heldout_rule():
  text = "  one\r\ntwo  \n\n \t\nthree\n\n\n\nfour"
  assert prepare.split_documents(text, "file") == [text]
  assert prepare.split_documents(text, "line") == ["one", "two", "three", "four"]
  assert prepare.split_documents(text, "blank_line") == ["one\r\ntwo", "three", "four"]
  idx = np.arange(20000)
  np.testing.assert_array_equal(prepare.heldout(idx, 0.01), [splitmix64_uniform(i) < 0.01 for i in range(len(idx))])
  assert 150 < prepare.heldout(idx, 0.01).sum() < 250


def test_rerun_is_idempotent_and_input_changes_rebuild(tmp_path, sst2_lines, caplog):
  corpus = tmp_path / "c.txt"
  corpus.write_text("".join(sst2_lines[:300]), encoding="utf-8")
  out = tmp_path / "out"
  kwargs = dict(inputs=[str(corpus)], doc_split="line", num_shards=2, workers=1, progress=False)
  first = prepare.prepare(str(out), **kwargs)
  # The output's lock (.lock) records each run's owner; everything else must stay untouched.
  mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".lock"}
  caplog.set_level(logging.INFO)
  again = prepare.prepare(str(out), **kwargs)
  assert "is up to date" in caplog.text
  assert again == first
  assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".lock"} == mtimes  # nothing rewritten

  # Other settings or changed inputs rebuild; shards of the old manifest are removed.
  fewer = prepare.prepare(str(out), **{**kwargs, "num_shards": 1})
  assert [s["file"] for s in fewer["splits"]["train"]["shards"]] == ["train-00000-of-00001.bin"]
  assert not (out / "train-00000-of-00002.bin").exists() and not (out / "train-00000-of-00002.idx").exists()
  corpus.write_text("".join(sst2_lines[:200]), encoding="utf-8")
  changed = prepare.prepare(str(out), **{**kwargs, "num_shards": 1})
  assert changed["splits"]["train"]["documents"] + changed["splits"]["valid"]["documents"] == 200
  assert not any(p.name.startswith(".prepare-tmp") for p in out.iterdir())


def test_rerun_rebuilds_when_a_shard_is_missing(tmp_path, sst2_lines):
  corpus = tmp_path / "c.txt"
  corpus.write_text("".join(sst2_lines[:100]), encoding="utf-8")
  kwargs = dict(inputs=[str(corpus)], doc_split="line", num_shards=2, workers=1, progress=False)
  first = prepare.prepare(str(tmp_path / "out"), **kwargs)
  (tmp_path / "out" / first["splits"]["train"]["shards"][0]["file"]).unlink()
  prepare.prepare(str(tmp_path / "out"), **kwargs)
  lm.load_manifest(str(tmp_path / "out"))


def test_an_interrupted_run_never_leaves_a_manifest_over_partial_shards(tmp_path, sst2_lines, monkeypatch):
  corpus = tmp_path / "c.txt"
  corpus.write_text("".join(sst2_lines[:200]), encoding="utf-8")
  out = tmp_path / "out"
  kwargs = dict(inputs=[str(corpus)], doc_split="line", num_shards=2, workers=1, progress=False)
  prepare.prepare(str(out), **kwargs)
  before = lm.load_tokens(str(out), "train")
  corpus.write_text("".join(sst2_lines[200:500]), encoding="utf-8")

  def die(*args, **kwargs):
    raise KeyboardInterrupt

  # Killed while writing shards: the previous output is untouched and still consistent.
  monkeypatch.setattr(store_writer, "write_split", die)
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare(str(out), **kwargs)
  np.testing.assert_array_equal(lm.load_tokens(str(out), "train"), before)
  monkeypatch.undo()

  # Killed while swapping shards in: no manifest at all, so nothing reads a mixture.
  renames = []
  real_rename = tf.io.gfile.rename

  def rename_then_die(src, dst, overwrite=False):
    renames.append(dst)
    if len(renames) == 2:
      raise KeyboardInterrupt
    real_rename(src, dst, overwrite)

  monkeypatch.setattr(tf.io.gfile, "rename", rename_then_die)
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare(str(out), **kwargs)
  monkeypatch.undo()
  with pytest.raises(FileNotFoundError, match="no manifest"):
    lm.load_manifest(str(out))
  assert not any(p.name.startswith(".prepare-tmp") for p in out.iterdir())
  manifest = prepare.prepare(str(out), **kwargs)  # the next run completes the job
  assert manifest["splits"]["train"]["documents"] + manifest["splits"]["valid"]["documents"] == 300


def test_invalid_utf8_strict_names_file_and_offset_before_writing(tmp_path):
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "a.txt").write_text("fine text\n", encoding="utf-8")
  bad = tmp_path / "in" / "b.txt"
  bad.write_bytes("caf\u00e9 ok\n".encode() + b"bad \xff byte\nand \xc3( another\n")
  out = tmp_path / "out"
  with pytest.raises(prepare.PrepareError, match=rf"{bad}: not valid UTF-8 at byte offset 13\b"):
    prepare.prepare(str(out), inputs=[str(tmp_path / "in" / "*.txt")], doc_split="line", workers=1, progress=False)
  assert not out.exists()

  manifest = prepare.prepare(str(out), inputs=[str(tmp_path / "in" / "*.txt")], doc_split="line", errors="replace",
                             valid_fraction=0, workers=1, progress=False)
  assert manifest["errors"] == {"mode": "replace", "replacements": 2}
  assert manifest["splits"]["train"]["documents"] == 4


def test_decode_counts_only_substitutions():
  text, n = prepare.decode("\ufffd genuine".encode() + b" \xe2\x82 cut \xff", "x", "replace")
  assert n == 2 and text.count("\ufffd") == 3
  assert prepare.decode("\ufeffbom".encode(), "x", "strict") == ("bom", 0)


@pytest.mark.slow  # a fresh interpreter imports TensorFlow
def test_missing_input_and_empty_corpus_are_clear_errors(tmp_path):
  result = subprocess.run([
      sys.executable, "-m", "gpt1_jax.data.prepare", f"--input={tmp_path}/nothing/*.txt", f"--output={tmp_path}/out"
  ], capture_output=True, text=True, cwd=REPO, timeout=120)
  assert result.returncode == 1
  assert f"{tmp_path}/nothing/*.txt" in result.stderr and "matches no files" in result.stderr
  assert not (tmp_path / "out").exists()

  (tmp_path / "blank.txt").write_text("\n  \n\n", encoding="utf-8")
  with pytest.raises(prepare.PrepareError, match="empty corpus"):
    prepare.prepare(str(tmp_path / "out"), inputs=[str(tmp_path / "blank.txt")], doc_split="line", workers=1,
                    progress=False)
  with pytest.raises(prepare.PrepareError, match="exactly one of"):
    prepare.prepare(str(tmp_path / "out"), progress=False)


def test_tfds_source(tmp_path, tokenizer):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    manifest = prepare.prepare(str(tmp_path / "lm1b"), tfds_name="lm1b:train", valid_fraction=0, num_shards=2,
                               workers=1, progress=False)
    texts = [ex["text"].decode() for ex in tfds.as_numpy(tfds.load("lm1b", split="train", shuffle_files=False))]
  assert manifest["sources"] == {"tfds": "lm1b", "split": "train", "full_name": "lm1b/1.1.0", "text_key": "text"}
  encoded = [tokenizer.encode(t) for t in texts]
  np.testing.assert_array_equal(lm.load_tokens(str(tmp_path / "lm1b"), "train"), marked_stream(e for e in encoded if e))


# ----------------------------------------------------------------------------- packing
def position_stream(length):
  """Token k of the stream is k + 1 (0 stays free for padding), so a token names its position."""
  assert length < 65535
  return np.arange(1, length + 1, dtype=np.uint16)


@pytest.mark.parametrize("length,n_ctx", [(1001, 50), (1000, 50), (1003, 7)])
def test_one_shuffled_epoch_targets_every_position_exactly_once(length, n_ctx):
  data = lm.LMData(position_stream(length), n_ctx)
  assert data.num_windows == -(-(length - 1) // n_ctx)
  rows = pipeline.Rows(6)
  targets, inputs = np.zeros(length + 1, int), np.zeros(length + 1, int)
  slots = 0
  for batch in itertools.islice(data.train_batches(rows, seed=3), -(-data.num_windows // rows.global_batch_size)):
    for row in range(rows.global_batch_size):
      if slots == data.num_windows:
        break  # the batch straddles into the next epoch
      slots += 1
      t, x, m = batch["targets"][row], batch["inputs"][row], batch["loss_mask"][row]
      assert np.all(t[m == 0] == 0) and np.all(m[t == 0] == 0)  # padding, and only padding, is masked
      np.add.at(targets, t[m == 1], 1)
      np.add.at(inputs, x[x > 0], 1)
      np.testing.assert_array_equal(x[1:][m[:-1] == 1], t[:-1][m[:-1] == 1])  # shifted by one
  assert slots == data.num_windows
  # Position p holds value p + 1: every position but the first is a target exactly once,
  # every position but the last an input exactly once.
  np.testing.assert_array_equal(targets[2:length + 1], 1)
  assert targets[1] == 0
  np.testing.assert_array_equal(inputs[1:length], 1)
  assert inputs[length] == (1 if (length - 1) % n_ctx else 0)


def test_windows_are_stream_slices_with_markers_at_document_starts(sst2_prepared):
  out, manifest = sst2_prepared
  n_ctx = 128
  data = lm.LMData.load(str(out), "train", n_ctx)
  stream = data.stream
  assert data.num_tokens == manifest["splits"]["train"]["tokens"] + manifest["splits"]["train"]["documents"]
  assert (stream == START).sum() == manifest["splits"]["train"]["documents"] and stream[0] == START
  padded = np.concatenate([stream, np.zeros(data.num_windows * n_ctx + 1 - len(stream), np.uint16)])
  rows = pipeline.Rows(8)
  seen = np.zeros(data.num_windows, int)
  for step, batch in enumerate(itertools.islice(data.train_batches(rows, seed=0), -(-data.num_windows // 8))):
    order = pipeline.example_order(step, rows, data.num_windows, seed=0).numpy()  # TensorFlow's op
    for row, w in enumerate(order):
      window = padded[w * n_ctx:(w + 1) * n_ctx + 1]
      np.testing.assert_array_equal(batch["inputs"][row], window[:-1])
      np.testing.assert_array_equal(batch["targets"][row], window[1:])
      if step * 8 + row < data.num_windows:
        seen[w] += 1
  np.testing.assert_array_equal(seen, 1)
  assert batch["inputs"].dtype == np.int32 and batch["loss_mask"].dtype == np.float32
  assert batch["inputs"].shape == (8, n_ctx)


def test_eval_covers_every_window_once_with_example_mask():
  length, n_ctx = 1001, 16  # 63 windows, not a multiple of the batch
  data = lm.LMData(position_stream(length), n_ctx)
  first_inputs, masked = [], 0
  for batch in data.eval_batches(pipeline.Rows(10)):
    mask = batch["example_mask"]
    first_inputs += list(batch["inputs"][:, 0][mask == 1])
    masked += int((mask == 0).sum())
  assert first_inputs == [w * n_ctx + 1 for w in range(data.num_windows)]
  assert masked == 70 - data.num_windows


# ----------------------------------------------------------------------------- determinism
def _batches(ds, n):
  return list(itertools.islice(ds, n))


def _equal(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_seed_start_step_and_host_rows_determine_the_batches():
  data = lm.LMData(position_stream(4001), 20)  # 200 windows
  rows = pipeline.Rows(8)
  run = _batches(data.train_batches(rows, seed=7), 30)  # 240 slots: crosses an epoch
  assert _equal(run, _batches(data.train_batches(rows, seed=7), 30))
  assert not _equal(run, _batches(data.train_batches(rows, seed=8), 30))
  assert _equal(run[23:], _batches(data.train_batches(rows, seed=7, start_step=23), 7))
  lo = _batches(data.train_batches(pipeline.Rows(8, 0, 4), seed=7), 30)
  hi = _batches(data.train_batches(pipeline.Rows(8, 4, 4), seed=7), 30)
  for full, a, b in zip(run, lo, hi):
    for k in full:
      np.testing.assert_array_equal(full[k], np.concatenate([a[k], b[k]]))
  # Epochs use different permutations.
  assert not np.array_equal(
      np.concatenate([b["inputs"][:, 0] for b in run[:25]])[:40],
      np.concatenate([b["inputs"][:, 0] for b in run[25:30]])[:40])


def test_data_state_records_the_stream(sst2_prepared):
  out, _ = sst2_prepared
  data = lm.LMData.load(str(out), "train", 64)
  state = data.data_state(global_batch_size=32, seed=1)
  assert state == {
      "num_examples": data.num_windows,
      "global_batch_size": 32,
      "seed": 1,
      "n_ctx": 64,
      "data_fingerprint": data.fingerprint
  }
  pipeline.check_state(state, lm.LMData.load(str(out), "train", 64).data_state(32, 1), "ckpt")
  with pytest.raises(ValueError, match="data_fingerprint"):
    pipeline.check_state(state, lm.LMData.load(str(out), "valid", 64).data_state(32, 1), "ckpt")


# ----------------------------------------------------------------------------- validation
@pytest.fixture
def prepared_copy(sst2_prepared, tmp_path):
  out, manifest = sst2_prepared
  copy = tmp_path / "copy"
  shutil.copytree(out, copy)
  return copy, manifest


def test_manifest_validation_errors_name_the_path(prepared_copy, tmp_path, tokenizer):
  copy, manifest = prepared_copy
  shard = copy / manifest["splits"]["train"]["shards"][1]["file"]
  assert lm.load_manifest(str(copy), tokenizer.fingerprint) == manifest

  with pytest.raises(FileNotFoundError, match=f"{tmp_path}/nope: no such data directory"):
    lm.load_manifest(str(tmp_path / "nope"))
  with pytest.raises(ValueError, match=f"{copy}/manifest.json: tokenised with vocabulary"):
    lm.load_manifest(str(copy), expected_fingerprint="0" * 64)

  data = shard.read_bytes()
  shard.write_bytes(b"")
  with pytest.raises(ValueError, match=f"{shard}: shard of split 'train' is empty"):
    lm.load_manifest(str(copy))
  shard.write_bytes(data[:-5])
  with pytest.raises(ValueError, match=f"{shard}: {len(data) - 5} bytes, but .* records {len(data)}"):
    lm.load_manifest(str(copy))
  shard.unlink()
  with pytest.raises(FileNotFoundError, match=f"{shard}: shard of split 'train' .* is missing"):
    lm.load_manifest(str(copy))

  # Same size, damaged content: the sha256 catches it wherever content is checked (reading a
  # split whole, `prepare --verify`, and opening a split small enough to hash).
  shard.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
  for check in (lambda: lm.load_tokens(str(copy), "train"), lambda: lm.verify(str(copy)),
                lambda: lm.LMData.load(str(copy), "train", 64)):
    with pytest.raises(ValueError, match=f"{shard}: corrupt shard \\(its bytes differ from the sha256"):
      check()
  shard.write_bytes(data)
  index = copy / manifest["splits"]["train"]["shards"][1]["index"]
  offsets = index.read_bytes()
  index.write_bytes(offsets[:8] + (int.from_bytes(offsets[8:16], "little") + 1).to_bytes(8, "little") + offsets[16:])
  edited = json.loads((copy / "manifest.json").read_text())
  edited["splits"]["train"]["shards"][1]["index_sha256"] = hashlib.sha256(index.read_bytes()).hexdigest()
  (copy / "manifest.json").write_text(json.dumps(edited))
  with pytest.raises(ValueError, match=f"{shard}: corrupt shard \\(its index .* does not match its documents"):
    lm.load_tokens(str(copy), "train")
  index.write_bytes(offsets)

  edited = json.loads((copy / "manifest.json").read_text())
  edited["splits"]["train"]["shards"][1]["tokens"] += 1
  (copy / "manifest.json").write_text(json.dumps(edited))
  with pytest.raises(ValueError, match=f"{shard}: corrupt shard \\(.* stream tokens, but the manifest records"):
    lm.load_tokens(str(copy), "train")

  (copy / "manifest.json").write_text("{not json")
  with pytest.raises(ValueError, match=f"{copy}/manifest.json: not a valid manifest"):
    lm.load_manifest(str(copy))
  (copy / "manifest.json").unlink()
  with pytest.raises(FileNotFoundError, match=f"{copy}/manifest.json: no manifest"):
    lm.load_manifest(str(copy))


@pytest.mark.parametrize("suffix,compress", [(".gz", "gzip"), (".xz", "lzma"), (".bz2", "bz2")])
def test_compressed_inputs_read_as_their_text(tmp_path, sst2_lines, suffix, compress):
  import importlib
  lib = importlib.import_module(compress)
  text = "".join(sst2_lines[:300]).encode()
  (tmp_path / "plain.txt").write_bytes(text)
  (tmp_path / f"packed.txt{suffix}").write_bytes(lib.compress(text))
  kwargs = dict(doc_split="line", valid_fraction=0.1, num_shards=2, workers=1, progress=False)
  plain = prepare.prepare(str(tmp_path / "a"), inputs=[str(tmp_path / "plain.txt")], **kwargs)
  packed = prepare.prepare(str(tmp_path / "b"), inputs=[str(tmp_path / f"packed.txt{suffix}")], **kwargs)
  assert packed["splits"]["train"]["tokens"] == plain["splits"]["train"]["tokens"] > 0
  for split in ("train", "valid"):
    np.testing.assert_array_equal(lm.load_tokens(str(tmp_path / "b"), split),
                                  lm.load_tokens(str(tmp_path / "a"), split))


def test_damaged_compressed_input_is_a_clear_error_and_writes_no_manifest(tmp_path, sst2_lines):
  import lzma
  raw = lzma.compress("".join(sst2_lines[:300]).encode())
  bad = tmp_path / "cut.txt.xz"
  bad.write_bytes(raw[:len(raw) // 2])  # truncated, as by an interrupted download
  with pytest.raises(prepare.PrepareError, match=r"cut\.txt\.xz: cannot decompress as lzma"):
    prepare.prepare(str(tmp_path / "out"), inputs=[str(bad)], doc_split="line", workers=1, progress=False)
  assert not (tmp_path / "out" / "manifest.json").exists()


# ----------------------------------------------------------------------------- NumPy order
@pytest.mark.parametrize("n", [1, 2, 3, 200, 65536, 65537, 65538, 10**6 + 3, 2**32 + 1, 3 * 10**10])
def test_numpy_index_shuffle_equals_tensorflows_op(n):
  """The NumPy permutation is TF's RandomIndexShuffle bit for bit (seeds cast to uint32 as the op does)."""
  rng = np.random.default_rng(n % 1000)
  idx = rng.integers(0, n, size=64) if n > 1 else np.zeros(64, np.int64)
  for seed in (0, 7, -1, 2**33 + 5):
    seeds = np.stack([np.full(64, seed), rng.integers(0, 50, size=64), np.zeros(64, np.int64)], -1)
    for rounds in (4, 8):
      ref = tf.raw_ops.RandomIndexShuffle(index=tf.constant(idx, tf.int64), seed=tf.constant(seeds, tf.int64),
                                          max_index=tf.constant(n - 1, tf.int64), rounds=rounds).numpy()
      np.testing.assert_array_equal(pipeline.index_shuffle(idx, seeds, n - 1, rounds).astype(np.int64), ref)


def test_numpy_example_order_equals_the_tf_data_order():
  for n in (7, 200, 4688, 10**9 + 7):
    for step in (0, 1, 17, 99999):
      rows = pipeline.Rows(16, 4, 8)
      np.testing.assert_array_equal(pipeline.example_order_np(step, rows, n, 9),
                                    pipeline.example_order(step, rows, n, 9).numpy())
  perm = pipeline.index_shuffle(np.arange(1000), np.array([3, 1, 0]), 999)
  assert sorted(perm.tolist()) == list(range(1000))


def _digest(batches):
  digest = hashlib.sha256()
  for batch in batches:
    for k in sorted(batch):
      v = batch[k].numpy() if hasattr(batch[k], "numpy") else batch[k]
      digest.update(k.encode())
      digest.update(np.ascontiguousarray(v).tobytes())
  return digest.hexdigest()


def test_batches_equal_those_of_the_tfrecord_era_pipeline():
  """Digests of the batches the in-memory tf.data pipeline gave on 2026-12-03 (commit 08ef81b):
  any reader of the same stream must reproduce them (issue 17: same batches for the same data)."""
  data = lm.LMData(position_stream(4001), 20)
  assert _digest(itertools.islice(data.train_batches(pipeline.Rows(8), seed=7),
                                  30)) == ("8d17fc6a72cec491a19c3f74d0db44dad038917460830c167ea8fa885f8303d1")
  assert _digest(itertools.islice(data.train_batches(pipeline.Rows(8, 4, 4), seed=7, start_step=5),
                                  30)) == ("2d9d2e52f608089301310a03cc9781698f970187238660a1f8a4bbe7a2202406")
  assert _digest(data.eval_batches(
      pipeline.Rows(10))) == ("1bd51ff027287b84767a1ae4044f94c134ce2f35f8d0038f4b2624418a006122")
  stream = np.random.default_rng(0).integers(0, 40478, size=300_001).astype(np.uint16)
  batches = lm.LMData(stream, 64).train_batches(pipeline.Rows(16), seed=123, start_step=1000)
  assert _digest(itertools.islice(batches, 20)) == ("2c873aff38e78c86bb0c10ffe2ef589979a296a45d1019a0daf5a2b73ec99a48")
