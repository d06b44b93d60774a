"""What a compiled program does per step, read from its optimised HLO text.

Each computation gets its *multiplicity*, the number of times one step runs it (the product of
the trip counts of the loops around it: ``known_trip_count`` where the compiler kept it, else the
loop's condition ``i < N``), and from that:

- ``analyse``: the collectives of the compiled program per step: kind, count, bytes each chip
  sends, and whether they cross slices (DCN) or stay on one (ICI);
- ``loop_matmul_flops``: the ``dot`` FLOPs of the *lowered* program (before optimisation, where
  every matmul is a plain ``dot``) with each loop counted per iteration and counted once. XLA's
  cost analysis counts the body of a ``while`` loop once (``nn.scan`` over layers, gradient
  accumulation: measured), so the difference is what it missed.

The text format is XLA's ``HloModule::ToString``; only what is needed is parsed, and an
instruction this parser does not understand is skipped rather than guessed.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Optional, Sequence

import numpy as np

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_OPCODES = {**{k: k for k in COLLECTIVES}, **{f"{k}-start": k for k in COLLECTIVES}}
_BYTES = {
    "pred": 1,
    "s4": 1,
    "u4": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16
}
_ARRAY = re.compile(r"([a-z]\w*)\[([\d,]*)\]")
# A computation's first line: `%name (params) -> shape {` (compiled) or `name {` (lowered, as text).
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)(\s+\(.*\)\s+->\s+.*)?\s*\{\s*$")
_CALLS = re.compile(r"\b(calls|body|condition|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_CALL_LISTS = re.compile(r"\b(branch_computations|called_computations)=\{([^}]*)\}")


@dataclasses.dataclass
class Instr:
  name: str
  shape: str
  opcode: str
  operands: list
  attrs: str
  args: str = ""  # the text between the opcode's parentheses (a constant's value)


@dataclasses.dataclass
class Module:
  computations: dict  # name -> list[Instr]
  entry: str
  num_partitions: int


def _split_shape(rest: str) -> tuple[str, str]:
  """``'(f32[2], s32[]) tuple(...)'`` -> (shape, remainder)."""
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += {"(": 1, ")": -1}.get(ch, 0)
      if depth == 0:
        return rest[:i + 1], rest[i + 1:].lstrip()
  sp = rest.find(" ")
  return (rest, "") if sp < 0 else (rest[:sp], rest[sp + 1:])


def _parse_instr(line: str) -> Optional[Instr]:
  line = line.strip()
  if line.startswith("ROOT "):
    line = line[5:]
  eq = line.find(" = ")
  if eq < 0 or not re.match(r"%?[\w.\-]+$", line[:eq]):
    return None
  name = line[:eq].lstrip("%")
  shape, rest = _split_shape(line[eq + 3:])
  paren = rest.find("(")
  if paren <= 0:
    return None
  opcode = rest[:paren]
  depth, end = 0, len(rest)
  for i in range(paren, len(rest)):
    depth += {"(": 1, ")": -1}.get(rest[i], 0)
    if depth == 0:
      end = i
      break
  args = rest[paren + 1:end]
  operands = (re.findall(r"%([\w.\-]+)", args)
              if "%" in args else [a.strip() for a in args.split(",") if re.fullmatch(r"\s*[A-Za-z_][\w.\-]*\s*", a)])
  return Instr(name, shape, opcode, operands, rest[end + 1:], rest[paren + 1:end])


def parse(text: str) -> Module:
  comps, entry, current = {}, None, None
  m = re.search(r"num_partitions=(\d+)", text)
  num_partitions = int(m.group(1)) if m else 1
  for line in text.splitlines():
    if current is None:
      h = _HEADER.match(line)
      if h:
        current = h.group(2)
        comps[current] = []
        if h.group(1):
          entry = current
      continue
    if line.strip() == "}":
      current = None
      continue
    ins = _parse_instr(line)
    if ins is not None:
      comps[current].append(ins)
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return Module(comps, entry, num_partitions)


def shape_bytes(shape: str) -> int:
  return sum(_BYTES.get(dt, 0) * math.prod(int(d) for d in dims.split(",") if d) for dt, dims in _ARRAY.findall(shape))


def _dims(shape: str) -> list[int]:
  m = _ARRAY.search(shape)
  return [int(d) for d in m.group(2).split(",") if d] if m else []


def trip_count(ins: Instr, mod: Optional[Module] = None, caller: Optional[list] = None) -> Optional[int]:
  """The loop's trip count: from ``known_trip_count`` when the compiler kept it, else from its
  condition ``i < N`` (``compare(get-tuple-element(param, index=k), constant(N)), direction=LT``)
  and the initial ``i`` in the while's operand tuple (a constant, else 0)."""
  m = re.search(r'known_trip_count"?\s*[:=]\s*\{\s*"?n"?\s*[:=]\s*"?(\d+)', ins.attrs)
  if m:
    return int(m.group(1))
  cond = re.search(r"\bcondition=%?([\w.\-]+)", ins.attrs)
  if mod is None or not cond or cond.group(1) not in mod.computations:
    return None
  body = {i.name: i for i in mod.computations[cond.group(1)]}
  root = mod.computations[cond.group(1)][-1] if mod.computations[cond.group(1)] else None
  if root is None or root.opcode != "compare" or "direction=LT" not in root.attrs or len(root.operands) != 2:
    return None
  lhs, rhs = (body.get(o) for o in root.operands)
  if lhs is None or rhs is None or rhs.opcode != "constant" or lhs.opcode != "get-tuple-element":
    return None
  index = re.search(r"index=(\d+)", lhs.attrs)
  start = 0
  callers = {i.name: i for i in caller or []}
  init = callers.get(ins.operands[0]) if ins.operands else None
  if index and init is not None and init.opcode == "tuple" and int(index.group(1)) < len(init.operands):
    first = callers.get(init.operands[int(index.group(1))])
    if first is not None and first.opcode == "constant" and re.fullmatch(r"-?\d+", first.args.strip()):
      start = int(first.args)
  try:
    return max(int(rhs.args) - start, 0)
  except ValueError:
    return None


