"""The documentation runs: every fenced block of README.md and docs/*.md is run here, or says why not.

A block is a ```python block (the whole block is one unit) or a ```bash / ```sh / unlabelled block
(each command is a unit: continuation lines joined, comment lines dropped). Each unit has exactly
one decision, found by a stable substring of its text: ``RUN`` names the scenario below that runs
it as written (``python`` is this interpreter; the pretraining commands get the micro model's
flags appended, placeholders such as ``path/to/RTE`` are replaced by the shipped copy), ``EXEMPT``
says why it cannot run on a CPU in seconds and which test covers it instead. A new block without a
decision, or a decision that matches no block any more, fails ``test_every_block_is_run_or_exempt``.
Exempt commands still have their flags checked: every ``--flag`` of a ``python -m gpt1_jax.X`` must
be one ``X`` defines, and every ``--config.KEY`` a key of the config the command names.
"""

import concurrent.futures
import dataclasses
import functools
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO, load_config

# substring of the unit -> the scenario test that runs it
RUN = {
    # docs/pretraining.md, at micro scale: a corpus of 40 files, 6 steps of a 2-block 32-wide model
    "python -m gpt1_jax.data.prepare --input='corpus/*.txt' --output=data/books": "pretraining",
    "python -m gpt1_jax.main --config=configs/pretrain.py:gpt1 --workdir=workdirs/gpt1": "pretraining",
    "python -m gpt1_jax.data.prepare --verify=data/books": "pretraining",
    "python -m gpt1_jax.generate --checkpoint=workdirs/gpt1": "pretraining",
    "python -m gpt1_jax.zeroshot --checkpoint=workdirs/gpt1 --task=sst2": "pretraining",
    # docs/finetuning.md: from that micro run, 2 steps on the shipped RTE sample
    "python -m gpt1_jax.main --config=configs/finetune.py:rte": "pretraining",
    # docs/weights.md, on a micro SST-2 checkpoint made by the test
    "from gpt1_jax.model import GPT1, GPT1LM, ModelConfig": "weights",
    "python -m gpt1_jax.convert --to=hf --checkpoint=workdirs/sst2/best": "weights",
    "python -m gpt1_jax.convert --from=hf --hf_path=hf/sst2": "weights",
    "python -m gpt1_jax.export --checkpoint=workdirs/sst2/best --out=sst2.jaxexport": "weights",
    "serve = export.deserialize(f.read())": "weights",
    # docs/launch.md: the recipes' dry runs print the command and run nothing
    "launch/gpu.sh --dry_run": "dry_run",
    "bash launch/slurm.sbatch --dry_run": "dry_run",
}

