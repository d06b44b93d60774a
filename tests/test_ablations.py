"""The ablation grid (gpt1_jax.ablations): Table 5's layout filled from the runs' own logs.

* ``--quick`` end to end: two micro models pretrained on the fly (a transformer, an LSTM with the
  transformer run's data, seed and schedule), every (task, arm) fine-tuned, and each cell of the
  table equals the final evaluation logged in that run's ``metrics.jsonl``, the Markdown included.
* Resume: a run whose results are deleted is run again, and no other run is.
* Bad input is refused with one ``error:`` line before anything is written.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from gpt1_jax import ablations

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_story_cloze(folder, n=30):
  """A made-up Story Cloze file in the official CSV layout (the real one must not be shipped)."""
  os.makedirs(folder)
  with open(os.path.join(folder, "cloze_test_val__spring2016.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow([
        "InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
        "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"
    ])
    for i in range(n):
      right, wrong = "she was glad to be home.", "the moon was made of cheese."
      ends = (right, wrong) if i % 2 else (wrong, right)
      w.writerow([
          f"story-{i}", "Ann walked to the park.", "It was sunny.", "She met a friend.", "They talked for an hour.",
          *ends, 1 if i % 2 else 2
      ])


def _head_of_sst2(folder, n=40):
  os.makedirs(folder)
  for name in ("train.tsv", "dev.tsv"):
    with open(os.path.join(REPO, "data", "sst2", name)) as f, open(os.path.join(folder, name), "w") as g:
      g.writelines(f.readline() for _ in range(n + 1))


@pytest.fixture(scope="module")
def quick_grid(tmp_path_factory):
  root = tmp_path_factory.mktemp("ablations")
  _head_of_sst2(str(root / "sst2"))
  _write_story_cloze(str(root / "story_cloze"))
  grid = ablations.Grid(out=str(root / "out"), tasks=("sst2", "story_cloze"), task_dirs={
      "sst2": str(root / "sst2"),
      "story_cloze": str(root / "story_cloze")
  }, seeds=(0,), quick=True)
  logs = []
  record = ablations.run_grid(grid, log=logs.append)
  return grid, record, logs


def _logged_final(workdir, metric):
  """Independently of the module: the last line of metrics.jsonl that has an evaluation."""
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r for r in rows if f"eval/{metric}" in r][-1][f"eval/{metric}"]


@pytest.mark.slow
def test_quick_grid_cells_are_the_runs_logged_metrics(quick_grid):
  grid, record, logs = quick_grid
  assert [a["name"] for a in record["arms"]] == ["full", "no_pretraining", "no_aux_lm", "lstm"]
  assert record["metrics"] == {"sst2": "accuracy", "story_cloze": "accuracy"}
  with open(os.path.join(grid.out, "ablations.md")) as f:
    md = f.read()
  rows = {
      line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
      for line in md.splitlines()
      if line.startswith("| ") and "±" in line
  }
  labels = {a.name: a.label for a in ablations.ARMS}
  for arm in ablations.ARM_NAMES:
    for j, task in enumerate(grid.tasks):
      logged = _logged_final(ablations.run_dir(grid, task, arm, 0), "accuracy")
      cell = record["cells"][arm][task]
      assert cell["values"] == [100 * logged]
      assert rows[labels[arm]][1 + j] == f"{100 * logged:.1f} ± 0.0"
    avg = sum(100 * _logged_final(ablations.run_dir(grid, t, arm, 0), "accuracy") for t in grid.tasks) / 2
    assert record["cells"][arm]["average"]["mean"] == pytest.approx(avg)
  assert os.path.getsize(os.path.join(grid.out, "ablations.png")) > 0
  # The arms are what they say: init and lambda per run, the LSTM from the transformer's recipe.
  for arm in ablations.ARMS:
    with open(os.path.join(ablations.run_dir(grid, "sst2", arm.name, 0), "config.json")) as f:
      c = json.load(f)
    assert c["task"]["lm_coef"] == arm.lm_coef
    assert (c["init"]["weights"] == "none") == (arm.weights == "none")
    assert c["model"]["architecture"] == ("lstm" if arm.weights == "lstm" else "transformer")
  pre = {w: json.load(open(os.path.join(grid.out, "pretrain", w, "config.json"))) for w in ("transformer", "lstm")}
  assert pre["lstm"]["train"] == pre["transformer"]["train"] and pre["lstm"]["data"] == pre["transformer"]["data"]
  assert pre["lstm"]["model"]["lstm_units"] == ablations.QUICK_LSTM_UNITS
  assert sum("seed 0:" in line for line in logs) == 8


@pytest.mark.slow
def test_resume_reruns_only_the_missing_run(quick_grid):
  grid, record, _ = quick_grid
  gone = ablations.run_dir(grid, "story_cloze", "no_aux_lm", 0)
  others = [ablations.run_dir(grid, t, a, 0) for t in grid.tasks for a in ablations.ARM_NAMES]
  others.remove(gone)
  before = {d: os.stat(os.path.join(d, "metrics.jsonl")).st_mtime_ns for d in others}
  shutil.rmtree(gone)
  logs = []
  again = ablations.run_grid(ablations.Grid(**{**grid.__dict__}), log=logs.append)
  ran = [line for line in logs if "seed 0:" in line]
  assert len(ran) == 1 and "story_cloze no_aux_lm seed 0" in ran[0]
  assert not any(line.startswith("pretraining") for line in logs)  # finished pretraining is not redone
  assert {d: os.stat(os.path.join(d, "metrics.jsonl")).st_mtime_ns for d in others} == before
  assert again["cells"]["full"] == record["cells"]["full"]
  assert again["cells"]["no_aux_lm"]["story_cloze"]["values"] == [100 * _logged_final(gone, "accuracy")]


@pytest.mark.parametrize("args, message", [
    (["--tasks=sst2,glue"], "--tasks: unknown task 'glue'"),
    (["--tasks=mrpc"], "pass --task_dirs=mrpc=DIR"),
    (["--tasks=sst2", "--task_dirs=sst2=/nonexistent"], "sst2=/nonexistent is not a directory"),
    (["--tasks=sst2", "--set=train.learning_rat=1"], "no key 'train.learning_rat'"),
    (["--tasks=sst2", "--seeds=0,x"], "--seeds=0,x: expected integers"),
])
def test_bad_input_is_refused_before_any_work(tmp_path, args, message):
  out = tmp_path / "out"
  p = subprocess.run([sys.executable, "-m", "gpt1_jax.ablations", f"--out={out}", "--quick", *args], cwd=REPO,
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 1, p.stderr[-2000:]
  errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and message in errors[0], p.stderr[-2000:]
  assert "Traceback" not in p.stderr
  assert not out.exists()


def test_unreadable_or_wrong_checkpoints_are_refused(tmp_path):
  """Checked in-process (no training): a directory without checkpoints, and a transformer given as the LSTM."""
  from gpt1_jax import checkpoint
  from gpt1_jax.model import ModelConfig, init_params
  import jax
  empty = tmp_path / "empty"
  empty.mkdir()
  grid = lambda **kw: ablations.Grid(out=str(tmp_path / "out"), tasks=("sst2",), task_dirs=
                                     {"sst2": os.path.join(REPO, "data", "sst2")}, seeds=(0,), quick=True, **kw)
  with pytest.raises(ValueError, match="--transformer=.*cannot read the weights"):
    ablations.check_inputs(grid(transformer=str(empty)))
  cfg = ModelConfig(vocab_size=40481, n_ctx=16, n_embd=16, n_head=2, n_layer=1, vocab_pad_multiple=1)
  checkpoint.save_params(str(tmp_path / "tr"), cfg, {"transformer": init_params(cfg, jax.random.key(0))["transformer"]})
  with pytest.raises(ValueError, match="--lstm=.*model.architecture is 'transformer', expected 'lstm'"):
    ablations.check_inputs(grid(transformer=str(tmp_path / "tr"), lstm=str(tmp_path / "tr")))
  assert not (tmp_path / "out").exists()


def _fresh_clone(root):
  """A checkout as cloned: configs/ and the tasks the project ships, none of ../shared's data."""
  os.makedirs(os.path.join(root, "data"))
  os.symlink(os.path.join(REPO, "configs"), os.path.join(root, "configs"))
  for task in ("sst2", "cola", "stsb", "rte", "imdb"):
    os.symlink(os.path.join(REPO, "data", task), os.path.join(root, "data", task))
  return str(root)