def multiplicities(mod: Module, unroll: bool = True) -> tuple[dict, list]:
  """``({computation: runs per step}, [while loops without a known trip count])``. ``unroll=False``
  counts loops as XLA's cost analysis does: by the ``known_trip_count`` the compiler kept (its
  windowed-einsum loops), once where it kept none (a scan over layers, whose count this module
  reads from the loop's condition instead)."""
  edges = collections.defaultdict(list)  # caller -> [(callee, factor)]
  unknown = []
  for comp, instrs in mod.computations.items():
    for ins in instrs:
      trips = 1
      if ins.opcode == "while":
        t = trip_count(ins, mod, instrs) if unroll else trip_count(ins)
        if t is None and unroll:
          unknown.append(ins.name)
        trips = t or 1
      for key, callee in _CALLS.findall(ins.attrs):
        edges[comp].append((callee, trips if key in ("body", "condition") else 1))
      for _, names in _CALL_LISTS.findall(ins.attrs):
        for callee in re.findall(r"%?([\w.\-]+)", names):
          edges[comp].append((callee, 1))
  mult = collections.Counter()
  order = _topological(mod.entry, edges)
  mult[mod.entry] = 1
  for comp in order:
    for callee, factor in edges.get(comp, ()):
      mult[callee] += mult[comp] * factor
  return dict(mult), unknown


def _topological(entry: str, edges: dict) -> list:
  seen, out = set(), []

  def visit(c):
    if c in seen:
      return
    seen.add(c)
    for callee, _ in edges.get(c, ()):
      visit(callee)
    out.append(c)

  visit(entry)
  return out[::-1]


def _symbols(instrs: list) -> dict:
  return {i.name: i.shape for i in instrs}


