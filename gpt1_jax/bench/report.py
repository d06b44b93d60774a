"""What a run prints and writes: Markdown tables of its figures, and strict JSON (no NaN anywhere).

``format_report`` is the table of the CPU-sized suites (what BENCHMARKS.md quotes);
``format_gpu_report`` that of the GPU check (``gpu_check.py``).
"""

from __future__ import annotations

import json
import math
from typing import Optional

import numpy as np


def si(x: Optional[float], unit: str = "") -> str:
  if x is None or not math.isfinite(x):
    return "-"
  for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= div:
      return f"{x / div:.2f} {prefix}{unit}"
  return f"{x:.3g} {unit}".rstrip()


def pct(x: Optional[float]) -> str:
  return "-" if x is None else f"{100 * x:.1f}%"


def mib(x: Optional[int]) -> str:
  return "-" if x is None else f"{x / 2 ** 20:.0f} MiB"


def format_report(r: dict) -> str:
  """Markdown tables of a run (also what BENCHMARKS.md quotes)."""
  m, v = r["machine"], r["versions"]
  lines = [
      f"# gpt1_jax benchmark, {r['date']}", f"command: `{r['command']}`",
      f"machine: {m['cpu_model']}, {m['cpu_cores']} cores, device {m['device_kind']} ({m['platform']}); "
      f"load average at start {r['load_average_start']}, at end {r['load_average_end']}; transparent hugepages "
      f"{m.get('transparent_hugepage')}; env {m.get('env') or '{}'}",
      "versions: " + ", ".join(f"{k} {x}" for k, x in v.items() if x), ""
  ]
  if "train" in r:
    p = r["peak"]
    lines += [
        f"FLOPs: {r['flop_formula']}",
        f"peak: measured {si(p['measured_matmul_flops'], 'FLOP/s')} at the start ({p['measured_matmul']}); "
        f"MFU below uses each shape's own, larger of before/after its steps" +
        (f", datasheet {si(p['datasheet_flops'], 'FLOP/s')}" if p["datasheet_flops"] else ""), "",
        "| shape | impl | step (median) | fastest step | tokens/s | MFU (measured peak) | memory | ours/HF: "
        "medians, per-round median [quartiles], fastest steps |", "|---|---|---|---|---|---|---|---|"
    ]
    for row in r["train"]:
      o = row["ours"]
      mem = f"{mib(o['memory_compiled'].get('total'))} compiled, {mib(o['memory_rss_delta'])} RSS"
      ratio = "-"
      if "hf" in row:
        lo, hi = row["ours_over_hf_paired_quartiles"]
        ratio = (f"**{row['ours_over_hf']:.2f}x**, {row['ours_over_hf_paired']:.2f}x [{lo:.2f}-{hi:.2f}], "
                 f"{row['ours_over_hf_fastest']:.2f}x")
      lines.append(
          f"| {row['shape']} | gpt1_jax | {o['step_s'] * 1e3:.0f} ms | {min(o['step_times_s']) * 1e3:.0f} ms | "
          f"{o['tokens_per_s']:.0f} | "
          f"{pct(o['mfu_measured_peak'])} | {mem} | {ratio} |")
      if "hf" in row:
        h = row["hf"]
        mem_h = (f"{mib(h['memory_device_peak'])} device peak"
                 if "memory_device_peak" in h else f"{mib(h['memory_rss_delta'])} RSS")
        lines.append(
            f"| {row['shape']} | HF torch | {h['step_s'] * 1e3:.0f} ms | {min(h['step_times_s']) * 1e3:.0f} ms | "
            f"{h['tokens_per_s']:.0f} | "
            f"{pct(h['mfu_measured_peak'])} | {mem_h} | |")
    lines.append("")
    for row in r["train"]:
      b, a = row["peak_measured_before_after"]
      lines.append(f"- {row['description']}; matmul peak just before / after its timed steps {si(b, 'FLOP/s')} / "
                   f"{si(a, 'FLOP/s')}" + ("; ours and HF steps alternated" if row["interleaved"] else ""))
    for row in r["train"]:
      b = row["ours"].get("breakdown")
      if b:
        lines.append(f"- {row['shape']} step parts (ms): forward {b['forward_s'] * 1e3:.0f}, forward+backward "
                     f"{b['forward_backward_s'] * 1e3:.0f}, optimiser {b['optimizer_s'] * 1e3:.0f}, output layer "
                     f"fwd {b['output_layer_forward_s'] * 1e3:.0f} / fwd+bwd "
                     f"{b['output_layer_forward_backward_s'] * 1e3:.0f} "
                     f"({pct(b['output_layer_share_of_forward_backward'])} of forward+backward time, "
                     f"{pct(b['output_layer_flop_share'])} of the FLOPs)")
    lines.append("")
  if "pipeline" in r:
    p = r["pipeline"]
    lines += ["| pipeline | delivered tokens/s | / train step consumption |", "|---|---|---|"]
    for key, label in (("lm", f"LM (LMData, {p['lm']['batch']} x {p['lm']['seq_len']})"),
                       ("task", f"fine-tuning (SST-2, {p['task']['batch']} x {p['task']['seq_len']})")):
      ratios = ", ".join(f"{x:.0f}x {s}" for s, x in p[key]["over_consumption"].items()) or "-"
      lines.append(f"| {label} | {si(p[key]['tokens_per_s'])} | {ratios} |")
    lines += [f"- SST-2 encode_examples (cold tokenizer): {p['task']['encode_examples_per_s']:.0f} examples/s", ""]
  if "tokenizer" in r:
    t = r["tokenizer"]
    lines += [
        f"Tokenizer on {t['corpus']} ({t['lines']} lines, {t['chars']} chars):", "",
        "| tokenizer | tokens/s | seconds |", "|---|---|---|",
        f"| GPT1Tokenizer, cold memo | {si(t['ours']['tokens_per_s'])} | {t['ours']['seconds']:.2f} "
        f"(+ {t['ours']['setup_s']:.2f} setup) |",
        f"| GPT1Tokenizer, warm memo | {si(t['ours']['warm_tokens_per_s'])} | "
        f"{t['ours']['warm_seconds']:.2f} |"
    ]
    if "hf" in t:
      lines += [
          f"| HF OpenAIGPTTokenizer | {si(t['hf']['tokens_per_s'])} | {t['hf']['seconds']:.2f} "
          f"(+ {t['hf']['setup_s']:.2f} setup) |", "",
          f"- ours (cold) / HF: **{t['ours_over_hf']:.2f}x**; identical ids on "
          f"{pct(t['identical_lines_fraction'])} of lines ({t['note']})"
      ]
    lines.append("")
  if "inference" in r:
    c, g = r["inference"]["classify"], r["inference"]["generate"]
    lines += [
        f"- classification forward (tiny, batch {c['batch']} x {c['seq_len']}): "
        f"{c['examples_per_s']:.0f} examples/s ({c['step_s'] * 1e3:.1f} ms)",
        f"- sampling (tiny, batch {g['batch']}, {g['new_tokens']} new tokens, KV cache): "
        f"{g['tokens_per_s']:.0f} tokens/s ({g['ms_per_step']:.1f} ms per step)", ""
    ]
  loads = [
      f"{row['shape']} {row['load_average_before'][0]:.2f}->{row['load_average_after'][0]:.2f}"
      for row in r.get("train", [])
  ]
  loads += [
      f"{k} {r[k]['load_average_before_after'][0][0]:.2f}->{r[k]['load_average_before_after'][1][0]:.2f}"
      for k in ("tokenizer", "pipeline", "inference")
      if k in r
  ]
  lines.append(f"1-minute load average before->after each part: {', '.join(loads)}")
  lines.append(f"wall time {r['wall_s']:.0f} s")
  return "\n".join(lines)


