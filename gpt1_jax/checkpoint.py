"""Orbax checkpoints: training state with its data position and config, and plain weights.

A training checkpoint is one Orbax step directory with two items:
``state`` (step, params, optimiser state; arrays restored straight into the
current mesh's shardings, so a run saved on 8 devices resumes on 4) and
``meta`` (JSON: the full config, the model config, the data stream identity).
Orbax writes each step to a temporary directory and renames it when complete,
so a crash (even ``kill -9`` during an async save) leaves either a whole step
or a temporary directory, which is ignored and removed at the next start.

A weights checkpoint (``save_params``: converted OpenAI / Hugging Face weights,
or the best fine-tuned model) has items ``params`` and ``meta``.

A save that fails (disk full, a read-only or unreachable mount) stops the run at once with one
``CheckpointError`` that says which step failed, where, the space needed and free, which earlier
checkpoint is intact and how to resume. Orbax deletes old steps only after a new one is committed,
so a failed save loses nothing.

Every save records two 32-bit checksums per array in ``meta`` (``checksums``: the
sum and the sum of squares of its 32-bit words),
verified on restore: a bit flipped on disk after the save (same size, so Orbax
reads it without complaint) is reported as a corrupt checkpoint instead of
surfacing hours later as a NaN blamed on a data batch.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from gpt1_jax.model import ModelConfig
from gpt1_jax.perf import fmt_bytes

# Model fields that change parameter shapes or meaning: a checkpoint that
# differs in any of them cannot be loaded into the current model.
SHAPE_FIELDS = ("vocab_size", "n_ctx", "n_embd", "n_head", "n_layer", "architecture", "lstm_units",
                "vocab_pad_multiple", "scan_layers")


class CheckpointError(RuntimeError):
  pass


def model_config_to_dict(cfg: ModelConfig) -> dict:
  return dataclasses.asdict(cfg)


def model_config_from_dict(d: dict) -> ModelConfig:
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  return ModelConfig(**{k: v for k, v in d.items() if k in known})


def config_diff(saved: dict, current: dict, keys=SHAPE_FIELDS) -> list[str]:
  defaults = model_config_to_dict(ModelConfig())
  out = []
  for k in keys:
    a, b = saved.get(k, defaults.get(k)), current.get(k, defaults.get(k))
    if a != b:
      out.append(f"  model.{k}: checkpoint {a!r} != config {b!r}")
  return out


# ----------------------------------------------------------------------------
# Content checksums.

_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _leaf_checksum(x):
  """``[sum(u), sum(u * u)] mod 2**32`` over the array's bits ``u`` (as unsigned words).

  Integer sums are exact and order-free, so the value is the same on any mesh
  and any host count (a run saved on 8 devices verifies on 4). Any single
  flipped bit changes the first sum (by +-2**k, never 0 mod 2**32); the
  squares make changes that cancel in the first (two flips, a zeroed page)
  show in the second. Computed on device, where the arrays already are.
  """
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  u = jax.lax.bitcast_convert_type(x, _UINT[min(x.dtype.itemsize, 4)]).astype(jnp.uint32)  # 8 bytes: 2 words
  return jnp.stack([jnp.sum(u, dtype=jnp.uint32), jnp.sum(u * u, dtype=jnp.uint32)])


@jax.jit
def _tree_checksums(tree):
  return jax.tree.map(_leaf_checksum, tree)


_NP_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32}
_CHUNK = 1 << 22  # elements per numpy pass: bounds the temporaries to ~50 MB


def _host_block_sums(block: np.ndarray) -> np.ndarray:
  """The same two sums as ``_leaf_checksum`` over one block of an array, in numpy."""
  # 8-byte values (numpy int64/float64 leaves of a weights tree) count as two 32-bit words.
  u = np.ascontiguousarray(block).reshape(-1).view(_NP_UINT[min(block.dtype.itemsize, 4)])
  total = np.zeros(2, np.uint64)
  for i in range(0, max(u.size, 1), _CHUNK):
    part = u[i:i + _CHUNK].astype(np.uint32, copy=False)
    total = (total + [part.sum(dtype=np.uint64), (part * part).sum(dtype=np.uint64)]) % 2**32
  return total


def _host_leaf_sums(x) -> np.ndarray:
  """Per addressable shard (one replica of each), so a sharded array is never gathered."""
  if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if not isinstance(x, jax.Array):
    x = np.asarray(x)
    return _host_block_sums(x.astype(np.uint8) if x.dtype == np.bool_ else x)
  total = np.zeros(2, np.uint64)
  for shard in x.addressable_shards:
    if shard.replica_id:
      continue
    data = np.asarray(shard.data)
    total = (total + _host_block_sums(data.astype(np.uint8) if data.dtype == np.bool_ else data)) % 2**32
  return total


def checksums(tree) -> dict[str, list[int]]:
  """``{key path: [sum, weighted sum]}`` of every array in ``tree`` (device or host arrays).

  On accelerators the sums run on device, where the arrays are. On CPU they run
  in numpy, shard by shard: XLA:CPU reduces integers ~20x slower than numpy
  (BENCHMARKS.md).
  """
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  if jax.default_backend() == "cpu" or not any(isinstance(x, jax.Array) for _, x in leaves):
    sums = {jax.tree_util.keystr(p): _host_leaf_sums(x) for p, x in leaves}
    if jax.process_count() > 1:  # every process summed its own shards
      from jax.experimental import multihost_utils
      keys = sorted(sums)
      stacked = multihost_utils.process_allgather(np.stack([sums[k] for k in keys]).astype(np.uint32))
      sums = dict(zip(keys, np.asarray(stacked, np.uint64).sum(axis=0) % 2**32))
    return {k: [int(v) for v in s] for k, s in sums.items()}
  sums = jax.device_get(_tree_checksums(tree))
  flat, _ = jax.tree_util.tree_flatten_with_path(sums)
  return {jax.tree_util.keystr(path): [int(v) for v in np.asarray(leaf)] for path, leaf in flat}


def verify_checksums(tree, expected: dict | None, where: str) -> None:
  """Raises ``CheckpointError`` naming the arrays of ``where`` whose bytes differ from those saved."""
  if not expected:
    logging.warning("%s has no checksums (written by an older gpt1_jax): its content cannot be verified", where)
    return
  got = checksums(tree)
  bad = sorted(k for k in expected.keys() & got.keys() if got[k] != expected[k])
  missing = sorted(expected.keys() ^ got.keys())
  if bad or missing:
    raise CheckpointError(f"checkpoint {where} is corrupt: its bytes changed after it was written (checksum "
                          f"mismatch in {', '.join(bad[:5]) or 'none'}{' ...' if len(bad) > 5 else ''}"
                          f"{'; arrays missing or extra: ' + ', '.join(missing[:5]) if missing else ''})")


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):  # DictKey / GetAttrKey (NamedTuple fields) / SequenceKey
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _paths(tree) -> set[str]:
  """Array paths as ``a/b/0/c``: Orbax's saved index turns NamedTuples into dicts, so keys are compared by name."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(_key_name(k) for k in p) for p, leaf in flat if hasattr(leaf, "shape")}