TEST_COVERS_IT = "tests/test_launch.py runs it with a fake gcloud and --dry_run"
# substring of the unit -> why it is not run here
EXEMPT = {
    "pip install -q -e '.[demo]' -c constraints.txt && .venv/bin/python -m gpt1_jax.demo": "the demo: a venv, an install and ~18 minutes; tests/test_demo.py runs the demo at --budget=30",
    "pip install -q -e '.[test]' -c constraints.txt && .venv/bin/python -m pytest -q": "the whole suite (~20 minutes), this test included; .ci/run runs exactly this line in CI",
    'python -m pytest -q -m "not slow"': "the unit tests (~5 minutes), run in CI as part of the whole suite",
    "pip install -e '.[aot]'": "installs libtpu from PyPI; the test extra already has it",
    "python -m gpt1_jax.aot --topology=v5e-8 --config=configs/pretrain.py:gpt1 --config.mesh.data=1": "minutes of XLA:TPU compiling: tests/test_aot.py runs this exact command (slow) and micro models",
    "python -m gpt1_jax.aot --topology=v5e-8 --config=configs/pretrain.py:gpt1 --sweep": "a sweep of 3-4 minute compiles: tests/test_aot.py runs --sweep on a micro model",
    "python -m gpt1_jax.main --config=configs/pretrain.py:tiny --workdir=workdirs/curve": "17 minutes of pretraining on the demo's corpus; the pretraining scenario here runs gpt1_jax.main",
    "python -m gpt1_jax.transfer --pretrain=workdirs/curve": "30 fine-tuning runs (an hour); tests/test_demo.py runs the transfer curve on a micro run",
    "python -m gpt1_jax.ablations --transformer=workdirs/demo/pretrain": "hours of runs, and MRPC and Story Cloze data the project cannot ship; tests/test_ablations.py",
    "python -m gpt1_jax.ablations --quick": "minutes of micro runs: tests/test_ablations.py runs --quick on a fresh clone's tasks",
    "launch/gpu.sh --workdir=workdirs/gpt1 --config.data.dir=DATA": "needs an NVIDIA GPU; its --dry_run runs here",
    "launch/gpu_check.sh out/gpu_check": "needs an NVIDIA GPU; tests/test_bench.py runs its suite (--suite=gpu --quick) on CPU",
    "sbatch --nodes=4": "needs a SLURM cluster; the --dry_run line runs here",
    "export TPU_NAME=": "the TPU lines' settings: they need gcloud, a project and TPU quota",
    "export WORKDIR=gs://": "the TPU lines' settings: they need gcloud, a project and TPU quota",
    "launch/tpu_pod.sh plan": "minutes of XLA:TPU compiling for GPT-1 117M; " + TEST_COVERS_IT,
    "launch/tpu_pod.sh all": "creates a TPU slice: needs gcloud and TPU quota; " + TEST_COVERS_IT,
    "launch/tpu_pod.sh logs;": "needs a running TPU slice; " + TEST_COVERS_IT,
    "launch/tpu_pod.sh --queued --spot all": "creates a TPU slice: needs gcloud and TPU quota; " + TEST_COVERS_IT,
    "launch/local_multihost.sh": "needs the demo's tokenised corpus; tests/test_multihost.py runs local_multihost.sh on a micro run",
    "python -m gpt1_jax.bench --out=bench.json": "~10 minutes of timing runs; tests/test_bench.py runs the suites at tiny shapes",
    "python -m gpt1_jax.convert --from=openai": "needs OpenAI's 480 MB release; tests/test_convert.py converts a synthetic one",
    "--hf_path=path/to/openai-gpt": "needs Hugging Face's openai-gpt download; the round trip in docs/weights.md runs --from=hf here",
    "from gpt1_jax.nnx_bridge import to_nnx": "tests/test_nnx.py runs it as written",
    "--workdir=/tmp/repro_check":
        "a minute of fine-tuning whose expected numbers are one machine's; tests/test_reproducibility.py "
        "checks the batch order it depends on",
    "grep '\"step\": 10,' /tmp/repro_check/metrics.jsonl": "reads the run of the line above",
    "--workdir=W --config.task.source=$PWD/data/sst2":
        "the measurement's template (W, S and WORKDIR are placeholders for each row's run); "
        "tests/test_reproducibility.py checks the data order it depends on",
    "python -m gpt1_jax.zeroshot --run=workdirs/gpt1":
        "tests/test_zeroshot.py runs this curve (--run, --tasks=sst2,cola, --curve_out) on a micro run; "
        "--checkpoint runs here",
}

LANGS = ("", "bash", "sh", "shell", "python")
BLOCK = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)

# Appended to a documented pretraining or fine-tuning command: the micro model of tests/conftest.py.
MICRO = ("--config.model.n_ctx=32 --config.model.n_embd=32 --config.model.n_head=2 --config.model.n_layer=2 "
         "--config.model.vocab_pad_multiple=8 --config.train.batch_size=8 "
         "--config.log.every_steps=2 --config.log.measure_peak=False --config.log.peak_flops_per_device=1e12 "
         "--config.eval.batch_size=8 --config.mesh.num_devices=1")


@dataclasses.dataclass(frozen=True)
class Unit:
  path: str  # relative to the repository
  lang: str
  text: str  # one command, or a whole Python block

  def __str__(self):
    return f"{self.path}: {self.text.splitlines()[0][:100]}"


