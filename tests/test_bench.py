"""The benchmark runs end to end at a micro shape and reports every figure, positive and finite.

Speed is never asserted: the numbers depend on the machine and its load. What is pinned
down is that each suite measures what it says (same shape for both implementations, the
ratios are the quotients of the reported throughputs) and that the JSON is complete and
strict (no NaN), so a real run cannot fail at its end or write a file nobody can read.
"""

import gzip
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import load_config
from gpt1_jax import bench, perf
from gpt1_jax.model import ModelConfig

MICRO = ModelConfig(vocab_size=512, n_ctx=32, n_embd=64, n_head=2, n_layer=1)


def positive_finite(x):
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  opts = bench.Options(shapes=(bench.Shape("micro", MICRO, 4,
                                           32),), steps=2, warmup=1, peak_n=256, tokenizer_lines=200, lm_batch=4,
                       lm_seq_len=32, pipeline_seconds=0.1, task_batch=8, task_max_len=32, inference_model=MICRO,
                       classify_batch=4, generate_batch=2, prompt_len=4, new_tokens=4, inference_reps=2)
  r = bench.run(opts, "pytest")
  path = tmp_path_factory.mktemp("bench") / "bench.json"
  bench.write_json(r, str(path))
  with open(path) as f:
    # Strict JSON: a NaN or Infinity anywhere would make this raise.
    return json.load(f, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_header_names_machine_versions_and_command(result):
  assert result["command"] == "pytest"
  assert result["machine"]["cpu_cores"] >= 1 and result["machine"]["cpu_model"]
  assert result["machine"]["device_kind"]
  for lib in ("python", "jax", "jaxlib", "flax", "optax", "torch", "transformers", "tensorflow"):
    assert result["versions"][lib], lib
  assert "6*N" in result["flop_formula"]
  assert positive_finite(result["peak"]["measured_matmul_flops"])


def test_train_step_ours_and_hf_at_the_same_shape(result):
  (row,) = result["train"]
  assert row["tokens_per_step"] == 4 * 32
  ours, hf = row["ours"], row["hf"]
  for side in (ours, hf):
    for key in ("step_s", "tokens_per_s", "achieved_flops", "mfu_measured_peak"):
      assert positive_finite(side[key]), key
    assert len(side["step_times_s"]) == 2
    assert math.isclose(side["tokens_per_s"], 4 * 32 / side["step_s"])
    assert math.isfinite(side["loss_first"]) and math.isfinite(side["loss_last"])
  assert hf["params"] == ours["params"] == MICRO.num_params()  # the same model on both sides
  assert hf["tied_lm_head"]
  assert math.isclose(row["ours_over_hf"], ours["tokens_per_s"] / hf["tokens_per_s"])
  assert row["ours_over_hf_fastest"] == min(hf["step_times_s"]) / min(ours["step_times_s"])
  lo, hi = row["ours_over_hf_paired_quartiles"]
  assert lo <= row["ours_over_hf_paired"] <= hi
  assert math.isclose(ours["flops_per_token"], perf.flops_per_token(MICRO, 32))
  assert positive_finite(ours["memory_compiled"]["total"])
  parts = ours["breakdown"]
  for key in ("forward_s", "forward_backward_s", "optimizer_s", "output_layer_forward_s",
              "output_layer_forward_backward_s", "output_layer_flop_share"):
    assert positive_finite(parts[key]), key


def test_pipelines_are_compared_with_the_step(result):
  p = result["pipeline"]
  assert positive_finite(p["lm"]["tokens_per_s"]) and positive_finite(p["task"]["tokens_per_s"])
  assert p["task"]["examples"] > 0 and p["task"]["seq_len"] <= 32
  consumed = p["consumption_tokens_per_s"]["micro"]
  assert math.isclose(p["lm"]["over_consumption"]["micro"], p["lm"]["tokens_per_s"] / consumed)
  assert math.isclose(p["task"]["over_consumption"]["micro"], p["task"]["tokens_per_s"] / consumed)


def test_tokenizers_on_the_same_lines(result):
  t = result["tokenizer"]
  assert t["lines"] == 200
  assert t["hf"]["vocab_size"] == 40478  # the real vocabulary, not transformers 5's silent 1-token default
  for side in (t["ours"], t["hf"]):
    assert positive_finite(side["tokens_per_s"]) and side["tokens"] > 200
  assert 0.5 < t["identical_lines_fraction"] <= 1.0
  assert math.isclose(t["ours_over_hf"], t["ours"]["tokens_per_s"] / t["hf"]["tokens_per_s"])


def test_inference(result):
  c, g = result["inference"]["classify"], result["inference"]["generate"]
  assert positive_finite(c["examples_per_s"]) and positive_finite(g["tokens_per_s"])
  assert g["new_tokens"] == 4 and g["batch"] == 2


def test_report_table(result):
  text = bench.format_report(result)
  assert "| micro | gpt1_jax |" in text and "| micro | HF torch |" in text
  assert f"**{result['train'][0]['ours_over_hf']:.2f}x**" in text


def test_speed_ratios_pair_rounds_and_compare_fastest_steps():
  # Round 2 caught a load burst on our side only; round 3 on both.
  ours = [1.0, 3.0, 2.0, 1.1]
  hf = [1.5, 1.6, 3.0, 1.5]
  r = bench.speed_ratios(ours, hf)
  assert math.isclose(r["ours_over_hf"], 1.55 / 1.55)  # medians: the burst drags ours to parity
  per_round = sorted([1.5, 1.6 / 3.0, 1.5, 1.5 / 1.1])
  assert math.isclose(r["ours_over_hf_paired"], (per_round[1] + per_round[2]) / 2)
  assert r["ours_over_hf_paired_quartiles"][0] <= r["ours_over_hf_paired"] <= r["ours_over_hf_paired_quartiles"][1]
  assert math.isclose(r["ours_over_hf_fastest"], 1.5 / 1.0)
  with pytest.raises(ValueError, match="same, non-zero length"):
    bench.speed_ratios([1.0], [1.0, 2.0])


def test_cpu_shapes_state_their_reductions():
  tiny, gpt1 = bench.make_shapes("both", on_cpu=True, layers_cpu=2, batch=0, dtype="float32", attention="xla",
                                 vocab_pad=0)
  demo = load_config("pretrain", "tiny")  # the demo's model, whatever its current size
  assert (tiny.batch, tiny.seq_len) == (demo.train.batch_size, demo.model.n_ctx) == (32, 64)
  assert (tiny.model.n_embd, tiny.model.n_layer, tiny.model.resid_pdrop) == (demo.model.n_embd, demo.model.n_layer,
                                                                             demo.model.resid_pdrop)
  assert (gpt1.model.n_layer, gpt1.model.n_embd, gpt1.model.n_head, gpt1.seq_len) == (2, 768, 12, 512)
  assert "2 of its 12 blocks" in gpt1.describe()
  (full,) = bench.make_shapes("gpt1", on_cpu=False, layers_cpu=2, batch=0, dtype="bfloat16", attention="cudnn",
                              vocab_pad=0)
  assert (full.model.n_layer, full.model.dtype, full.model.attention, full.model.attn_pdrop) == (12, "bfloat16",
                                                                                                 "cudnn", 0.0)


# ------------------------------------------------------------------------------------------
# The package: python -m gpt1_jax.bench --suite=train needs neither TensorFlow nor torch.

REPO = pathlib.Path(__file__).resolve().parents[1]
_LOADED = """
import json, runpy, sys
sys.argv = ["gpt1_jax.bench"] + {args!r}
try:
  runpy.run_module("gpt1_jax.bench", run_name="__main__", alter_sys=True)
except SystemExit as e:
  assert not e.code, e.code
heavy = {{"tensorflow", "tensorflow_datasets", "spacy", "ftfy", "torch", "transformers"}}
print(json.dumps(sorted(heavy & {{m.split(".")[0] for m in sys.modules}})))
"""


def _cpu_env(**extra):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", **extra)
  return env


def test_the_train_suite_imports_neither_tensorflow_nor_torch(tmp_path):
  args = [
      "--suite=train", "--shape=tiny", "--steps=1", "--warmup=1", "--hf=False", "--breakdown=False",
      f"--out={tmp_path / 'bench.json'}"
  ]
  r = subprocess.run([sys.executable, "-c", _LOADED.format(args=args)], cwd=REPO, env=_cpu_env(), capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.loads(r.stdout.splitlines()[-1]) == []
  assert json.loads((tmp_path / "bench.json").read_text())["train"][0]["ours"]["tokens_per_s"] > 0


def test_the_cpu_suites_keep_their_public_names():
  # demo.py and transfer.py read configs through the package; tests and scripts use these.
  for name in ("REPO", "load_config", "Options", "Shape", "run", "write_json", "format_report", "speed_ratios",
               "make_shapes", "prepare_ours"):
    assert hasattr(bench, name), name
  assert not hasattr(bench, "train_ours") and not hasattr(bench, "train_hf")  # dead code, removed
  assert bench.load_config("pretrain", "tiny").model.n_embd == 128


# ------------------------------------------------------------------------------------------
# The GPU check (issue 18, item 2), at tiny shapes on CPU, as on an accelerator image.

from gpt1_jax.bench import correctness, gpu_check, pretraining, profile, speed  # noqa: E402

# As on the target image: `import x` fails for these (torch and transformers are there).
_NOT_ON_THE_IMAGE = """\
import sys
for name in ("tensorflow", "tensorflow_datasets", "spacy", "ftfy"):
  sys.modules[name] = None
"""
QUICK_ROWS = {
    "logits_bf16_vs_f32", "attention_dot_product", "attention_cudnn", "pretrain_float32", "pretrain_bfloat16",
    "speed_b4_xla", "speed_b4_cudnn", "speed_b4_xla_no_attn_dropout", "speed_b4_xla_scan", "speed_b2_xla",
    "speed_b4_cudnn_scan", "speed_b4_xla_remat", "speed_b4_dot_product", "hf_b4_eager", "hf_b4_compile", "profile"
}
GPU_ONLY = {"attention_cudnn", "speed_b4_cudnn", "speed_b4_cudnn_scan"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  d = tmp_path_factory.mktemp("gpu_check")
  (d / "site").mkdir()
  (d / "site" / "sitecustomize.py").write_text(_NOT_ON_THE_IMAGE)
  r = subprocess.run([
      sys.executable, "-m", "gpt1_jax.bench", "--suite=gpu", "--quick", f"--out={d}/gpu_check.json",
      f"--work_dir={d}/work", "--steps=3", "--warmup=1", "--pretrain_steps=24", "--budget=1200"
  ], cwd=REPO, env=_cpu_env(PYTHONPATH=str(d / "site")), capture_output=True, text=True, timeout=1800)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
  with open(d / "gpu_check.json") as f:
    result = json.load(f, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
  return result, (d / "gpu_check.md").read_text(), r


@pytest.mark.slow
def test_gpu_check_quick_runs_every_row_and_the_correctness_rows_pass(quick):
  result, _, _ = quick
  rows = {r["name"]: r for r in result["rows"]}
  assert set(rows) == QUICK_ROWS and len(result["rows"]) == len(QUICK_ROWS)
  for name in GPU_ONLY:
    assert rows[name]["status"] == "skipped" and rows[name]["note"] == gpu_check.NEEDS_GPU
  for name in ("logits_bf16_vs_f32", "attention_dot_product", "pretrain_float32", "pretrain_bfloat16"):
    row = rows[name]
    assert row["status"] == "pass", row
    assert 0 <= row["value"] <= row["tolerance"] and row["why_tolerance"]
  assert rows["logits_bf16_vs_f32"]["rel_rms"] > 0  # bf16 really ran: not the f32 result twice
  dot = rows["attention_dot_product"]["dtypes"]
  assert set(dot) == {"float32", "bfloat16"} and all(c["ok"] for d in dot.values() for c in d["checks"].values())
  for name in ("pretrain_float32", "pretrain_bfloat16"):
    row = rows[name]
    # The same run on CPU in a subprocess, logged at the same steps; the loss fell.
    assert set(row["curve"]["train"]) == set(row["cpu_curve"]["train"]) and len(row["curve"]["train"]) >= 3
    assert row["loss_drop"] >= row["min_drop"] and row["eval_loss"] < row["first_train_loss"]
  assert result["summary"]["correctness_fail"] == [] and result["summary"]["errors"] == []
  assert result["wall_s"] < result["settings"]["budget_s"]


@pytest.mark.slow
def test_gpu_check_quick_speed_rows_report_consistent_figures(quick):
  result, _, _ = quick
  rows = {r["name"]: r for r in result["rows"]}
  peak = result["peak"]["measured_flops"]
  assert positive_finite(peak) and peak >= result["peak"]["start"]["measured_matmul_flops"]
  for name, row in rows.items():
    if row["group"] != "speed" or name in GPU_ONLY:
      continue
    assert row["status"] == "ok", row
    assert math.isclose(row["tokens_per_s"], row["batch"] * row["seq_len"] / row["step_s"])
    assert math.isclose(row["mfu_measured_peak"], row["achieved_flops"] / peak)
    if name.startswith("speed_"):
      assert positive_finite(row["memory_compiled"]["total"])
      assert row["params"] == speed.speed_model(True).num_params()
      assert "bfloat16" in row["description"] and "T=64" in row["description"]
    else:
      assert row["autocast_bf16"] and row["torch_compile"] == name.endswith("compile") and row["tied_lm_head"]
      assert row["params"] == speed.speed_model(True).num_params()  # the same model on both sides
  ratios = result["summary"]["ours_over_hf_tokens_per_s"]
  key = "speed_b4_xla / hf_b4_eager"
  assert math.isclose(ratios[key], rows["speed_b4_xla"]["tokens_per_s"] / rows["hf_b4_eager"]["tokens_per_s"])
  assert "speed_b4_xla / hf_b4_compile" in ratios


@pytest.mark.slow
def test_gpu_check_quick_profiles_the_fastest_row_and_writes_the_tables(quick):
  result, md, _ = quick
  prof = next(r for r in result["rows"] if r["name"] == "profile")
  assert prof["status"] == "ok" and prof["config"] == result["summary"]["fastest"]["row"]
  ops = prof["top_ops"]
  assert ops and all(o["ms_per_step"] > 0 for o in ops) and sum(o["share"] for o in ops) <= 1 + 1e-9
  assert [o["ms_per_step"] for o in ops] == sorted((o["ms_per_step"] for o in ops), reverse=True)
  assert "matmul" in prof["by_category_ms_per_step"]
  assert positive_finite(prof["xla_cost"]["flops"])
  for section in ("## Correctness", "## Speed", "## Profile", gpu_check.NEEDS_GPU, "Fastest of ours"):
    assert section in md, section
  for row in result["rows"]:
    assert row["title"] in md, row["title"]


def test_gpu_check_skips_what_the_budget_no_longer_allows():
  result = gpu_check.run_check(
      gpu_check.GpuOptions(quick=True, budget_s=0.0, rows=("logits_bf16_vs_f32", "speed_b4_xla")))
  assert [r["status"] for r in result["rows"]] == ["skipped", "skipped"]
  assert all(r["note"].startswith("skipped: time budget") for r in result["rows"])
  assert result["summary"]["skipped"] == ["logits_bf16_vs_f32", "speed_b4_xla"]


def test_gpu_check_records_a_failing_row_and_goes_on(monkeypatch, tmp_path):

  def broken(*a, **k):
    raise RuntimeError("a kernel fell over")

  monkeypatch.setattr(correctness, "logits_bf16_vs_f32", broken)
  result = gpu_check.run_check(
      gpu_check.GpuOptions(quick=True, steps=2, warmup=1, work_dir=str(tmp_path),
                           rows=("logits_bf16_vs_f32", "attention_cudnn", "speed_b2_xla")))
  rows = {r["name"]: r for r in result["rows"]}
  assert rows["logits_bf16_vs_f32"]["status"] == "error" and "a kernel fell over" in rows["logits_bf16_vs_f32"]["error"]
  assert rows["attention_cudnn"]["note"] == gpu_check.NEEDS_GPU
  assert rows["speed_b2_xla"]["status"] == "ok" and rows["speed_b2_xla"]["tokens_per_s"] > 0
  assert result["summary"]["correctness_fail"] == ["logits_bf16_vs_f32"]
  md_path = gpu_check.write_outputs(result, str(tmp_path / "out" / "check.json"))
  assert "a kernel fell over" in open(md_path).read() and (tmp_path / "out" / "check.json").exists()


def test_compare_measures_errors_in_units_of_the_references_spread():
  ref = np.array([[[0.0, 2.0, 4.0, 6.0]], [[1.0, 1.0, 1.0, 9.0]]], np.float32)  # [2, 1, 4]
  x = ref.copy()
  x[0, 0, 3] += 0.5
  stats = correctness.compare(x, ref)
  std = ref.std()
  assert math.isclose(stats["rel_rms"], math.sqrt(0.25 / 8) / std, rel_tol=1e-5)
  assert math.isclose(stats["max_abs_over_std"], 0.5 / std, rel_tol=1e-5)
  assert stats["top1_agreement"] == 1.0
  masked = correctness.compare(x, ref, valid=np.array([[0.0], [1.0]]))  # the perturbed row left out
  assert masked["rel_rms"] == 0.0 and masked["kl_nats"] == pytest.approx(0.0, abs=1e-7)


def test_the_shipped_store_is_what_prepare_writes_from_the_shipped_reviews(tmp_path):
  manifest = pretraining.write_store(str(tmp_path / "store"))
  shipped = json.loads((pathlib.Path(pretraining.SHIPPED_STORE) / "manifest.json").read_text())
  for key in ("format_version", "tokenizer_fingerprint", "vocab_size", "start_id", "doc_split", "valid_fraction"):
    assert shipped[key] == manifest[key], key
  assert shipped["splits"] == manifest["splits"], ("regenerate it: python -c 'from gpt1_jax.bench import "
                                                   "pretraining as p; p.write_store(p.SHIPPED_STORE)'")
  for split in manifest["splits"].values():
    for shard in split["shards"]:
      for name in (shard["file"], shard["index"]):
        assert (tmp_path / "store" / name).read_bytes() == (pathlib.Path(pretraining.SHIPPED_STORE) / name).read_bytes()


def test_profile_summary_counts_each_kernel_once_from_the_device_streams(tmp_path):
  # A GPU-shaped trace: kernels on a compute stream, the same ops again on a derived "XLA Ops"
  # line of the device, and host-side launch events that must not count.
  meta = [{
      "ph": "M",
      "name": "process_name",
      "pid": 1,
      "args": {
          "name": "/device:GPU:0"
      }
  }, {
      "ph": "M",
      "name": "thread_name",
      "pid": 1,
      "tid": 7,
      "args": {
          "name": "Stream #7(Compute)"
      }
  }, {
      "ph": "M",
      "name": "thread_name",
      "pid": 1,
      "tid": 9,
      "args": {
          "name": "XLA Ops"
      }
  }, {
      "ph": "M",
      "name": "process_name",
      "pid": 2,
      "args": {
          "name": "/host:CPU"
      }
  }]
  kernels = [("sm90_xmma_gemm_bf16", "custom-call.3", 600.0), ("loop_add_fusion", "loop_add_fusion.1", 100.0),
             ("cudnn_generated_fort_native_sdpa", "custom-call.9", 300.0)]
  events = list(meta)
  for step in range(2):
    for name, op, dur in kernels:
      args = {"hlo_op": op, "hlo_module": "jit_train_step"}
      events.append({"ph": "X", "pid": 1, "tid": 7, "ts": step, "dur": dur, "name": name, "args": args})
      events.append({"ph": "X", "pid": 1, "tid": 9, "ts": step, "dur": dur, "name": op, "args": args})
      events.append({"ph": "X", "pid": 2, "tid": 1, "ts": step, "dur": 5.0, "name": "cuLaunchKernel", "args": args})
  run = tmp_path / "plugins" / "profile" / "run"
  run.mkdir(parents=True)
  with gzip.open(run / "host.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  s = profile.summarize(str(tmp_path), steps=2, step_s=1.2e-3)
  assert [o["op"] for o in s["top_ops"]] == ["custom-call.3", "custom-call.9", "loop_add_fusion.1"]
  assert [o["ms_per_step"] for o in s["top_ops"]] == [0.6, 0.3, 0.1] and s["busy_ms_per_step"] == 1.0
  assert [o["category"] for o in s["top_ops"]
         ] == ["matmul", "fused attention (cuDNN)", "fusion (elementwise, reductions)"]
  assert s["top_ops"][0]["kernel"] == "sm90_xmma_gemm_bf16" and s["top_ops"][0]["calls_per_step"] == 1
  assert math.isclose(s["busy_share_of_step"], 1.0 / 1.2) and "Stream #7" in s["source"]