def json_safe(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_safe(v) for v in x]
  if isinstance(x, (np.floating, np.integer)):
    return json_safe(x.item())
  return x


def write_json(result: dict, path: str):
  with open(path, "w") as f:
    json.dump(json_safe(result), f, indent=1, allow_nan=False, default=str)


def _ms(x: Optional[float]) -> str:
  return "-" if x is None else f"{x * 1e3:.1f} ms"


def _num(x, fmt: str = ".3g") -> str:
  return "-" if x is None else (f"{x:{fmt}}" if isinstance(x, (int, float)) else str(x))


def _status(row: dict) -> str:
  s = row["status"]
  if s == "skipped":
    return row.get("note", "skipped")
  if s == "error":
    return f"**error**: {row.get('error', '')[:160]}"
  return {"pass": "**pass**", "fail": "**FAIL**"}.get(s, s)


def format_gpu_report(r: dict) -> str:
  """Markdown of the GPU check: correctness, speed (ours and Hugging Face's), ratios, the profile."""
  m, v = r["machine"], r["versions"]
  p = r.get("peak", {})
  measured = p.get("measured_flops") or p.get("start", {}).get("measured_matmul_flops")
  lines = [
      f"# gpt1_jax GPU check, {r['date']}", f"command: `{r['command']}`",
      f"device: {m['device_kind']} ({m['platform']}, {m['device_count']} visible); host {m['cpu_model']}, "
      f"{m['cpu_cores']} cores; env {m.get('env') or '{}'}",
      "versions: " + ", ".join(f"{k} {x}" for k, x in v.items() if x),
      f"bf16 matmul peak, measured: {si(measured, 'FLOP/s')}"
      f" ({p.get('start', {}).get('measured_matmul', '-')}, larger of start/end); datasheet: "
      f"{si(p.get('datasheet_flops'), 'FLOP/s')}", f"FLOPs: {r['flop_formula']}", ""
  ]
  rows = r["rows"]
  correct = [x for x in rows if x["group"] == "correctness"]
  if correct:
    lines += ["## Correctness", "", "| check | result | value | tolerance | detail |", "|---|---|---|---|---|"]
    for x in correct:
      detail = ""
      if x["name"].startswith("pretrain") and x["status"] in ("pass", "fail"):
        detail = (f"loss {x['first_train_loss']:.3f} -> eval {x['eval_loss']:.3f} (CPU {x['cpu_eval_loss']:.3f}) in "
                  f"{x['steps']} steps; drop {x['loss_drop']:.2f} (>= {x['min_drop']})")
      elif x["name"] == "logits_bf16_vs_f32" and x["status"] in ("pass", "fail"):
        detail = (f"{x['shape']}; max |diff| {x['max_abs_over_std']:.3f} std, top-1 agreement "
                  f"{pct(x['top1_agreement'])}, KL {x['kl_nats']:.2e} nats")
      elif x["name"].startswith("attention") and x["status"] in ("pass", "fail"):
        parts = [
            f"{dt}: logits {c['logits']['error']:.2e} (allowed {c['logits']['allowed']:.2e}), grads "
            f"{c['grads']['error']:.2e} (allowed {c['grads']['allowed']:.2e})"
            for dt, c in ((dt, d["checks"]) for dt, d in x["dtypes"].items())
        ]
        detail = f"{x['shape']}; " + "; ".join(parts)
      lines.append(f"| {x['title']} | {_status(x)} | {_num(x.get('value'))} | {_num(x.get('tolerance'))} | {detail} |")
    lines += [
        "",
        "Tolerances: " + " ".join(f"*{x['name']}*: {x['why_tolerance']}." for x in correct if x.get("why_tolerance")),
        ""
    ]
  speed = [x for x in rows if x["group"] == "speed"]
  if speed:
    lines += [
        "## Speed", "", "| config | batch x T | step (median) | tokens/s | MFU (measured peak) | MFU (datasheet) "
        "| memory | compile / warm-up | result |", "|---|---|---|---|---|---|---|---|---|"
    ]
    for x in speed:
      if x["status"] != "ok":
        lines.append(f"| {x['title']} | | | | | | | | {_status(x)} |")
        continue
      if x["name"].startswith("hf_"):
        mem = f"{mib(x.get('memory_device_peak'))} torch peak" if x.get("memory_device_peak") else \
            f"{mib(x.get('memory_rss_delta'))} RSS"
        setup = f"warm-up {x.get('warmup_s', 0):.0f} s"
      else:
        plan = (x.get("memory_compiled") or {}).get("total")
        mem = f"{mib(plan)} XLA plan" + (f", {mib(x['memory_device_peak'])} process peak"
                                         if x.get("memory_device_peak") else "")
        setup = f"compile {x.get('compile_s', 0):.0f} s"
      lines.append(f"| {x['title']} | {x['batch']} x {x['seq_len']} | {_ms(x['step_s'])} | {x['tokens_per_s']:,.0f} | "
                   f"{pct(x.get('mfu_measured_peak'))} | {pct(x.get('mfu_datasheet'))} | {mem} | {setup} | ok |")
    lines.append("")
  s = r.get("summary", {})
  if s.get("fastest"):
    f = s["fastest"]
    lines.append(f"Fastest of ours: `{f['row']}`, {f['tokens_per_s']:,.0f} tokens/s, MFU "
                 f"{pct(f.get('mfu_measured_peak'))} of the measured peak ({pct(f.get('mfu_datasheet'))} of the "
                 f"datasheet's).")
  for k, ratio in s.get("ours_over_hf_tokens_per_s", {}).items():
    lines.append(f"- tokens/s `{k}`: **{ratio:.2f}x**")
  prof = next((x for x in rows if x["group"] == "profile"), None)
  if prof is not None:
    lines += ["", "## Profile", "", f"{prof['title']}:", ""]
    if prof["status"] != "ok":
      lines.append(_status(prof))
    else:
      lines += [
          f"`{prof['config']}` ({prof.get('description')}); {prof['steps']} steps traced; {prof['source']}; busy "
          f"{prof['busy_ms_per_step']:.1f} ms per step" +
          (f" of a {prof['step_ms']:.1f} ms step" if prof.get("step_ms") else ""), "",
          "| op | kind | ms / step | share | calls / step | kernel |", "|---|---|---|---|---|---|"
      ]
      for o in prof["top_ops"]:
        lines.append(f"| `{o['op']}` | {o['category']} | {o['ms_per_step']:.2f} | {pct(o['share'])} | "
                     f"{o['calls_per_step']:.0f} | {o['kernel'][:60]} |")
      kinds = prof["by_category_ms_per_step"].items()
      lines += ["", "By kind (ms per step): " + ", ".join(f"{k} {ms:.2f}" for k, ms in kinds)]
      cost = prof.get("xla_cost") or {}
      if cost.get("flops"):
        lines.append(f"XLA cost analysis of the step: {si(cost['flops'], 'FLOP')}, "
                     f"{si(cost.get('bytes_accessed'), 'B')} accessed")
  skipped, errors = ", ".join(s.get("skipped", [])) or "none", ", ".join(s.get("errors", [])) or "none"
  lines += [
      "", f"Skipped: {skipped}; errors: {errors}",
      f"wall time {r['wall_s']:.0f} s (budget {r['settings']['budget_s']:.0f} s)"
  ]
  return "\n".join(lines)