def units() -> list[Unit]:
  found = []
  for path in ["README.md", *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]:
    with open(os.path.join(REPO, path)) as f:
      for lang, body in BLOCK.findall(f.read()):
        if lang not in LANGS:
          continue
        if lang == "python":
          found.append(Unit(path, lang, body))
          continue
        for line in re.sub(r"[ \t]*\\\n[ \t]*", " ", body).splitlines():
          if line.strip() and not line.strip().startswith("#"):
            found.append(Unit(path, lang or "bash", line.strip()))
  return found


def decisions(unit: Unit) -> list[str]:
  return [key for key in (*RUN, *EXEMPT) if key in unit.text]


def test_every_block_is_run_or_exempt():
  all_units = units()
  assert len(all_units) > 20, "the docs hold far more blocks than this: is the block pattern broken?"
  undecided = [str(u) for u in all_units if not decisions(u)]
  ambiguous = [f"{u} -> {decisions(u)}" for u in all_units if len(decisions(u)) > 1]
  stale = [key for key in (*RUN, *EXEMPT) if not any(key in u.text for u in all_units)]
  assert not undecided, ("blocks with no decision (run them in a scenario of tests/test_docs.py, or add them to "
                         "EXEMPT with the reason):\n  " + "\n  ".join(undecided))
  assert not ambiguous, "blocks matched by several decisions:\n  " + "\n  ".join(ambiguous)
  assert not stale, f"decisions that match no block any more: {stale}"
  assert not set(RUN) & set(EXEMPT)
  assert all(reason.strip() for reason in EXEMPT.values())


# ---------------------------------------------------------------------------------------------
# Flags of the commands that are not run


def module_commands(text: str) -> list[tuple[str, list[str]]]:
  """``(module, its arguments)`` for each ``python -m gpt1_jax.X ...`` in a shell line."""
  words = shlex.split(text, comments=True)
  out, i = [], 0
  while i < len(words):
    if words[i] == "-m" and i + 1 < len(words) and words[i + 1].startswith("gpt1_jax."):
      j = i + 2
      while j < len(words) and words[j] not in ("&&", ";", "||", "|"):
        j += 1
      out.append((words[i + 1], words[i + 2:j]))
      i = j
    else:
      i += 1
  return out


@functools.lru_cache(maxsize=None)
def defined_flags(module: str) -> frozenset:
  out = subprocess.run([sys.executable, "-m", module, "--helpfull"], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env={
                           **os.environ, "JAX_PLATFORMS": "cpu"
                       })
  names = re.findall(r"^\s+(?:-\w,)?--(\[no\])?([\w.]+)", out.stdout, re.M)
  assert names, f"{module} --helpfull printed no flags:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
  return frozenset(name for _, name in names)


