"""What a resume may change: the checkpoint's config against the config given now.

A resume continues one run, so by default it accepts only changes that leave
the trajectory as it would have been:

- where and how the run is observed or stored: ``log.*``, ``checkpoint.*``,
  ``eval.*``, ``debug.*``;
- where it runs: ``mesh.*`` (state is resharded on restore) and data paths
  (``data.dir``, ``task.source``: the data stream's identity is checked
  separately, so moved data is fine and other data is refused);
- ``init.weights`` (ignored on resume: the weights come from the checkpoint),
  ``model.remat`` (same numbers, other memory), ``train.on_nonfinite``;
- ``train.num_steps`` / ``train.num_epochs`` **only if the learning-rate
  schedule of the remaining steps is unchanged** (constant schedules; a longer
  cosine or linear decay would make the rate jump at the resume step).

Every accepted change is logged as a diff. Anything else (learning rate,
seed, batch size, dropout, dtype, the schedule) is refused with the diff
unless ``checkpoint.allow_config_change=True``, which logs it and goes on.

A checkpoint saved before a key existed (or was renamed) is read in today's keys
(``config.upgraded``): the new key at its default, which is what the run did.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import jax.numpy as jnp
import numpy as np

from gpt1_jax import config as config_lib
from gpt1_jax.train import learning_rate_schedule

ACCEPTED_PREFIXES = ("log.", "checkpoint.", "eval.", "debug.", "mesh.", "init.")
ACCEPTED_KEYS = ("data.dir", "task.source", "model.remat", "train.on_nonfinite")
LENGTH_KEYS = ("train.num_steps", "train.num_epochs")


def run_kind(config: dict) -> str:
  name = (config.get("task") or {}).get("name", "lm")
  return "pretraining (task lm)" if name == "lm" else f"fine-tuning on task {name}"


def flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_changes(saved: dict, current: dict) -> dict[str, tuple]:
  """``{dotted key: (checkpoint value, value now)}``, compared as JSON (tuples and lists alike) in
  today's keys, a key missing on either side at its default (``config.upgraded``)."""
  norm = lambda d: flatten(json.loads(json.dumps(config_lib.upgraded(d), default=str)))
  a, b = norm(saved), norm(current)
  return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def _schedule_jump(saved_train: dict, saved_steps: int, train_cfg, num_steps: int, step: int) -> str:
  """'' if both schedules give the same rate on every remaining step both would run, else the first jump."""
  known = {f.name for f in dataclasses.fields(train_cfg)}
  old_cfg = dataclasses.replace(train_cfg, **{k: v for k, v in saved_train.items() if k in known})
  old, new = learning_rate_schedule(old_cfg, saved_steps), learning_rate_schedule(train_cfg, num_steps)
  steps = jnp.arange(step, max(step, min(saved_steps, num_steps)) + 1)
  a, b = np.asarray(old(steps)), np.asarray(new(steps))
  differ = np.flatnonzero(~np.isclose(a, b, rtol=1e-6, atol=1e-12))
  if not differ.size:
    return ""
  i = differ[0]
  return (f"the learning rate at step {int(steps[i])} would be {float(b[i]):.4g} instead of {float(a[i]):.4g} "
          f"({train_cfg.schedule} schedule over {num_steps} steps instead of {saved_steps})")


def check(saved_config: dict, run: config_lib.Run, *, saved_num_steps: int | None, num_steps: int, step: int,
          where: str):
  """Refuses (``ValueError``) a resume that would change the run; logs the accepted changes."""
  current = run.to_dict()
  if run_kind(saved_config) != run_kind(current):
    raise ValueError(f"{where} holds a {run_kind(saved_config)} run, but this config is {run_kind(current)}: "
                     f"the checkpoint is intact, it is another kind of run. Use a new --workdir")
  changes = config_changes(saved_config, current)
  accepted, refused = {}, {}
  for key, (old, new) in changes.items():
    if key.startswith(ACCEPTED_PREFIXES) or key in ACCEPTED_KEYS:
      accepted[key] = (old, new)
    elif key in LENGTH_KEYS:
      (accepted if saved_num_steps is None or saved_num_steps == num_steps else refused)[key] = (old, new)
    else:
      refused[key] = (old, new)
  jump = ""
  if saved_num_steps is not None and saved_num_steps != num_steps and not any(
      k.startswith("train.") and k not in LENGTH_KEYS for k in refused):
    jump = _schedule_jump(config_lib.upgraded(saved_config)["train"], saved_num_steps, run.train, num_steps, step)
    for key in LENGTH_KEYS:
      if key in changes:
        refused.pop(key, None)
        (refused if jump else accepted)[key] = changes[key]
  fmt = lambda d: "\n".join(f"  {k}: checkpoint {a!r} -> now {b!r}" for k, (a, b) in d.items())
  if refused and not run.checkpoint.allow_config_change:
    why = f"\n{jump}" if jump else ""
    raise ValueError(f"resuming {where} with a changed config would change the run it continues:\n{fmt(refused)}"
                     f"{why}\nuse a new --workdir, restore those values, or set "
                     f"--config.checkpoint.allow_config_change=True to resume with them anyway")
  if refused:
    logging.warning("resuming %s with config changes allowed by checkpoint.allow_config_change:\n%s%s", where,
                    fmt(refused), f"\n{jump}" if jump else "")
  if accepted:
    logging.info("resuming %s with these config changes (they do not alter the run):\n%s", where, fmt(accepted))
