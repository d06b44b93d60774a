"""The benchmark runs end to end at a micro shape and reports every figure, positive and finite.

Speed is never asserted: the numbers depend on the machine and its load. What is pinned
down is that each suite measures what it says (same shape for both implementations, the
ratios are the quotients of the reported throughputs) and that the JSON is complete and
strict (no NaN), so a real run cannot fail at its end or write a file nobody can read.
"""

import json
import math

import pytest

from conftest import load_config
from gpt1_jax import bench, perf
from gpt1_jax.model import ModelConfig

MICRO = ModelConfig(vocab_size=512, n_ctx=32, n_embd=64, n_head=2, n_layer=1)


def positive_finite(x):
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  opts = bench.Options(
      shapes=(bench.Shape("micro", MICRO, 4, 32),), steps=2, warmup=1, peak_n=256, tokenizer_lines=200,
      lm_batch=4, lm_seq_len=32, pipeline_seconds=0.1, task_batch=8, task_max_len=32, inference_model=MICRO,
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
  assert (tiny.batch, tiny.seq_len) == (demo.train.batch_size, demo.model.n_ctx) == (8, 64)
  assert (tiny.model.n_embd, tiny.model.n_layer, tiny.model.resid_pdrop) == (
      demo.model.n_embd, demo.model.n_layer, demo.model.resid_pdrop)
  assert (gpt1.model.n_layer, gpt1.model.n_embd, gpt1.model.n_head, gpt1.seq_len) == (2, 768, 12, 512)
  assert "2 of its 12 blocks" in gpt1.describe()
  (full,) = bench.make_shapes("gpt1", on_cpu=False, layers_cpu=2, batch=0, dtype="bfloat16", attention="cudnn",
                              vocab_pad=0)
  assert (full.model.n_layer, full.model.dtype, full.model.attention, full.model.attn_pdrop) == (
      12, "bfloat16", "cudnn", 0.0)