def config_has(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return False
  return True


def config_keys_of(text: str) -> tuple[str, list[str]]:
  """The config a shell line names (default ``configs/pretrain.py:gpt1``, launch/*.sh's) and its
  ``--config.KEY`` overrides."""
  words = shlex.split(text, comments=True)
  named = [w.split("=", 1)[1] for w in words if w.startswith("--config=")]
  keys = [w[len("--config."):].split("=", 1)[0] for w in words if w.startswith("--config.")]
  return (named[0] if named else "configs/pretrain.py:gpt1"), keys


def test_commands_not_run_name_only_flags_and_config_keys_that_exist():
  exempt = [u for u in units() if u.lang != "python" and any(key in u.text for key in EXEMPT)]
  modules = sorted({m for u in exempt for m, _ in module_commands(u.text)})
  with concurrent.futures.ThreadPoolExecutor(2) as pool:  # each is a Python start-up: two at a time
    list(pool.map(defined_flags, modules))
  wrong = []
  for u in exempt:
    for module, args in module_commands(u.text):
      for arg in args:
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if name and not name.startswith("config.") and name not in defined_flags(module):
          wrong.append(f"{u}: {module} has no flag --{name}")
    spec, keys = config_keys_of(u.text)
    if keys:
      file, arg = spec.split(":")
      config = load_config(os.path.splitext(os.path.basename(file))[0], arg)
      wrong += [f"{u}: {spec} has no key {k}" for k in keys if not config_has(config, k)]
  assert modules, "no exempt python -m gpt1_jax.X command found: is module_commands broken?"
  assert not wrong, "\n".join(wrong)


# ---------------------------------------------------------------------------------------------
# Scenarios: the RUN units, as written, in a fresh working directory


class Scenario:
  """Runs the units a scenario owns, each found by its RUN key; ``done()`` checks none was skipped."""

  def __init__(self, name, cwd):
    self.name, self.cwd, self.ran = name, str(cwd), set()
    self.env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user has
    self.env.update(JAX_PLATFORMS="cpu", PYTHON=sys.executable, GPT1_JAX_HOME=REPO)

  def unit_texts(self, key: str) -> list[Unit]:
    assert RUN.get(key) == self.name, f"{key!r} is not a RUN unit of the {self.name} scenario"
    found = {u.text: u for u in units() if key in u.text}
    assert found, f"no block holds {key!r}"
    return list(found.values())

  def shell(self, key, append="", replace=(), cwd=None) -> str:
    outs = []
    for u in self.unit_texts(key):
      cmd = u.text
      for old, new in replace:
        assert old in cmd, f"{old!r} is no longer in {u}"
        cmd = cmd.replace(old, new)
      cmd = re.sub(r"(^|\s)python -m ", rf"\g<1>{shlex.quote(sys.executable)} -m ", cmd)
      cmd = re.sub(r"\s#.*$", "", cmd) + (" " + append if append else "")
      p = subprocess.run(["bash", "-c", cmd], cwd=cwd or self.cwd, env=self.env, capture_output=True, text=True,
                         timeout=600)
      assert p.returncode == 0, f"{u}\n$ {cmd}\nexit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
      outs.append(p.stdout + p.stderr)
    self.ran.add(key)
    return "\n".join(outs)

  def python(self, key, replace=(), before="", after="") -> str:
    (u,) = self.unit_texts(key)
    code = u.text
    for old, new in replace:
      assert old in code, f"{old!r} is no longer in {u}"
      code = code.replace(old, new)
    p = subprocess.run([sys.executable, "-c", before + code + after], cwd=self.cwd, env=self.env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, f"{u}\n{p.stderr[-5000:]}"
    self.ran.add(key)
    return p.stdout

  def done(self):
    owned = {key for key, name in RUN.items() if name == self.name}
    assert owned == self.ran, f"RUN units of {self.name} never run: {sorted(owned - self.ran)}"


@pytest.mark.slow
def test_pretraining_and_finetuning_commands_run_at_micro_scale(tmp_path):
  s = Scenario("pretraining", tmp_path)
  (tmp_path / "configs").symlink_to(os.path.join(REPO, "configs"))  # the docs run from a checkout's root
  # A corpus of 40 files of real English (doc_split=file holds out whole files).
  with open(os.path.join(REPO, "data", "sst2", "unlabelled.txt")) as f:
    lines = [next(f) for _ in range(1200)]
  (tmp_path / "corpus").mkdir()
  for i in range(40):
    (tmp_path / "corpus" / f"{i:02d}.txt").write_text("".join(lines[30 * i:30 * (i + 1)]))
  s.shell("python -m gpt1_jax.data.prepare --input='corpus/*.txt' --output=data/books", append="--workers=1")
  assert (tmp_path / "data" / "books" / "manifest.json").exists()
  s.shell(
      "python -m gpt1_jax.main --config=configs/pretrain.py:gpt1 --workdir=workdirs/gpt1",
      append=MICRO + " --config.train.num_steps=6 --config.train.warmup_steps=1 --config.checkpoint.every_steps=3"
      " --config.eval.every_steps=6")
  rows = (tmp_path / "workdirs" / "gpt1" / "metrics.jsonl").read_text()
  assert '"train/loss"' in rows
  assert "bad" not in s.shell("python -m gpt1_jax.data.prepare --verify=data/books").lower()
  assert "the movie is" in s.shell("python -m gpt1_jax.generate --checkpoint=workdirs/gpt1",
                                   append="--max_new_tokens=4")
  s.shell("python -m gpt1_jax.zeroshot --checkpoint=workdirs/gpt1 --task=sst2")
  s.shell("python -m gpt1_jax.main --config=configs/finetune.py:rte",
          replace=[("path/to/RTE", os.path.join(REPO, "data", "rte"))],
          append=MICRO + " --config.train.num_steps=2 --config.eval.every_steps=2")
  assert (tmp_path / "workdirs" / "rte" / "best").is_dir()
  s.done()


SERVING_INPUTS = """
import numpy as np
input_ids = np.array([[[40478, 11, 12, 13, 40480, 0]], [[40478, 14, 40480, 0, 0, 0]]], np.int32)  # [2, K=1, 6]
attention_mask = (np.arange(6) < np.array([[5], [3]])[:, None]).astype(np.int32)
"""


@pytest.mark.slow
def test_weights_commands_and_examples_run_on_a_micro_checkpoint(tmp_path):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  from gpt1_jax.checkpoint import save_params
  from gpt1_jax.model import GPT1ForTask, ModelConfig, init_params

  s = Scenario("weights", tmp_path)
  # GPT-1's vocabulary and positions, a tiny body: a fine-tuned SST-2 checkpoint and a language model.
  cfg = ModelConfig(n_ctx=32, n_embd=32, n_head=2, n_layer=2)
  z = jnp.zeros((1, 1, 8), jnp.int32)
  head = nn.meta.unbox(jax.jit(GPT1ForTask(cfg, "classification", 2).init)(jax.random.key(0), z, z + 1, z[...,
                                                                                                          0]))["params"]
  save_params(str(tmp_path / "workdirs" / "sst2" / "best"), cfg, jax.tree.map(np.asarray, head),
              extra_meta={"task": "sst2"})
  save_params(str(tmp_path / "lm"), cfg, init_params(cfg, jax.random.key(1)))

  # GPT-1 117M's eager init takes half a minute here: the same block with a small body.
  out = s.python(
      "from gpt1_jax.model import GPT1, GPT1LM, ModelConfig",
      replace=[("openai:path/to/model", "lm"),
               ("cfg = ModelConfig() ", "cfg = ModelConfig(n_ctx=32, n_embd=32, n_head=2, n_layer=2) ")],
      after="\nprint('logits', logits.shape)\n")
  assert "logits (1, " in out and ", 40481)" in out
  s.shell("python -m gpt1_jax.convert --to=hf --checkpoint=workdirs/sst2/best")
  assert (tmp_path / "hf" / "sst2" / "config.json").exists()
  s.shell("python -m gpt1_jax.convert --from=hf --hf_path=hf/sst2")
  back = tmp_path / "workdirs" / "sst2_back"
  assert back.is_dir() and os.listdir(back)
  s.shell("python -m gpt1_jax.export --checkpoint=workdirs/sst2/best --out=sst2.jaxexport")
  out = s.python("serve = export.deserialize(f.read())", before=SERVING_INPUTS,
                 after="\nprint('logits', np.asarray(logits).shape)\n")
  assert "logits (2, 2)" in out
  s.done()


@pytest.mark.slow
def test_launch_dry_runs_print_the_entry_point_and_run_nothing(tmp_path):
  s = Scenario("dry_run", tmp_path)
  for key, flag in [("launch/gpu.sh --dry_run", "--workdir=workdirs/gpt1"),
                    ("bash launch/slurm.sbatch --dry_run", "--workdir=/shared/w")]:
    out = s.shell(key, cwd=REPO)
    assert "-m gpt1_jax.main" in out and flag in out, out
  s.done()
