"""Pretraining configs: ``--config=configs/pretrain.py:gpt1`` (the paper) or ``:tiny`` (the CPU demo).

Override any key on the command line, e.g. ``--config.train.num_steps=1000``;
the config is locked, so a misspelt key is an error.
"""

import ml_collections

from gpt1_jax import config


def base() -> ml_collections.ConfigDict:
  """The defaults of gpt1_jax/config.py's dataclasses (the model's: GPT-1 as released)."""
  c = config.defaults()
  c.task = ml_collections.ConfigDict(dict(name=c.task.name))  # the other task.* keys are fine-tuning's
  return c


def gpt1() -> ml_collections.ConfigDict:
  c = base()
  # The token table padded to a multiple of 128 rows (40,576): MXU/tensor-core friendly, and
  # divisible by a tensor-parallel axis. Outputs are exactly the unpadded model's.
  c.model.vocab_pad_multiple = 128
  return c


def tiny() -> ml_collections.ConfigDict:
  """The CPU demo: pretraining on IMDB reviews that transfers to SST-2, 12-15 minutes on 2 cores.

  With GPT-1's 40k vocabulary the tied output layer (40,481 x n_embd) and its softmax are
  most of a small model's step (93% of its FLOPs at 2 x 128), so the tiny run trains with a
  sampled softmax (``train.softmax_samples``): 2,048 candidates per step drawn from the corpus's
  unigram, shared by the batch, logQ-corrected. That makes a token ~6x cheaper, so the batch
  grows to 32 x 64 and the run sees 4x the tokens per update at ~8 steps/s on 2 cores: held-out
  perplexity (always the full softmax) 163 after 4,500 steps / 9.5 minutes, where the full-softmax
  recipe (batch 8 x 64) reached 211 after 4,500 steps / 19 minutes. 6,000 steps (12.3M tokens,
  12-15 minutes, perplexity 154) is the default: on the measured curve it is the smallest budget
  whose checkpoint beats random initialisation on every seed both on SST-2 and on the held-back
  IMDb checks (4,500 steps already does on SST-2; BENCHMARKS.md, "Transfer"). Depth is nearly free next to the output layer:
  two 128-wide blocks. Post-LN stacks need a long warmup to leave the unigram plateau (Xiong et
  al. 2020): 300 steps to lr 1e-3. The schedule is then constant, so a checkpoint at step N of a
  long run *is* the model pretrained for N steps: the transfer curve and the demo's budget
  (``--budget``) measure the same models. No dropout (it only slows learning at this scale).
  """
  # No vocabulary padding (base's model.vocab_pad_multiple=1): on CPU the padded logits' slice costs ~15% of a step.
  c = base()
  c.model.update(n_ctx=64, n_embd=128, n_head=4, n_layer=2, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
  c.data.dir = "workdirs/demo/data"
  c.train.update(num_steps=6000, batch_size=32, learning_rate=1e-3, warmup_steps=300, schedule="constant",
                 softmax_samples=2048)
  c.checkpoint.update(every_steps=750, keep=2)
  c.eval.update(every_steps=750, batch_size=64)
  return c


def get_config(arg: str = "gpt1") -> ml_collections.ConfigDict:
  variants = {"gpt1": gpt1, "tiny": tiny}
  if arg not in variants:
    raise ValueError(f"configs/pretrain.py:{arg}: unknown variant; choose one of {sorted(variants)}")
  return variants[arg]()
