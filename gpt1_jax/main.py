"""Entry point for pretraining and fine-tuning.

  python -m gpt1_jax.main --config=configs/pretrain.py:gpt1 --workdir=DIR --config.train.num_steps=...
  python -m gpt1_jax.main --config=configs/finetune.py:sst2 --workdir=DIR --config.init.weights=PRETRAIN_DIR

Multi-host: ``--distributed`` initialises ``jax.distributed`` with auto-detection
(Cloud TPU, SLURM); ``--coordinator_address/--num_processes/--process_id`` set it
explicitly (implies ``--distributed``). Resumes automatically from ``DIR``.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from gpt1_jax import config, errors, interrupts, loop
from gpt1_jax.report import quiet_library_logs

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file and variant, e.g. configs/pretrain.py:tiny.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard events.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (auto-detects Cloud TPU / SLURM).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (explicit multi-host).")
flags.DEFINE_integer("process_id", None, "This process's index (explicit multi-host).")
flags.DEFINE_integer("initialization_timeout", 300,
                     "Seconds to wait for every process to join before failing (never hang forever).")
flags.DEFINE_integer("heartbeat_timeout", 60, "Seconds without a heartbeat before a lost process fails the job.")
flags.mark_flags_as_required(["config", "workdir"])


def init_distributed():
  """Must run before anything touches a JAX backend."""
  import jax
  explicit = FLAGS.coordinator_address is not None
  if not (FLAGS.distributed or explicit):
    return
  kwargs = dict(initialization_timeout=FLAGS.initialization_timeout)
  if explicit:
    if FLAGS.num_processes is None or FLAGS.process_id is None:
      raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
    kwargs.update(coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
                  process_id=FLAGS.process_id)
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms == "cpu" or jax.config.jax_platforms == "cpu":
    # CPU devices in several processes talk over gloo (development and CI).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # A host that dies mid-run makes the others fail after this many seconds
  # instead of blocking in a collective forever.
  kwargs["heartbeat_timeout_seconds"] = FLAGS.heartbeat_timeout
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  with interrupts.Watch():  # Ctrl-C before the first step (imports, compiling) exits 75 at once
    quiet_library_logs()
    init_distributed()
    import jax
    if jax.process_index() != 0:
      logging.set_verbosity(logging.WARNING)
    try:
      result = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except loop.Preempted as e:
      sys.exit(e.code)
  logging.info("done: %s", {k: v for k, v in result.items() if not k.startswith("perf/")})


def run():
  sys.argv = config.renamed_flags(sys.argv)  # a renamed key's old spelling still works
  app.run(errors.cli(main), flags_parser=errors.parse_flags)


if __name__ == "__main__":
  run()
