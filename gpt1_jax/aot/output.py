"""``aot.json`` / ``aot.md`` and ``sweep.json`` / ``sweep.md``: what a compile or a sweep found."""

from __future__ import annotations

import json
import os

from gpt1_jax import perf
from gpt1_jax.aot.compile import ESTIMATE_NOTE


def _write(path: str, text: str):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _gib(n) -> str:
  return perf.fmt_bytes(n) if n is not None else "-"


def mesh_str(mesh: dict) -> str:
  return " x ".join(f"{k}={v}" for k, v in mesh.items())


def write_report(r: dict, out: str) -> list[str]:
  os.makedirs(out, exist_ok=True)
  _write(os.path.join(out, "aot.json"), json.dumps(r, indent=1) + "\n")
  _write(os.path.join(out, "aot.md"), report_markdown(r))
  return [os.path.join(out, "aot.json"), os.path.join(out, "aot.md")]


def report_markdown(r: dict) -> str:
  m, e, cfg = r["memory_per_chip"], r["estimate"], r["config"]
  lines = [
      f"# GPT-1 train step compiled for {r['topology']} x {r['num_slices']} slice(s)",
      "",
      f"{r['num_chips']} chips ({r['device_kind']}, libtpu topology `{r['topology_name']}`), mesh "
      f"{mesh_str(r['mesh'])}; batch {cfg['batch_size']} x {cfg['seq_len']}, {cfg['model']['dtype']}, remat "
      f"{cfg['model']['remat']}, scan_layers {cfg['model']['scan_layers']}, grad_accum_steps "
      f"{cfg['grad_accum_steps']}. Compiled in {r['compile_s']:.0f} s.",
      "",
      "| memory per chip | bytes |",
      "|---|---|",
      *(f"| {k} | {_gib(m.get(k))} |" for k in ("arguments", "outputs", "aliased", "temporaries", "total")),
      f"| HBM available ({r['hbm_source']}) | {_gib(r['hbm_per_chip_bytes'])} |",
      "",
      f"**Fits: {'yes' if r['fits'] else 'no'}.**",
      "",
      f"FLOPs per step: compiler {r['compiler_flops_per_step']:.3e} (XLA's cost analysis, all chips, loops "
      f"counted fully), model {r['model_flops_per_step']:.3e} (6N + attention, the global batch): ratio "
      f"{r['compiler_flops_per_step'] / max(r['model_flops_per_step'], 1):.3f}.",
      "",
      "| collective | over | count per step | bytes sent per chip per step |",
      "|---|---|---|---|",
      *(f"| {c['kind']} | {c['over']} | {c['count']} | {_gib(c['bytes'])} |" for c in r["collectives"]),
      "",
      "Where they come from (the JAX operation each serves, layers folded into N; most bytes first):",
      "",
      *(f"- {c['kind']} ({c['over']}): " + "; ".join(f"`{o['op']}` x{o['count']}, {_gib(o['bytes'])}"
                                                     for o in c.get("top_ops", [])[:3])
        for c in r["collectives"]),
      "",
      f"**Estimate** (not measured): step {e['step_s'] * 1e3:.1f} ms, {e['tokens_per_s']:,.0f} tokens/s, "
      f"MFU {e['mfu']:.1%}, bound by {e['bound']} (compute {e['times_s']['compute'] * 1e3:.1f} ms, HBM "
      f"{e['times_s']['hbm'] * 1e3:.1f} ms, ICI {e['times_s']['ici'] * 1e3:.1f} ms, DCN "
      f"{e['times_s']['dcn'] * 1e3:.1f} ms). {ESTIMATE_NOTE[0].upper() + ESTIMATE_NOTE[1:]}. Chip figures: "
      f"{r['chip_figures']['source']}.",
  ]
  if r.get("eval"):
    lines += [
        "", f"Eval step (batch {r['eval']['batch_size']}): {_gib(r['eval']['memory_per_chip'].get('total'))} "
        f"per chip, compiled in {r['eval']['compile_s']:.0f} s."
    ]
  return "\n".join(lines) + "\n"


def write_sweep(rows: list, best_flags: list, meta: dict, out: str) -> list[str]:
  os.makedirs(out, exist_ok=True)
  _write(os.path.join(out, "sweep.json"),
         json.dumps({
             **meta, "candidates": rows,
             "best_flags": best_flags
         }, indent=1) + "\n")
  lines = [
      f"# Sweep: {meta['config']} on {meta['topology']} x {meta['num_slices']} slice(s)", "",
      f"{len(rows)} candidates, {sum(r['status'] == 'compiled' for r in rows)} compiled in "
      f"{meta['elapsed_s']:.0f} s (budget {meta['budget_s']} s). Tokens/s and MFU are an {ESTIMATE_NOTE}.", "",
      "| mesh (data x fsdp x tensor) | grad_accum | remat | scan | status | fits | memory/chip | est. tokens/s "
      "| est. MFU | bound |", "|---|---|---|---|---|---|---|---|---|---|"
  ]
  for r in rows:
    c = r["candidate"]
    lines.append(f"| {c['data']} x {c['fsdp']} x {c['tensor']} | {c['grad_accum_steps']} | {c['remat']} | "
                 f"{c['scan_layers']} | {r['status']} | {r.get('fits', '-')} | {_gib(r.get('memory_total'))} | "
                 f"{r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['bound']} |" if r.get("tokens_per_s") else
                 f"| {c['data']} x {c['fsdp']} x {c['tensor']} | {c['grad_accum_steps']} | {c['remat']} | "
                 f"{c['scan_layers']} | {r['status']} | {r.get('fits', '-')} | {_gib(r.get('memory_total'))} | - | - "
                 f"| {r.get('reason', '')[:120]} |")
  lines += ["", "Best: " + (" ".join(best_flags) if best_flags else "none fits")]
  _write(os.path.join(out, "sweep.md"), "\n".join(lines) + "\n")
  return [os.path.join(out, "sweep.json"), os.path.join(out, "sweep.md")]
