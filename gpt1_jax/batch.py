"""The batch's schema: the one statement of what a train or eval step takes.

Each objective says what its batch is (``LMObjective.batch_spec``, ``TaskObjective.batch_spec``);
everything else follows from that ``BatchSpec``: the dummy batch that initialises the model, the
abstract global batch that a step is compiled for (with no data at all: ``gpt1_jax.aot`` compiles
for a TPU slice from the config alone), and the check that a producer's batches are what the
compiled step expects. A new field of the batch is a change to its objective's spec and to the
producer that fills it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Field:
  shape: tuple[int, ...]  # without the leading batch axis
  dtype: np.dtype
  fill: int = 0  # the dummy batch's value: 1 for masks, so a dummy row is a real row


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """``{name: Field}`` of a batch, leading (batch) axis left out."""

  fields: Mapping[str, Field]

  @classmethod
  def of(cls, **fields: tuple) -> "BatchSpec":
    """``BatchSpec.of(inputs=((T,), np.int32), loss_mask=((T,), np.float32, 1))``."""
    return cls({k: Field(tuple(int(d) for d in v[0]), np.dtype(v[1]), *v[2:]) for k, v in fields.items()})

  def zeros(self, batch_size: int) -> dict[str, np.ndarray]:
    """A batch of ``batch_size`` rows, each field at its ``fill`` value (the model's init batch)."""
    return {k: np.full((batch_size,) + f.shape, f.fill, f.dtype) for k, f in self.fields.items()}

  def avals(self, batch_size: int,
            sharding: Optional[Callable[[int], jax.sharding.Sharding]] = None) -> dict[str, jax.ShapeDtypeStruct]:
    """The abstract global batch; ``sharding(ndim)`` places each field (e.g. ``sharding.batch_sharding``)."""
    return {
        k: jax.ShapeDtypeStruct(
            (batch_size,) + f.shape, f.dtype,
            sharding=sharding(1 + len(f.shape)) if sharding else None) for k, f in self.fields.items()
    }

  def check(self, batch: Mapping[str, np.ndarray], where: str, batch_size: Optional[int] = None):
    """Refuses a batch whose fields, shapes or dtypes differ from the spec, naming the first difference."""
    if set(batch) != set(self.fields):
      raise ValueError(f"{where}: batch fields {sorted(batch)} differ from the step's {sorted(self.fields)}")
    for k, f in self.fields.items():
      a = batch[k]
      rows = a.shape[0] if a.ndim else None
      want = ((batch_size if batch_size is not None else rows),) + f.shape
      if tuple(a.shape) != want or np.dtype(a.dtype) != f.dtype:
        raise ValueError(f"{where}: field {k!r} is {np.dtype(a.dtype).name}{list(a.shape)}, the step takes "
                         f"{f.dtype.name}{list(want)}")