def matmul_flops(ins: Instr, symbols: dict) -> float:
  """FLOPs of a ``dot``: 2 x output elements x the contracted size (0 for any other instruction)."""
  if ins.opcode != "dot":
    return 0.0
  m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.attrs)
  lhs = _dims(symbols.get(ins.operands[0], "")) if ins.operands else []
  if not m or not lhs:
    return 0.0
  return 2.0 * math.prod(_dims(ins.shape)) * math.prod(lhs[int(d)] for d in m.group(1).split(",") if d)


def _groups(ins: Instr, num_partitions: int) -> list[list[int]]:
  a = ins.attrs
  if ins.opcode.startswith("collective-permute"):
    m = re.search(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}", a)
    return [[int(x) for x in p.split(",")] for p in re.findall(r"\{(\d+,\d+)\}", m.group(1))] if m else []
  m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:\s*\{([^}]*)\})?", a)
  if m:  # mesh form: mesh['axis_0'=4,'axis_1'=2] {'axis_1'}: groups vary the listed axes
    axes = re.findall(r"'([^']+)'=(\d+)", m.group(1))
    names, sizes = [n for n, _ in axes], [int(v) for _, v in axes]
    grouped = re.findall(r"'([^']+)'", m.group(2)) if m.group(2) is not None else names
    ids = np.arange(math.prod(sizes)).reshape(sizes)
    inner = [names.index(g) for g in grouped]
    outer = [k for k in range(len(names)) if k not in inner]
    return ids.transpose(outer + inner).reshape(-1, math.prod(sizes[k] for k in inner) if inner else 1).tolist()
  m = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", a)
  if m:  # iota form: [groups,size]<=[dims]T(perm)
    shape = [int(x) for x in m.group(1).split(",")]
    dims = [int(x) for x in m.group(2).split(",")]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if m.group(3):
      ids = ids.transpose([int(x) for x in m.group(3).split(",")])
    return ids.reshape(shape[0], -1).tolist()
  m = re.search(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}", a)
  if m and m.group(1).strip():
    return [[int(x) for x in g.split(",") if x] for g in re.findall(r"\{([\d,]*)\}", m.group(1))]
  return [list(range(num_partitions))]


def _source(ins: Instr) -> str:
  """The JAX operation a collective serves (its ``op_name``, layer numbers folded): where to look."""
  m = re.search(r'op_name="([^"]*)"', ins.attrs)
  if not m:
    return "(unnamed)"
  name = re.sub(r"^jit\([^)]*\)/", "", m.group(1))
  return re.sub(r"(?<=[_/])\d+(?=/|$)", "N", name)


def _wire_bytes(kind: str, operand_bytes: int, n: int) -> float:
  """Bytes one chip sends for one collective of ``operand_bytes`` per chip over groups of ``n``
  (ring algorithms: the standard counts)."""
  if n <= 1:
    return 0.0
  if kind == "all-gather":
    return operand_bytes * (n - 1)
  if kind == "all-reduce":
    return 2.0 * operand_bytes * (n - 1) / n
  if kind in ("reduce-scatter", "all-to-all"):
    return operand_bytes * (n - 1) / n
  return float(operand_bytes)  # collective-permute


@dataclasses.dataclass
class Analysis:
  collectives: list  # [{"kind", "count", "bytes", "over", "top_ops"}]
  unknown_trip_counts: list


def loop_matmul_flops(lowered_text: str) -> tuple[float, float, list]:
  """``(dot FLOPs per step, the same with every loop body once, loops of unknown count)`` of a
  lowered (unoptimised) module: there every matmul is a ``dot``, whose FLOPs are exact."""
  mod = parse(lowered_text)
  mult, unknown = multiplicities(mod)
  once, _ = multiplicities(mod, unroll=False)
  full = counted = 0.0
  for comp, instrs in mod.computations.items():
    symbols = _symbols(instrs)
    for ins in instrs:
      if ins.opcode == "dot":
        f = matmul_flops(ins, symbols)
        full += mult.get(comp, 0) * f
        counted += once.get(comp, 0) * f
  return full, counted, unknown


