"""Fine-tuning configs, one variant per GPT-1 task: ``--config=configs/finetune.py:sst2``.

Paper defaults (Section 4.1): lr 6.25e-5, batch 32, 3 epochs, linear warmup over
0.2% of training then linear decay to 0, classifier dropout 0.1, lambda = 0.5.
``init.weights``: a gpt1_jax checkpoint or run directory, ``openai:DIR`` (the
original release), ``hf:PATH`` (a Hugging Face ``openai-gpt`` save) or ``none``
(the "no pre-training" ablation). ``task.lm_coef=0`` is the "no auxiliary LM" ablation.
``task.source``: a directory of the official files (``train.tsv``, ``dev.tsv``...)
or ``tfds`` / ``tfds:DATA_DIR``.

The ``*_tiny`` variants fit the tiny pretrained model of the demo on CPU.
"""

import importlib.util
import os

import ml_collections

from gpt1_jax import config

# Loaded by path so the config works from any working directory.
_spec = importlib.util.spec_from_file_location("_gpt1_pretrain_config",
                                               os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py"))
pretrain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pretrain)

# name -> default source: a shipped directory, or tfds. Every task runs at task.max_len = 0,
# i.e. the model's n_ctx (RACE and Story Cloze need the long contexts).
TASKS = {
    "sst2": "data/sst2",
    "cola": "data/cola",
    "mnli": "tfds",
    "snli": "tfds",
    "qnli": "tfds",
    "rte": "data/rte",
    "scitail": "tfds",
    "mrpc": "tfds",
    "qqp": "tfds",
    "stsb": "data/stsb",
    "race": "tfds",
    "story_cloze": "tfds",
}


def finetune(task: str) -> ml_collections.ConfigDict:
  """GPT-1 as pretrained (``pretrain.py:gpt1``) with the paper's fine-tuning; task.* at the defaults of
  gpt1_jax/config.py's ``Task`` (lambda, classifier dropout) but for the task's name and files."""
  c = pretrain.gpt1()
  c.task = config.defaults().task
  c.task.update(name=task, source=TASKS[task])
  c.train.update(num_steps=0, num_epochs=3.0, batch_size=32, learning_rate=6.25e-5, warmup_steps=0,
                 warmup_fraction=0.002, schedule="linear")
  c.checkpoint.update(every_steps=500, keep=2)
  c.eval.every_steps = 500
  return c


def tiny(task: str) -> ml_collections.ConfigDict:
  """The demo's fine-tuning of the tiny pretrained model (2 x 128), same settings for both arms.

  At this scale the paper's lambda = 0.5 drowns the task gradient (the LM loss is ~6 nats
  against ~0.7, under one global-norm clip) and costs ~20x the step time (the 40k-wide output
  layer over every task token), so the tiny variant uses lambda = 0, the paper's own finding
  for small data sets (Table 5). More epochs and a higher learning rate than the paper's: a
  128-wide model needs ~80 updates before it separates the classes at all. Centring or
  shrinking the pretrained token table, re-initialising the special tokens and lower learning
  rates were measured and not adopted (BENCHMARKS.md).
  """
  c = finetune(task)
  c.model = pretrain.tiny().model
  c.task.max_len = c.model.n_ctx
  c.task.lm_coef = 0.0
  # 10% warmup, not the paper's 0.2% (one step here): from random init, a post-LN stack at lr
  # 3e-3 with no warmup stayed at chance on one seed in three (0.525), which would flatter
  # pretraining; with it every seed of either arm trains.
  c.train.update(learning_rate=3e-3, num_epochs=6.0, warmup_fraction=0.1)
  c.checkpoint.every_steps = 100
  c.log.every_steps = 10
  c.eval.update(every_steps=0, batch_size=64)
  return c


def get_config(arg: str = "sst2") -> ml_collections.ConfigDict:
  name = arg[:-5] if arg.endswith("_tiny") else arg
  if name not in TASKS:
    raise ValueError(f"configs/finetune.py:{arg}: unknown task; choose one of {sorted(TASKS)} (or NAME_tiny)")
  return tiny(name) if arg.endswith("_tiny") else finetune(name)
