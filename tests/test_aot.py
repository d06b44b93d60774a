"""``gpt1_jax.aot``: the train step compiled for TPU slices by the real XLA:TPU compiler, on CPU.

Needs libtpu (the ``aot`` extra, which the test command installs); every test here is skipped
with the reason where it is missing.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, load_config, micro_model

pytest.importorskip("libtpu", reason="the aot extra (libtpu) is not installed: pip install -e '.[aot]'")

from gpt1_jax import perf  # noqa: E402
from gpt1_jax.aot import compile as aot_compile  # noqa: E402
from gpt1_jax.aot import hlo, sweep, topology  # noqa: E402


def micro(batch=16, **mesh):
  """The micro GPT-1 (2 x 32 wide, the real 40k vocabulary) at ``batch`` x 32, full softmax."""
  c = micro_model(load_config("pretrain", "tiny"))
  c.train.update(batch_size=batch, softmax_samples=0)
  c.eval.update(every_steps=0)
  c.mesh.update(data=1, fsdp=1, tensor=1)
  c.mesh.update(**mesh)
  return c


@pytest.fixture(scope="module")
def reports():
  """One compile per mesh of v5e-8, reused by the tests that compare them."""
  out = {}
  for name, mesh in {"data": dict(data=8), "fsdp": dict(fsdp=8), "tensor": dict(data=4, tensor=2)}.items():
    out[name] = aot_compile.compile_for(micro(**mesh), "v5e-8")
  return out


# ----------------------------------------------------------------------------
# Accelerator types.


@pytest.mark.parametrize("name,topology_name,chips", [("v5e-8", "v5e:2x4", 8), ("v5litepod-256", "v5e:16x16", 256),
                                                      ("v4-8", "v4:2x2x1", 4), ("v4-4096", "v4:8x16x16", 2048),
                                                      ("v5p-8", "v5p:2x2x1", 4), ("v6e-8", "v6e:2x4", 8),
                                                      ("V5E-1", "v5e:1x1", 1)])
def test_accelerator_types_map_to_libtpu_topologies(name, topology_name, chips):
  s = topology.parse(name)
  assert (s.topology_name, s.chips) == (topology_name, chips)


@pytest.mark.parametrize("name", ["v5e-7", "v4-4", "v3-8", "tpu", "v6e-512"])
def test_unknown_accelerator_types_list_the_valid_ones(name):
  with pytest.raises(ValueError, match=r"valid: v4-\{8,"):
    topology.parse(name)


def test_megacore_chips_are_one_device_each():
  # libtpu's default describes a v4 chip as two devices; JAX on the hardware sees one per chip.
  assert len(aot_compile.topology_devices(topology.parse("v4-8"), 1)) == 4
  assert len(aot_compile.topology_devices(topology.parse("v5e-16"), 2)) == 32


def test_hbm_available_is_the_compilers_own_figure():
  assert aot_compile.hbm_available("v5e-8") == int(15.75 * 2**30)
  assert topology.parse("v5e-8").hosts == 1 and topology.parse("v5e-256").hosts == 64
  assert topology.parse("v4-32").hosts == 4


# ----------------------------------------------------------------------------
# Reading the compiled HLO.

HLO = """HloModule m, num_partitions=8

%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  %x = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %w = f32[8,8]{1,0} constant({...})
  %d = f32[4,8]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %ag = f32[4,64]{1,0} all-gather(%d), channel_id=1, replica_groups=[1,8]<=[8], dimensions={1}
  %ar = f32[4,8]{1,0} all-reduce(%d), channel_id=2, replica_groups=[4,2]<=[2,4]T(1,0), to_apply=%add
  ROOT %t = (s32[], f32[4,8]{1,0}) tuple(%i, %ar)
}