def _tmp_dirs(directory: str) -> list[str]:
  if not os.path.isdir(directory):
    return []
  return sorted(n for n in os.listdir(directory) if "orbax-checkpoint-tmp" in n)


# Failures of the disk or mount rather than of the code: reported in one line (any other save
# failure is re-raised as it is, traceback and all, as a bug).
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_ENVIRONMENT = _DISK_FULL + (errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


def _os_errno(e: BaseException | None) -> int | None:
  """The OS error behind ``e`` or its causes: an ``OSError``'s errno, or the code TensorStore (Orbax's
  array writer) puts in a ``ValueError``'s text, e.g. ``No space left on device [os_error_code='28']``."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno is not None:
      return e.errno
    code = re.search(r"os_error_code='(\d+)'", str(e))
    if code:
      return int(code.group(1))
    e = e.__cause__ or e.__context__
  return None


def _dir_bytes(path: str) -> int:
  total = 0
  for root, _, files in os.walk(path):
    for name in files:
      try:
        total += os.path.getsize(os.path.join(root, name))
      except OSError:
        pass
  return total


def _to_numpy_args(metadata_tree):
  return jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata_tree)


class Checkpoints:
  """The run's ``CheckpointManager``: periodic async saves, keep-last-K, permanent every M."""

  def __init__(self, directory: str, *, keep: int = 3, keep_period: int | None = None, async_save: bool = True):
    self.directory = os.path.abspath(directory) if "://" not in directory else directory
    partial = _tmp_dirs(self.directory)
    if partial and jax.process_index() == 0:
      logging.warning(
          "ignoring and removing incomplete checkpoint(s) in %s (a run was interrupted while "
          "saving): %s", self.directory, ", ".join(partial))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_period or None, create=True,
                                           cleanup_tmp_directories=True, enable_async_checkpointing=async_save)
    # Handlers named up front (not only inferred from the save/restore args) so the saved
    # state's array index can be read without restoring it (check_structure).
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler()
        })
    self.async_save = async_save
    self._writing = None  # the step of an async save not yet known to have succeeded
    self._state_bytes = 0
    self._failed = False

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: dict, meta: dict, *, force: bool = False) -> bool:
    """Starts saving ``step`` (in the background if async); raises ``CheckpointError`` if this save or
    the previous one failed."""
    if not (force or self.manager.should_save(step)):
      self.check()
      return False
    self.wait()  # Orbax waits for the previous save anyway; if it failed, it is reported with its own step
    meta = {**meta, "checksums": checksums(state)}
    self._state_bytes = sum(int(x.nbytes) for x in jax.tree.leaves(state) if hasattr(x, "nbytes"))
    try:
      saved = self.manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)
    except Exception as e:  # noqa: BLE001 - a disk error becomes one line, anything else is re-raised
      raise self._save_failed(step, e) from e
    if saved and self.async_save:
      self._writing = step
    return saved

  def check(self) -> None:
    """Raises ``CheckpointError`` if a background save has failed; never waits for one still writing.

    Cheap (a flag read), so the loop calls it every step: a run whose save failed stops at the next
    step, not a checkpoint interval later, and not after losing more than one interval of work.
    """
    if self._writing is not None and not self.manager.is_saving_in_progress():
      self.wait()

  def _save_failed(self, step: int | None, e: Exception) -> Exception:
    """The error a failed save of ``step`` stops the run with: one line for a disk or mount error."""
    self._failed = True
    code = _os_errno(e)
    if code not in _ENVIRONMENT:
      return e
    local = "://" not in self.directory
    partial = [os.path.join(self.directory, n) for n in _tmp_dirs(self.directory)] if local else []
    # Orbax commits a step by renaming its temporary directory: on a local disk, a step-named
    # directory is complete (the manager's own list may still hold the failed step).
    on_disk = (int(n) for n in os.listdir(self.directory) if n.isdigit()) if local else self.all_steps()
    steps = sorted(s for s in on_disk if s != step)
    if steps:
      intact = f"nothing saved is lost: step {steps[-1]} ({self.step_dir(steps[-1])}) is intact"
      resume = f"resume from step {steps[-1]}"
    else:
      intact = "no earlier checkpoint exists yet"
      resume = "start again from step 0"
    if code in _DISK_FULL:
      space = f"the training state is {fmt_bytes(self._state_bytes)}"
      if local:
        space += f"; {fmt_bytes(shutil.disk_usage(self.directory).free)} is free there now"
        held = sum(_dir_bytes(p) for p in partial)
        if held:
          space += f", plus {fmt_bytes(held)} held by the incomplete save, which the next start deletes"
      what = f"{os.strerror(code).lower()} in {self.directory} ({space})"
      fix = "free space there, or move the workdir to a larger disk (and point --workdir at it)"
    else:
      what = f"{os.strerror(code).lower()} in {self.directory} ({str(e).splitlines()[0][:300]})"
      fix = "make it writable again (check the disk or the mount)"
    return CheckpointError(f"saving checkpoint step {step} failed: {what}. The run stopped; {intact}. To "
                           f"continue, {fix}, then rerun the same command to {resume}")

  def read_meta(self, step: int) -> dict:
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - re-raised with the path
      raise CheckpointError(f"checkpoint {self.step_dir(step)}: cannot read its metadata ({type(e).__name__}: "
                            f"{e})") from e
    return dict(out["meta"])

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def check_structure(self, step: int, abstract_state: dict) -> None:
    """``ValueError`` if the saved state holds other arrays than ``abstract_state`` (another kind of run)."""
    try:
      saved = self.manager.item_metadata(step)["state"]
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"checkpoint {self.step_dir(step)} is corrupt or incomplete: cannot read its array "
                            f"index ({type(e).__name__}: {str(e)[:300]})") from e
    if saved is None:
      raise CheckpointError(f"checkpoint {self.step_dir(step)} is corrupt or incomplete: it has no state index")
    have, want = _paths(saved), _paths(abstract_state)
    if have != want:
      extra, missing = sorted(have - want), sorted(want - have)
      raise ValueError(
          f"checkpoint {self.step_dir(step)} holds another kind of training state than this config builds (it is "
          f"intact; it belongs to another run): arrays only in the checkpoint: {', '.join(extra[:4]) or 'none'}"
          f"{' ...' if len(extra) > 4 else ''}; only in this config: {', '.join(missing[:4]) or 'none'}"
          f"{' ...' if len(missing) > 4 else ''}. Use a new --workdir for this config")

  def restore(self, step: int, abstract_state: dict, expected_checksums: dict | None = None) -> dict:
    """Restores ``state`` into the shardings carried by ``abstract_state`` (ShapeDtypeStructs)."""
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"checkpoint {self.step_dir(step)} is corrupt or incomplete "
                            f"({type(e).__name__}: {str(e)[:500]})") from e
    verify_checksums(out["state"], expected_checksums, self.step_dir(step))
    return out["state"]

  def restore_latest(self, abstract_state: dict, current_model: dict, *, allow_fallback: bool = False,
                     check: Callable[[dict, int], None] | None = None):
    """Latest complete, compatible checkpoint -> ``(state, meta, step)``; ``(None, None, None)`` if none.

    A checkpoint of another model or another kind of run is refused with a
    diff (``ValueError``), as is anything ``check(meta, step)`` raises; the
    refusal happens before anything on disk changes. A corrupt checkpoint
    (unreadable, truncated, or failing its checksums) stops the run unless
    ``allow_fallback``, in which case the previous step is tried and the
    unreadable ones are moved aside. A workdir whose checkpoints are all
    unreadable is refused: starting over there would overwrite its record.
    """
    steps = self.all_steps()
    for i, step in enumerate(reversed(steps)):
      try:
        meta = self.read_meta(step)
        diff = config_diff(meta.get("model", {}), current_model)
        if diff:
          raise ValueError(f"checkpoint {self.step_dir(step)} was trained with another model; refusing to "
                           f"resume:\n" + "\n".join(diff) + "\nuse a new --workdir, or the same model config")
        if check is not None:
          check(meta, step)
        self.check_structure(step, abstract_state)
        state = self.restore(step, abstract_state, meta.get("checksums"))
        if i:
          self._quarantine([s for s in steps if s > step])
          logging.warning(
              "resumed from step %d, the newest good checkpoint: newer steps were unreadable and "
              "were moved to %s", step, self.quarantine_dir)
        return state, meta, step
      except CheckpointError as e:
        if not allow_fallback:
          raise CheckpointError(f"{e}\nset --config.checkpoint.allow_fallback=True to resume from the previous "
                                f"checkpoint instead (steps present: {steps})") from e
        logging.error("%s; falling back to the previous checkpoint", e)
    if steps:
      raise CheckpointError(f"none of the checkpoints in {self.directory} (steps {steps}) can be restored; refusing "
                            f"to start over from step 0 there, which would overwrite that run's metrics and "
                            f"config. Move {self.directory} away to start afresh, or use a new --workdir")
    return None, None, None

  @property
  def quarantine_dir(self) -> str:
    return os.path.join(os.path.dirname(self.directory), "corrupt_checkpoints")

  def _quarantine(self, steps: list[int]):
    """Moves unreadable steps aside (kept for inspection) so the run can save those steps again."""
    if jax.process_index() == 0:
      os.makedirs(self.quarantine_dir, exist_ok=True)
      for s in steps:
        dst = os.path.join(self.quarantine_dir, f"{s}-{int(time.time())}")
        os.replace(self.step_dir(s), dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("gpt1_jax_quarantine")
    self.manager.reload()

  def wait(self):
    """Blocks until the async save in flight is committed; ``CheckpointError`` if it failed."""
    if self._failed:
      return  # already reported: Orbax would raise the same failure again
    step, self._writing = self._writing, None
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001 - see _save_failed
      raise self._save_failed(step, e) from e

  def close(self):
    if self._failed:
      try:  # releases Orbax's threads; the failure it would raise again was reported
        self.manager.close()
      except Exception:  # noqa: BLE001
        pass
      return
    self.wait()
    self.manager.close()


def save_params(directory: str, model_config: ModelConfig, params, *, extra_meta: dict | None = None) -> None:
  """Writes weights (host or device arrays) as a checkpoint that ``load_params`` and ``init.weights`` read."""
  meta = {
      "kind": "params",
      "model": model_config_to_dict(model_config),
      **(extra_meta or {}), "checksums": checksums(params)
  }
  mngr = ocp.CheckpointManager(
      os.path.abspath(directory), options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                                                       enable_async_checkpointing=False),
      item_names=("params", "meta"))
  step = (mngr.latest_step() or 0) + 1 if mngr.latest_step() is not None else 0
  mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)),
            force=True)
  mngr.wait_until_finished()
  mngr.close()


