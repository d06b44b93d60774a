"""The command line, ``python -m gpt1_jax.aot`` (usage: the package docstring).

Flags are defined by ``define_flags()`` only when run as a program, so importing this module never
clashes with another entry point's flags.
"""

from __future__ import annotations

import logging
import os

from gpt1_jax import errors
from gpt1_jax.aot import output, sweep, topology
from gpt1_jax.aot.compile import compile_for
from gpt1_jax.report import quiet_library_logs


def define_flags():
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file(
      "config", None, "Config file and variant, e.g. configs/pretrain.py:gpt1, with "
      "--config.KEY=VALUE overrides as for gpt1_jax.main.", lock_config=True)
  flags.DEFINE_string("topology", None, "Cloud TPU accelerator type: v4-8 ... v4-4096, v5litepod-N (v5e-N), v5p-N, "
                      "v6e-N.")
  flags.DEFINE_integer(
      "num_slices", 1, "Slices over DCN (multi-slice); must equal the product of mesh.dcn_* when "
      "those are set, else the slices are data-parallel (mesh.dcn_data).")
  flags.DEFINE_string("out", None, "Directory for aot.json and aot.md (sweep.json and sweep.md with --sweep).")
  flags.DEFINE_bool("eval", True, "Compile the eval step too (when the job evaluates).")
  flags.DEFINE_bool("save_hlo", False, "Also write the compiled train step's optimised HLO to OUT/train_step.hlo.")
  flags.DEFINE_bool(
      "sweep", False, "Compile the candidate meshes, micro-batches, remat and scan settings for the "
      "config's global batch and rank them.")
  flags.DEFINE_integer("budget_s", 1800, "--sweep: stop starting new compiles after this many seconds.")
  flags.DEFINE_integer("workers", 0, "--sweep: parallel compiles (0: as many as cores and memory allow).")
  flags.mark_flags_as_required(["config", "topology", "out"])


def run(fv, argv):
  errors.no_arguments(argv)
  quiet_library_logs()
  s = topology.parse(fv.topology)  # a bad name is refused before anything is compiled
  if fv.sweep:
    result = sweep.run_sweep(
        fv.config, fv.topology, fv.num_slices, budget_s=fv.budget_s, workers=fv.workers,
        config_label=fv["config"].config_filename if hasattr(fv["config"], "config_filename") else "config")
    paths = output.write_sweep(result["rows"], result["best_flags"], result["meta"], fv.out)
    print(open(paths[1]).read())
    if not result["best_flags"]:
      errors.exit_with(f"no candidate fits in HBM on {topology.describe(s)}: see {paths[1]}")
    return
  logging.info("compiling for %s x %d slice(s)", topology.describe(s), fv.num_slices)
  os.makedirs(fv.out, exist_ok=True)
  r = compile_for(fv.config, fv.topology, fv.num_slices, with_eval=fv.eval,
                  hlo_path=os.path.join(fv.out, "train_step.hlo") if fv.save_hlo else None)
  paths = output.write_report(r, fv.out)
  print(open(paths[1]).read())
  if not r["fits"]:
    errors.exit_with(f"the train step needs {r['memory_per_chip']['total'] / 2**30:.2f} GiB per chip, more than "
                     f"the {r['hbm_per_chip_bytes'] / 2**30:.2f} GiB of HBM on {topology.describe(s)}: "
                     f"see {paths[1]}")