%cond (p: (s32[], f32[4,8])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

ENTRY %main (a: f32[4,8]) -> f32[4,8] {
  %a = f32[4,8]{1,0} parameter(0)
  %w = (s32[], f32[4,8]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"12"}}
  %cp = f32[4,8]{1,0} collective-permute(%a), channel_id=3, source_target_pairs={{0,4},{4,0}}
  ROOT %r = f32[4,8]{1,0} get-tuple-element(%w), index=1
}
"""


def test_loop_bodies_count_once_per_trip():
  a = hlo.analyse(HLO, slice_of=[0, 0, 0, 0, 1, 1, 1, 1])
  rows = {(r["kind"], r["over"]): r for r in a.collectives}
  assert rows[("all-gather", "dcn")]["count"] == 12  # one group of all 8 spans both slices
  assert rows[("all-gather", "dcn")]["bytes"] == 12 * 4 * 8 * 4 * 7  # operand x (n - 1) per trip
  # [4,2]<=[2,4]T(1,0): groups {0,4},{1,5},...: each pairs a device of slice 0 with one of slice 1.
  assert rows[("all-reduce", "dcn")]["count"] == 12
  assert rows[("collective-permute", "dcn")]["count"] == 1
  # The dots of a loop body, per iteration and once (what XLA's cost analysis counts of them).
  full, once, unknown = hlo.loop_matmul_flops(HLO)
  assert (full, once, unknown) == (12 * 2 * 4 * 8 * 8, 12 * 2 * 4 * 8 * 8, [])  # known_trip_count: XLA counts it
  # A loop whose count only its condition says (i < 12, i from 0: a scan over layers) XLA counts once.
  scan = HLO.replace(', backend_config={"known_trip_count":{"n":"12"}}', "").replace(
      "%cond (p: (s32[], f32[4,8])) -> pred[] {\n  ROOT %c = pred[] constant(true)",
      "%cond (p: (s32[], f32[4,8])) -> pred[] {\n  %p = (s32[], f32[4,8]{1,0}) parameter(0)\n"
      "  %i = s32[] get-tuple-element(%p), index=0\n  %n = s32[] constant(12)\n"
      "  ROOT %c = pred[] compare(%i, %n), direction=LT")
  assert hlo.loop_matmul_flops(scan) == (12 * 2 * 4 * 8 * 8, 2 * 4 * 8 * 8, [])
  assert hlo.analyse(scan, slice_of=[0] * 8).collectives[0]["count"] == 12


def test_mesh_replica_groups_and_megascale_transfers():
  ins = hlo.Instr("x", "f32[2]", "all-gather", [], ", replica_groups=mesh['axis_0'=4,'axis_1'=1,'axis_2'=2] "
                  "{'axis_0'}, dimensions={0}")
  assert hlo._groups(ins, 8) == [[0, 2, 4, 6], [1, 3, 5, 7]]
  ins = hlo.Instr("x", "f32[2]", "all-gather", [], ", replica_groups=mesh['axis_0'=2,'axis_1'=4], dimensions={0}")
  assert hlo._groups(ins, 8) == [list(range(8))]
  # A multi-slice program is compiled per slice; its DCN collectives are Megascale host transfers,
  # repeated as send/recv pairs under one rendezvous name.
  text = """HloModule m, num_partitions=4