def test_default_tasks_are_those_with_data_and_the_rest_are_named(tmp_path, monkeypatch):
  monkeypatch.setenv("GPT1_JAX_HOME", _fresh_clone(tmp_path / "clone"))
  dirs = ablations.task_dirs_with_defaults(ablations.DEFAULT_TASKS, {})
  assert set(dirs) == {"sst2", "cola", "stsb", "rte"}
  assert ablations.tasks_with_data(ablations.DEFAULT_TASKS,
                                   dirs) == (("sst2", "cola", "stsb", "rte"), ("mrpc", "story_cloze"))
  # A directory given for an unshipped task brings it back, in Table 5's order.
  dirs = ablations.task_dirs_with_defaults(ablations.DEFAULT_TASKS, {"mrpc": "/somewhere/MRPC"})
  assert ablations.tasks_with_data(ablations.DEFAULT_TASKS,
                                   dirs) == (("sst2", "cola", "stsb", "rte", "mrpc"), ("story_cloze",))
  assert ablations.left_out_message(
      ("mrpc", "story_cloze")) == ("left out mrpc, story_cloze: no data directory (the project cannot ship them); "
                                   "add with --task_dirs=mrpc=DIR,story_cloze=DIR")
  monkeypatch.setenv("GPT1_JAX_HOME", str(tmp_path / "no_checkout"))
  with pytest.raises(ValueError, match=r"no data for any of the default tasks .*GPT1_JAX_HOME"):
    ablations.tasks_with_data(ablations.DEFAULT_TASKS, ablations.task_dirs_with_defaults(ablations.DEFAULT_TASKS, {}))


def test_cli_on_a_fresh_clone_names_the_left_out_tasks_and_checks_the_rest(tmp_path):
  """The message comes before any work; the grid then goes on with the four shipped tasks (stopped
  here at the input checks by a missing --transformer, so the test takes seconds, not the grid's minutes)."""
  env = {**os.environ, "GPT1_JAX_HOME": _fresh_clone(tmp_path / "clone")}
  out = tmp_path / "out"
  p = subprocess.run([
      sys.executable, "-m", "gpt1_jax.ablations", f"--out={out}", "--quick", f"--transformer={tmp_path / 'missing'}"
  ], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert p.stdout.splitlines()[0] == ablations.left_out_message(("mrpc", "story_cloze")), p.stdout
  errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
  assert p.returncode == 1 and errors == [f"error: --transformer={tmp_path / 'missing'}: no such directory"], p.stderr
  assert "mrpc" not in p.stderr and not out.exists()
