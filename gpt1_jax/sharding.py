"""Device mesh, logical-axis rules and host <-> global array plumbing.

The model names its axes (``batch``, ``length``, ``embed``, ``vocab``,
``heads``, ``kv``, ``mlp``, ``layers``); the config maps them onto the mesh
axes ``data``, ``fsdp`` and ``tensor``. Data parallelism, FSDP (parameters and
optimiser state split over ``fsdp``) and Megatron-style tensor parallelism
(heads, MLP hidden and vocabulary split over ``tensor``) are all just rules.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
from gpt1_jax.data.pipeline import Rows

MESH_AXES = ("data", "fsdp", "tensor")

# Batch over every data-like axis; parameters split along `embed` over fsdp
# (ZeRO-3) and along heads / mlp / vocab over tensor (Megatron). Flax assigns
# each mesh axis at most once per array, so activations ('batch', 'length',
# 'embed') put fsdp on the batch and leave embed whole.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("layers", None),
)


def resolve_mesh_shape(sizes: Sequence[int], num_devices: int, what: str = "mesh") -> tuple[int, ...]:
  """Fills a single ``-1`` so the product equals ``num_devices``; clear errors otherwise."""
  sizes = [int(s) for s in sizes]
  if sum(s == -1 for s in sizes) > 1:
    raise ValueError(f"{what}: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"{what}: axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"{what}: {dict(zip(MESH_AXES, sizes))} cannot fill {num_devices} devices "
                       f"({num_devices} is not divisible by {known})")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"{what}: {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices but "
                     f"{num_devices} are available; use -1 on one axis to fill in")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[Any] | None = None) -> Mesh:
  """Builds the ``(data, fsdp, tensor)`` mesh from ``config.mesh``.

  ``mesh_cfg.data/fsdp/tensor`` are per-slice (ICI) sizes; ``mesh_cfg.dcn_*``
  (default 1) are across slices (multi-slice TPU), built with
  ``create_hybrid_device_mesh`` so collectives over ICI axes stay on-slice.
  Axis types are ``Auto``: the model's logical constraints drive GSPMD, which is
  what Linen's partitioning is written for (``jax.make_mesh`` defaults to
  ``Explicit`` in new JAX, which would change the typing of every op).
  """
  devices = list(devices if devices is not None else jax.devices())
  dcn = tuple(int(getattr(mesh_cfg, f"dcn_{a}", 1)) for a in MESH_AXES)
  num_slices = math.prod(dcn)
  if len(devices) % num_slices:
    raise ValueError(f"mesh: {len(devices)} devices do not split into {num_slices} slices (dcn sizes {dcn})")
  ici = resolve_mesh_shape([getattr(mesh_cfg, a) for a in MESH_AXES], len(devices) // num_slices, "mesh")
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if num_slices > 1:
    arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices)
    return Mesh(arr, MESH_AXES, axis_types=axis_types)
  return jax.make_mesh(ici, MESH_AXES, axis_types=axis_types, devices=devices)


def rules_from_config(rules_cfg) -> tuple:
  """``config.mesh.rules``: a tuple of ``(logical, mesh_axes)`` pairs (default: DEFAULT_RULES)."""
  if not rules_cfg:
    return DEFAULT_RULES
  out = []
  for pair in rules_cfg:
    logical, mesh_axes = pair
    for a in (mesh_axes if isinstance(mesh_axes, (tuple, list)) else [mesh_axes]):
      if a is not None and a not in MESH_AXES:
        raise ValueError(f"mesh.rules: {logical!r} -> unknown mesh axis {a!r}; mesh axes are {MESH_AXES}")
    out.append((logical, tuple(mesh_axes) if isinstance(mesh_axes, list) else mesh_axes))
  return tuple(out)


@contextlib.contextmanager
def activate(mesh: Mesh, rules):
  """Mesh + rules for tracing: inside, Linen's logical constraints become real
  sharding constraints. (The legacy ``with mesh:`` context leaves them inert.)"""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_to_sharding(boxed_tree, mesh: Mesh, rules):
  """NamedShardings for a tree of ``nn.Partitioned`` leaves (e.g. from ``jax.eval_shape(init)``)."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def check_divisible(abstract_tree, shardings, where: str = "parameters"):
  """Every sharded dimension must divide by its mesh axes: say which one does not, before compiling."""
  problems = []
  flat, _ = jax.tree_util.tree_flatten_with_path(abstract_tree)
  flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, leaf), sh in zip(flat, flat_s):
    shape = leaf.shape
    for dim, axes in zip(shape, tuple(sh.spec) + (None,) * (len(shape) - len(sh.spec))):
      if axes is None:
        continue
      n = math.prod(sh.mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,)))
      if dim % n:
        problems.append(f"  {jax.tree_util.keystr(path)} {tuple(shape)}: dim {dim} over {axes} (size {n})")
  if problems:
    raise ValueError(f"{where} do not divide over the mesh "
                     f"{dict(zip(shardings_mesh_axes(flat_s), shardings_mesh_sizes(flat_s)))}:\n" +
                     "\n".join(problems[:20]) + "\nchange mesh sizes, mesh.rules or model sizes "
                     "(e.g. model.vocab_pad_multiple for the vocabulary)")


def shardings_mesh_axes(flat_s):
  return flat_s[0].mesh.axis_names if flat_s else ()


def shardings_mesh_sizes(flat_s):
  return tuple(flat_s[0].mesh.shape.values()) if flat_s else ()


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
  """Leading axis over the batch mesh axes, the rest replicated."""
  spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, spec)


def batch_axis_size(mesh: Mesh, rules) -> int:
  spec = nn.logical_to_mesh_axes(("batch",), rules)[0]
  axes = () if spec is None else (spec if isinstance(spec, tuple) else (spec,))
  return math.prod(mesh.shape[a] for a in axes)


def host_rows(mesh: Mesh, rules, global_batch_size: int):
  """``(start, count)``: the contiguous rows of each global batch that this process feeds."""
  sharding = batch_sharding(mesh, rules, 1)
  idx = sharding.addressable_devices_indices_map((global_batch_size,))
  starts = sorted({(s[0].start or 0, s[0].stop if s[0].stop is not None else global_batch_size) for s in idx.values()})
  lo, hi = starts[0][0], starts[-1][1]
  covered = sum(b - a for a, b in starts)
  if covered != hi - lo:
    raise ValueError(f"process {jax.process_index()} owns non-contiguous batch rows {starts}; use a mesh whose "
                     f"batch axes follow the process order (the default device order does)")
  return Rows(global_batch_size, lo, hi - lo)


def global_batch(local: dict, mesh: Mesh, rules, global_batch_size: int) -> dict:
  """Host-local rows -> global ``jax.Array``s sharded over the batch axes (works on any number of hosts)."""
  out = {}
  for k, v in local.items():
    v = np.asarray(v)
    sh = batch_sharding(mesh, rules, v.ndim)
    out[k] = jax.make_array_from_process_local_data(sh, v, (global_batch_size,) + v.shape[1:])
  return out


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
