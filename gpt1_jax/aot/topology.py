"""Cloud TPU accelerator types as users write them, and the chip figures the estimate uses.

``v4-8`` ... ``v4-4096`` and ``v5p-N`` count TensorCores (two per chip, which JAX sees as one
megacore device); ``v5litepod-N`` (alias ``v5e-N``) and ``v6e-N`` count chips. ``parse`` maps a
type to libtpu's topology name (``v5e:2x4``) and the number of chips, or refuses it with the valid
names.
"""

from __future__ import annotations

import dataclasses
import math
import re

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation's published figures (per chip). ``source`` is where each comes from."""

  generation: str  # libtpu's name: v4, v5e, v5p, v6e
  device_kind: str
  peak_bf16_flops: float
  hbm_bytes: float  # the datasheet's capacity; the compiler's own limit is probed (compile.hbm_available)
  hbm_bytes_per_s: float
  ici_bytes_per_s: float  # bidirectional, all ports of one chip
  dcn_bytes_per_s: float  # per chip, between slices
  cores_per_chip: int  # TensorCores the accelerator type's suffix counts per chip
  source: str


CHIPS = {
    "v4": Chip(
        "v4", "TPU v4", 275e12, 32 * GiB, 1200e9, 300e9, 6.25e9, 2,
        "cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16, 32 GiB HBM2 at 1,200 GB/s); ICI: 6 links x 50 "
        "GB/s (Jouppi et al., ISCA 2023); DCN: not published per chip, assumed 50 Gbps as v5p"),
    "v5e": Chip(
        "v5e", "TPU v5 lite", 197e12, 16 * GiB, 819e9, 400e9, 6.4e12 / 8 / 256, 1,
        "cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16, 16 GiB HBM at 819 GB/s, ICI 400 GB/s "
        "bidirectional per chip, DCN 6.4 Tbps per 256-chip pod)"),
    "v5p": Chip(
        "v5p", "TPU v5", 459e12, 95 * GiB, 2765e9, 1200e9, 50e9 / 8, 2,
        "cloud.google.com/tpu/docs/v5p (459 TFLOP/s bf16, 95 GiB HBM at 2,765 GB/s, ICI 1,200 GB/s "
        "bidirectional per chip, DCN 50 Gbps per chip)"),
    "v6e": Chip(
        "v6e", "TPU v6 lite", 918e12, 32 * GiB, 1638e9, 800e9, 100e9 / 8, 1,
        "cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16, 32 GB HBM at 1,638 GB/s, ICI 800 GB/s "
        "bidirectional per chip); DCN: not published per chip, assumed 100 Gbps"),
}

# Slice shapes in chips, as Cloud TPU builds them (the docs' configuration tables).
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_SHAPES_3D = {
    4: "2x2x1",
    8: "2x2x2",
    16: "2x2x4",
    32: "2x4x4",
    64: "4x4x4",
    128: "4x4x8",
    256: "4x8x8",
    512: "8x8x8",
    1024: "8x8x16",
    2048: "8x16x16",
    4096: "16x16x16",
    6144: "16x16x24"
}
_FAMILIES = {  # user prefix -> (generation, shapes, largest slice in chips)
    "v4": ("v4", _SHAPES_3D, 4096), "v5p": ("v5p", _SHAPES_3D, 6144),
    "v5litepod": ("v5e", _SHAPES_2D, 256), "v5e": ("v5e", _SHAPES_2D, 256), "v6e": ("v6e", _SHAPES_2D, 256),
}


@dataclasses.dataclass(frozen=True)
class Slice:
  accelerator_type: str  # as given, e.g. v5e-8
  generation: str
  topology_name: str  # libtpu's, e.g. v5e:2x4
  chips: int  # one slice
  chip: Chip

  @property
  def chips_per_host_bounds(self) -> tuple[int, int, int]:
    """Chips of one host as libtpu's (x, y, z): a v5e/v6e host of up to 8 chips holds the whole
    slice; larger v5e/v6e slices and every v4/v5p slice have 4 chips (2 x 2) per host."""
    dims = [int(x) for x in self.topology_name.split(":")[1].split("x")]
    if self.generation in ("v5e", "v6e") and self.chips <= 8:
      return (dims[0], dims[1], 1)
    return (2, 2, 1)

  @property
  def hosts(self) -> int:
    return self.chips // math.prod(self.chips_per_host_bounds)

  @property
  def megacore(self) -> bool:
    # libtpu describes a v4/v5p chip as two devices by default; JAX on the hardware sees one.
    return self.chip.cores_per_chip == 2


def valid_types() -> list[str]:
  out = []
  for prefix, (gen, shapes, _) in _FAMILIES.items():
    per = CHIPS[gen].cores_per_chip
    out.append(f"{prefix}-{{{','.join(str(c * per) for c in shapes)}}}")
  return out


def parse(accelerator_type: str) -> Slice:
  """``v5e-8`` -> ``Slice(topology_name='v5e:2x4', chips=8, ...)``; a ValueError lists the valid names."""
  m = re.fullmatch(r"(v4|v5p|v5litepod|v5e|v6e)-(\d+)", accelerator_type.strip().lower())
  if m:
    gen, shapes, _ = _FAMILIES[m.group(1)]
    count, per = int(m.group(2)), CHIPS[gen].cores_per_chip
    chips = count // per
    if count % per == 0 and chips in shapes:
      return Slice(accelerator_type, gen, f"{gen}:{shapes[chips]}", chips, CHIPS[gen])
  raise ValueError(f"--topology={accelerator_type!r}: not a Cloud TPU accelerator type this tool knows; valid: "
                   f"{'; '.join(valid_types())} (v4 and v5p count TensorCores, two per chip; v5e and v6e "
                   f"count chips)")


def total_chips(s: Slice, num_slices: int) -> int:
  return s.chips * num_slices


def describe(s: Slice) -> str:
  return f"{s.accelerator_type} ({s.topology_name}, {s.chips} chip{'s' * (s.chips != 1)}, {s.chip.device_kind})"


assert all(math.prod(int(x) for x in v.split("x")) == k for k, v in {**_SHAPES_2D, **_SHAPES_3D}.items())