def complete_steps(directory: str) -> list[int]:
  """The committed steps in a checkpoint directory, read without opening (or changing) it: safe on
  a run that is still saving, whose temporary step directories are not listed."""
  return sorted(ocp.step.checkpoint_steps(directory))


def load_params(directory: str, step: int | None = None, *, with_meta: bool = False):
  """``(ModelConfig, params as numpy)`` from a weights checkpoint or a training run.

  ``directory`` may be a ``save_params`` directory, a training run's
  ``checkpoints/`` directory, or its workdir. Only the parameters are read.
  ``with_meta`` also returns the checkpoint's metadata (its task, training config).
  """
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint directory at {directory}")
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    directory = os.path.join(directory, "checkpoints")
  steps = complete_steps(directory)
  step = (steps[-1] if steps else None) if step is None else step
  if step is None:
    raise FileNotFoundError(f"no complete checkpoint in {directory}")
  step_dir = os.path.join(directory, str(step))
  items = set(os.listdir(step_dir))
  # The items are read with their handlers: a read-only CheckpointManager logs four warnings about
  # its own options at every open, and a Checkpointer given an item's directory one more about the
  # step's metadata file, which lies a level up.
  reader = ocp.PyTreeCheckpointHandler()
  try:
    meta = ocp.JsonCheckpointHandler().restore(epath.Path(step_dir) / "meta", args=ocp.args.JsonRestore())
    item = "params" if "params" in items else "state" if "state" in items else None
    if item is None:
      raise CheckpointError(f"{step_dir} has neither 'params' nor 'state' (found {sorted(items)})")
    tree = reader.metadata(epath.Path(step_dir) / item).tree
    # A training state holds the optimiser moments too: read only the params.
    wanted = tree if item == "params" else {"params": tree["params"]}
    out = reader.restore(
        epath.Path(step_dir) / item, args=ocp.args.PyTreeRestore(item=wanted, restore_args=_to_numpy_args(wanted),
                                                                 partial_restore=item == "state"))
    params = out if item == "params" else out["params"]
    sums = meta.get("checksums")
    if sums and item == "state":  # the state's sums cover the optimiser too: keep the params' own
      sums = {k[len("['params']"):]: v for k, v in sums.items() if k.startswith("['params']")}
    verify_checksums(params, sums, step_dir)
  except CheckpointError:
    raise
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"checkpoint {step_dir} is corrupt or unreadable ({type(e).__name__}: "
                          f"{str(e)[:500]})") from e
  finally:
    reader.close()
  if with_meta:
    return model_config_from_dict(meta["model"]), params, dict(meta)
  return model_config_from_dict(meta["model"]), params


def write_json(path: str, obj: Any):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)
