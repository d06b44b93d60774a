"""Pretraining configs: ``--config=configs/pretrain.py:gpt1`` (the paper) or ``:tiny`` (the CPU demo).

Override any key on the command line, e.g. ``--config.train.num_steps=1000``;
the config is locked, so a misspelt key is an error.
"""

import ml_collections


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # gpt1_jax.model.ModelConfig fields; the defaults are GPT-1 as released.
  c.model = ml_collections.ConfigDict(dict(
      vocab_size=40481, n_ctx=512, n_embd=768, n_head=12, n_layer=12,
      embd_pdrop=0.1, attn_pdrop=0.1, resid_pdrop=0.1, layer_norm_epsilon=1e-5, initializer_range=0.02,
      activation="gelu_tanh", dtype="float32", param_dtype="float32", attention="xla", remat="none",
      scan_layers=False, vocab_pad_multiple=128, architecture="transformer", lstm_units=2048))

  c.task = ml_collections.ConfigDict(dict(name="lm"))

  c.data = ml_collections.ConfigDict(dict(
      dir="",  # output of `python -m gpt1_jax.data.prepare`
      seq_len=0,  # 0: model.n_ctx
      check_tokenizer=True,  # the manifest's tokenizer fingerprint must match GPT1Tokenizer's
  ))

  # Section 4.1: Adam, max lr 2.5e-4, linear warmup over 2000 updates then
  # cosine annealing to 0, minibatches of 64 x 512 tokens, modified L2 w = 0.01.
  c.train = ml_collections.ConfigDict(dict(
      num_steps=100_000, batch_size=64, grad_accum_steps=1,
      learning_rate=2.5e-4, warmup_steps=2000, warmup_fraction=0.0, schedule="cosine",
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, grad_clip=1.0,
      on_nonfinite="stop",  # or "skip": keep the old state for that step and count it
      num_epochs=0.0,
      # Positions per chunk of the LM loss's output layer (0: all at once); must
      # divide the sequence length. Saves the [B, T, 40k] logits' memory.
      lm_loss_chunk=0,
      # > 0: train with a sampled softmax over this many candidates drawn from the corpus unigram
      # (shared by the batch) instead of the whole vocabulary; evaluation always uses the full softmax.
      softmax_samples=0,
  ))

  # allow_config_change: resume even when the config changes the run (gpt1_jax/resume.py says which
  # changes are accepted without it).
  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000, keep=3, keep_period=0, every_minutes=0.0, async_save=True, allow_fallback=False,
      allow_config_change=False))
  c.log = ml_collections.ConfigDict(dict(every_steps=50, tensorboard=True, measure_peak=True,
                                         peak_flops_per_device=0.0))
  c.eval = ml_collections.ConfigDict(dict(every_steps=1000, batch_size=0))  # 0: train.batch_size

  # Mesh (data, fsdp, tensor); -1 fills the devices. dcn_* multiply across TPU slices.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1,
                                          num_devices=0))  # num_devices: first N devices only (0: all)
  c.mesh.rules = ml_collections.FieldReference(None, field_type=tuple)  # None: gpt1_jax.sharding.DEFAULT_RULES

  c.init = ml_collections.ConfigDict(dict(weights="none"))
  # Fault injection for the reliability suite: a NaN loss at a step; a
  # preemption (as on SIGTERM: save, exit 75) at a step.
  c.debug = ml_collections.ConfigDict(dict(nan_at_step=-1, preempt_at_step=-1))
  return c


def gpt1() -> ml_collections.ConfigDict:
  return base()


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
  c = base()
  # No vocabulary padding: on CPU the padded logits' slice costs ~15% of a step.
  c.model.update(n_ctx=64, n_embd=128, n_head=4, n_layer=2, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0,
                 vocab_pad_multiple=1)
  c.data.dir = "workdirs/demo/data"
  c.train.update(num_steps=6000, batch_size=32, learning_rate=1e-3, warmup_steps=300, schedule="constant",
                 softmax_samples=2048)
  c.checkpoint.update(every_steps=750, keep=2)
  c.log.every_steps = 50
  c.eval.update(every_steps=750, batch_size=64)
  return c


def get_config(arg: str = "gpt1") -> ml_collections.ConfigDict:
  variants = {"gpt1": gpt1, "tiny": tiny}
  if arg not in variants:
    raise ValueError(f"configs/pretrain.py:{arg}: unknown variant; choose one of {sorted(variants)}")
  return variants[arg]()