_MEGASCALE = {
    "ALL_REDUCE": "all-reduce",
    "ALL_GATHER": "all-gather",
    "REDUCE_SCATTER": "reduce-scatter",
    "ALL_TO_ALL": "all-to-all"
}


def analyse(text: str, slice_of: Sequence[int], num_slices: int = 1) -> Analysis:
  """``slice_of[p]``: the slice of the device with partition id ``p`` (the mesh's device order).

  A multi-slice program is compiled per slice (``num_partitions`` = one slice's chips): its
  collectives over the mesh's ``dcn_*`` axes are host transfers to the Megascale runtime,
  ``send`` instructions whose ``_xla_megascale_transfer_type`` says which collective; those are
  the DCN rows. A replica group of the SPMD program that spans slices (older compilers) is one too.
  """
  mod = parse(text)
  mult, unknown = multiplicities(mod)
  table = collections.defaultdict(lambda: {"count": 0, "bytes": 0.0})
  # XLA:TPU's async collective fusions repeat a collective in each fusion of its chain (the start
  # and its continuations), all with the collective's one channel_id: count each channel once.
  seen_channels = set()
  for comp, instrs in mod.computations.items():
    k = mult.get(comp, 0)
    if not k:
      continue
    symbols = _symbols(instrs)
    root = instrs[-1] if instrs else None
    for ins in instrs:
      if ins.opcode == "send" and "_xla_megascale_transfer_type" in ins.attrs:
        t = re.search(r'_xla_megascale_transfer_type="(\w+)"', ins.attrs).group(1)
        key = re.search(r'_xla_host_transfer_rendezvous="([^"]+)"', ins.attrs)
        if key and ("dcn", key.group(1)) in seen_channels:
          continue
        seen_channels.add(("dcn", key.group(1) if key else ins.name))
        kind = _MEGASCALE.get(t, "collective-permute")
        operand = sum(shape_bytes(symbols.get(o, "")) for o in ins.operands)
        sent = k * _wire_bytes(kind, operand, max(num_slices, 2))
        row = table[(kind, "dcn")]
        row["count"] += k
        row["bytes"] += sent
        src = row.setdefault("ops", collections.defaultdict(lambda: [0, 0.0]))[_source(ins)]
        src[0] += k
        src[1] += sent
        continue
      kind = _OPCODES.get(ins.opcode)
      if kind is None:
        continue
      if (kind == "all-reduce" and root is not None and root.opcode == "dynamic-slice" and
          root.operands[:1] == [ins.name]):
        # XLA:TPU writes a reduce-scatter as a computation `all-reduce-scatter` whose all-reduce
        # feeds a dynamic-slice: the backend runs it as a reduce-scatter.
        kind = "reduce-scatter"
      channel = re.search(r"\bchannel_id=(\d+)", ins.attrs)
      if channel:
        if (kind, channel.group(1)) in seen_channels:
          continue
        seen_channels.add((kind, channel.group(1)))
      groups = [g for g in _groups(ins, mod.num_partitions) if g]
      n = max((len(g) for g in groups), default=1) if kind != "collective-permute" else 2
      if kind != "collective-permute" and n <= 1:
        continue  # a group of one chip moves nothing
      over = "dcn" if any(len({slice_of[p] for p in g if p < len(slice_of)}) > 1 for g in groups) else "ici"
      operand = sum(shape_bytes(symbols.get(o, "")) for o in ins.operands)
      sent = k * _wire_bytes(kind, operand, n)
      row = table[(kind, over)]
      row["count"] += k
      row["bytes"] += sent
      src = row.setdefault("ops", collections.defaultdict(lambda: [0, 0.0]))[_source(ins)]
      src[0] += k
      src[1] += sent
  rows = [{
      "kind": kind,
      "count": int(v["count"]),
      "bytes": int(v["bytes"]),
      "over": over,
      "top_ops": [{
          "op": op,
          "count": int(c),
          "bytes": int(b)
      } for op, (c, b) in sorted(v.get("ops", {}).items(), key=lambda x: -x[1][1])[:6]]
  } for (kind, over), v in sorted(table.items())]
  return Analysis(rows, unknown)