ENTRY %main (a: f32[256]) -> f32[256] {
  %a = f32[256]{0} parameter(0)
  %t = token[] after-all()
  %s = (f32[256]{0}, u32[], token[]) send(%a, %t), channel_id=5, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_host_transfer_rendezvous="all-reduce.1_0",_xla_megascale_reduce_operation="SUM",_xla_megascale_target="{1,2}x{0:3}",_xla_megascale_transfer_type="ALL_REDUCE"}
  %s2 = (f32[256]{0}, u32[], token[]) send(%a, %t), channel_id=6, is_host_transfer=true, frontend_attributes={_xla_host_transfer_rendezvous="all-reduce.1_0",_xla_megascale_transfer_type="ALL_REDUCE"}
  ROOT %r = f32[256]{0} copy(%a)
}
"""
  (row,) = hlo.analyse(text, [0, 0, 0, 0], num_slices=2).collectives
  assert (row["kind"], row["over"], row["count"], row["bytes"]) == ("all-reduce", "dcn", 1, 1024)


def test_iota_replica_groups():
  ins = hlo.Instr("x", "f32[2]", "all-reduce", [], ", replica_groups=[4,2]<=[2,4]T(1,0), to_apply=%a")
  assert hlo._groups(ins, 8) == [[0, 4], [1, 5], [2, 6], [3, 7]]
  ins = hlo.Instr("x", "f32[2]", "all-reduce", [], ", replica_groups={{0,1},{2,3}}, to_apply=%a")
  assert hlo._groups(ins, 4) == [[0, 1], [2, 3]]


# ----------------------------------------------------------------------------
# The micro GPT-1 on v5e-8.


def kinds(r, over="ici"):
  return {c["kind"] for c in r["collectives"] if c["over"] == over and c["count"]}


def test_a_single_chip_runs_no_collective():
  r = aot_compile.compile_for(micro(), "v5e-1")
  assert r["num_chips"] == 1 and r["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
  assert r["collectives"] == [] and r["fits"]


def test_collectives_follow_the_mesh(reports):
  assert "all-reduce" in kinds(reports["data"])  # gradients, replicated state
  assert "all-gather" not in kinds(reports["data"])  # nothing is sharded but the batch
  assert "all-gather" in kinds(reports["fsdp"])  # parameters gathered before use
  assert "all-reduce" in kinds(reports["tensor"])  # Megatron: the blocks' outputs summed over tensor
  for r in reports.values():
    assert r["mesh"]["data"] * r["mesh"]["fsdp"] * r["mesh"]["tensor"] == 8 and r["num_chips"] == 8
    assert not kinds(r, "dcn")


def test_fsdp_divides_the_state_over_chips(reports):
  data, fsdp = reports["data"]["memory_per_chip"], reports["fsdp"]["memory_per_chip"]
  # Parameters + Adam moments: replicated under data parallelism, 1/8 each under fsdp=8.
  assert fsdp["arguments"] < data["arguments"] / 6


def test_compiler_flops_match_the_model_formula(reports):
  # XLA counts every op (layer norms, softmax, Adam, the masked half of attention scores that the
  # formula counts too); tensor parallelism repeats the replicated ones on every chip of the axis.
  # At 2 x 32 wide that is 6-23% over the formula's matmuls (GPT-1 117M: 10% under, 22 vs 25 TFLOP).
  for r in reports.values():
    assert r["compiler_flops_per_step"] == pytest.approx(r["model_flops_per_step"], rel=0.25)


@pytest.mark.parametrize("scan,accum", [(True, 1), (False, 4), (True, 4)])
def test_loops_count_every_iteration(scan, accum):
  """XLA's cost analysis counts the body of a scan over layers or of gradient accumulation once
  (measured: 1/4 of the FLOPs with 4 micro-batches); the report adds the iterations it missed, so
  the same step written with loops counts what the flat one does."""

  def config(scan_layers=False, grad_accum_steps=1):
    c = micro(batch=32, data=8)
    c.model.update(n_embd=128, n_head=4, n_layer=4, n_ctx=64, scan_layers=scan_layers)
    c.train.update(grad_accum_steps=grad_accum_steps)
    return c

  flat = aot_compile.compile_for(config(), "v5e-8")
  looped = aot_compile.compile_for(config(scan, accum), "v5e-8")
  xla = looped["xla_cost_analysis"]
  assert xla["loop_matmul_flops_added_per_chip"] > 0.1 * xla["flops_per_chip"] and not xla["unknown_trip_counts"]
  assert looped["compiler_flops_per_step"] == pytest.approx(flat["compiler_flops_per_step"], rel=0.03)


def test_two_slices_reduce_over_dcn():
  c = micro(batch=32, fsdp=-1)
  c.mesh.update(dcn_data=2)
  r = aot_compile.compile_for(c, "v5e-16", num_slices=2)
  assert r["num_chips"] == 32 and r["num_slices"] == 2 and r["fits"]
  assert kinds(r, "dcn"), r["collectives"]
  assert "all-gather" in kinds(r, "ici")  # fsdp stays on each slice


def test_num_slices_must_match_the_dcn_axes():
  c = micro(batch=32, fsdp=-1)
  c.mesh.update(dcn_data=2)
  with pytest.raises(ValueError, match=r"--num_slices=4"):
    aot_compile.compile_for(c, "v5e-16", num_slices=4)


def test_heads_over_a_tensor_axis_they_do_not_divide_are_refused_before_compiling():
  c = micro(data=1, tensor=8)
  with pytest.raises(ValueError, match=r"do not divide over the mesh"):
    aot_compile.compile_for(c, "v5e-8")


def test_estimate_is_the_slowest_roofline_term(reports):
  e = reports["fsdp"]["estimate"]
  assert e["step_s"] == max(e["times_s"].values()) and e["bound"] == max(e["times_s"], key=e["times_s"].get)
  assert "estimate" in e["note"]
  chip = topology.CHIPS["v5e"]
  assert e["mfu"] == pytest.approx(reports["fsdp"]["model_flops_per_step"] / (e["step_s"] * 8 * chip.peak_bf16_flops))


def test_sweep_refuses_impossible_shapes_without_compiling():
  from gpt1_jax import config as config_lib
  run = config_lib.resolve(load_config("pretrain", "gpt1"))
  assert "heads" in sweep.refusal(run, sweep.Candidate(1, 1, 8), 1)
  assert "larger train.batch_size" in sweep.refusal(run, sweep.Candidate(1, 128, 2), 1)  # 64 rows, 128 shards
  assert sweep.refusal(run, sweep.Candidate(1, 64, 4), 1) == ""
  assert (8, 1, 1) in sweep.meshes(8) and (1, 2, 4) in sweep.meshes(8) and len(sweep.meshes(8)) == 10


# ----------------------------------------------------------------------------
# The command line.


def run_cli(*args, timeout=900):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "gpt1_jax.aot", *args], capture_output=True, text=True, cwd=REPO,
                        env=env, timeout=timeout)


MICRO_FLAGS = [
    "--config=configs/pretrain.py:tiny", "--config.model.n_ctx=32", "--config.model.n_embd=32",
    "--config.model.n_head=2", "--config.model.n_layer=2", "--config.model.vocab_pad_multiple=8",
    "--config.train.softmax_samples=0", "--config.eval.every_steps=0", "--config.mesh.data=1", "--config.mesh.fsdp=-1"
]


def test_cli_writes_the_report(tmp_path):
  p = run_cli("--topology=v5e-8", *MICRO_FLAGS, "--config.train.batch_size=16", f"--out={tmp_path}")
  assert p.returncode == 0, p.stderr[-3000:]
  r = json.loads((tmp_path / "aot.json").read_text())
  for key in ("topology", "num_slices", "num_chips", "mesh", "hbm_per_chip_bytes", "memory_per_chip", "fits",
              "compiler_flops_per_step", "model_flops_per_step", "collectives", "estimate", "compile_s"):
    assert key in r
  assert r["fits"] and r["mesh"]["fsdp"] == 8 and r["memory_per_chip"]["total"] < r["hbm_per_chip_bytes"]
  assert {"kind", "count", "bytes", "over"} <= set(r["collectives"][0])
  assert {"step_s", "tokens_per_s", "mfu", "bound"} <= set(r["estimate"])
  md = (tmp_path / "aot.md").read_text()
  assert "Estimate** (not measured)" in md and "all-gather" in md
  assert "TPU_ACCELERATOR_TYPE" not in p.stderr and "TPU_WORKER_HOSTNAMES" not in p.stderr


def test_cli_refuses_a_step_that_does_not_fit_with_one_hbm_line(tmp_path):
  p = run_cli("--topology=v5e-8", *MICRO_FLAGS, "--config.train.batch_size=65536", f"--out={tmp_path}")
  assert p.returncode == 1, p.stderr[-3000:]
  errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "HBM" in errors[0] and "15.8 GiB" in errors[0] and "remat" in errors[0], p.stderr
  assert "Traceback" not in p.stderr


def test_cli_refuses_an_unknown_topology_before_compiling(tmp_path):
  p = run_cli("--topology=v5e-12", *MICRO_FLAGS, f"--out={tmp_path}", timeout=300)
  assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith("error: --topology='v5e-12'")
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_gpt1_117m_at_the_papers_batch_compiles_for_v5e_8(tmp_path):
  """The acceptance command: :gpt1 as shipped (float32, vocabulary padded to 128), 64 x 512, fsdp=8."""
  p = run_cli("--topology=v5e-8", "--config=configs/pretrain.py:gpt1", "--config.mesh.data=1", "--config.mesh.fsdp=-1",
              f"--out={tmp_path}", timeout=2400)
  assert p.returncode == 0, p.stderr[-3000:]
  r = json.loads((tmp_path / "aot.json").read_text())
  assert r["fits"] and r["memory_per_chip"]["total"] < r["hbm_per_chip_bytes"]
  assert r["compiler_flops_per_step"] == pytest.approx(r["model_flops_per_step"], rel=0.25)
  assert any(c["kind"] == "all-gather" for c in r["collectives"])
  assert np.isfinite(r["estimate"]["tokens_per_s"]) and perf.fmt_bytes(r["hbm_per_chip_bytes"]) == "15.8 GiB"


@pytest.mark.slow
def test_sweep_ranks_the_meshes_that_fit_and_skips_impossible_ones(tmp_path):
  p = run_cli("--topology=v5e-4", *MICRO_FLAGS, "--config.train.batch_size=16", "--sweep", "--budget_s=1200",
              "--workers=1", f"--out={tmp_path}", timeout=2400)
  assert p.returncode == 0, p.stderr[-3000:]
  r = json.loads((tmp_path / "sweep.json").read_text())
  rows = r["candidates"]
  meshes = {(c["candidate"]["data"], c["candidate"]["fsdp"], c["candidate"]["tensor"]) for c in rows}
  assert set(sweep.meshes(4)) <= meshes
  skipped = [c for c in rows if c["candidate"]["tensor"] == 4]
  assert skipped and all(c["status"] == "skipped" and "heads" in c["reason"] for c in skipped)
  fitting = [c for c in rows if c.get("fits")]
  assert len(fitting) >= 5 and [c["tokens_per_s"] for c in fitting] == sorted(
      (c["tokens_per_s"] for c in fitting), reverse=True)
  best = fitting[0]["candidate"]
  assert r["best_flags"][:3] == [
      f"--config.mesh.data={best['data']}", f"--config.mesh.fsdp={best['fsdp']}",
      f"--config.mesh.tensor={best['tensor']}"
  ]
  assert "Best: --config.mesh.data=" in (tmp_path / "sweep.md").read_text()
