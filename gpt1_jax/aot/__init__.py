"""Before you rent the pod: compile GPT-1's train step for any Cloud TPU slice on a CPU machine.

  pip install -e '.[aot]'     # libtpu, at the version of the installed JAX
  python -m gpt1_jax.aot --topology=v5e-8 --config=configs/pretrain.py:gpt1 \\
      --config.mesh.data=1 --config.mesh.fsdp=-1 --out=DIR
  python -m gpt1_jax.aot --topology=v5e-16 --num_slices=2 --config=configs/pretrain.py:gpt1 \\
      --config.mesh.dcn_data=2 --config.mesh.data=1 --config.mesh.fsdp=-1 --out=DIR
  python -m gpt1_jax.aot --topology=v5e-8 --config=configs/pretrain.py:gpt1 --sweep --budget_s=1800 --out=DIR

It compiles exactly the step ``gpt1_jax.main`` would run on that slice (the same config
resolution and checks, ``state.setup``, mesh rules and step function; the batch shapes from the
config, no data needed) with the real XLA:TPU compiler, and writes ``DIR/aot.json`` and
``DIR/aot.md``: memory per chip against the chip's HBM, whether it fits, the compiler's FLOPs next
to the model's, every kind of collective with its count and bytes per step (ICI or DCN), and a
roofline *estimate* of step time, tokens/s and MFU. A step that does not fit exits 1 with one
``error:`` line naming the compiler's figure, the chip's HBM and what to change. ``--sweep`` ranks
the meshes, micro-batches, remat and scan settings for the config's global batch.

Modules: ``topology`` (accelerator types, chip figures and their sources), ``compile``
(``compile_for``, the report, the estimate), ``hlo`` (collectives and loop trip counts read from
the compiled HLO), ``sweep`` (the candidates and their ranking), ``output`` (the JSON and Markdown
files), ``cli``.
"""

from gpt1_jax.aot.compile import HBMError, compile_for, estimate  # noqa: F401
from gpt1_jax.aot.topology import CHIPS, Slice, parse  # noqa: F401
