"""Sampling from GPT-1 with the KV cache: one prefill call, then one token per step.

Prompts of different lengths share a batch by LEFT padding to the longest
prompt ``P``: every row's last prompt token then sits in slot ``P - 1`` and all
rows write their new tokens into the same cache slot at each step. Padded
slots are masked out of attention, and position ids count real tokens only,
so a padded row computes exactly what it would alone.

The whole decode (prefill and a ``lax.while_loop`` over steps) is one jitted
function, compiled once per (batch, prompt length, max_new_tokens); sampling
settings are traced values, so changing them does not recompile. The loop
stops early once every row has emitted its stop token.

    python -m gpt1_jax.generate --checkpoint=/tmp/gpt1 --prompt="the meaning of life is" --greedy
    python -m gpt1_jax.generate --from_hf=/path/to/openai-gpt --prompt="..." --top_p=0.9 --temperature=0.8
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt1_jax import errors, weights
from gpt1_jax.model import GPT1LM, ModelConfig
from gpt1_jax.tokenizer import GPT1Tokenizer

PAD_ID = 0  # what finished rows and left padding hold; never attended to


@dataclasses.dataclass
class GenerationOutput:
  """``tokens [B, N]`` (``PAD_ID`` after a row stops), ``lengths [B]`` (new tokens per row,
  stop token included) and, from :func:`generate_with_logits`, ``logits [B, N, V]``: the
  float32 logits each token was chosen from (before temperature / top-k / top-p; zeros for
  steps not taken)."""

  tokens: np.ndarray
  lengths: np.ndarray
  logits: Optional[np.ndarray] = None

  def to_lists(self) -> list[list[int]]:
    return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths)]


def _sample(logits, key, temperature, top_k, top_p, greedy):
  """One token per row from float32 ``logits [B, V]``.

  Works in descending-sorted order so that top-k and top-p are masks on a
  prefix and k, p can be traced values. top-p (nucleus) keeps the smallest
  prefix whose probability reaches ``top_p``, measured after top-k, as
  Hugging Face does; the most likely token is always kept.
  """
  v = logits.shape[-1]

  def unfiltered(_):
    # Greedy or plain temperature sampling needs no sort: a 40k-wide sort per
    # row is most of a small model's decode step on CPU.
    sampled = jax.random.categorical(key, logits / temperature, axis=-1)
    return jnp.where(greedy, jnp.argmax(logits, axis=-1), sampled)  # argmax: lowest id among ties

  def filtered(_):
    order = jnp.argsort(-logits, axis=-1, stable=True)  # ties: lowest id first, like argmax
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1) / temperature
    rank = jnp.arange(v)[None, :]
    keep = (top_k <= 0) | (rank < top_k)
    masked = jnp.where(keep, sorted_logits, -jnp.inf)
    probs = jax.nn.softmax(masked, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = keep & ((mass_before < top_p) | (rank == 0))
    choice = jax.random.categorical(key, jnp.where(keep, sorted_logits, -jnp.inf), axis=-1)
    return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0]

  plain = greedy | ((top_k <= 0) & (top_p >= 1.0))
  return jax.lax.cond(plain, unfiltered, filtered, None).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "return_logits"))
def _decode(params, input_ids, prompt_lengths, rng, temperature, top_k, top_p, greedy, stop_token, *,
            config: ModelConfig, max_new_tokens: int, return_logits: bool):
  b, p = input_ids.shape
  n = max_new_tokens
  cache_len = p + n - 1  # the last new token is never fed back
  model = GPT1LM(config)

  # Slot s < P is real iff it holds a prompt token; every generated slot is real.
  slots = jnp.arange(cache_len)[None, :]
  slot_mask = ((slots >= p - prompt_lengths[:, None]) | (slots >= p)).astype(jnp.int32)
  prompt_mask = slot_mask[:, :p]
  prompt_pos = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)

  def init_cache():
    return model.init(jax.random.key(0), jnp.zeros((b, cache_len), jnp.int32), attention_mask=slot_mask,
                      position_ids=jnp.zeros((b, cache_len), jnp.int32), decode=True)["cache"]

  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(init_cache))

  def step(cache, ids, positions):
    logits, updated = model.apply({
        "params": params,
        "cache": cache
    }, ids, attention_mask=slot_mask, position_ids=positions, decode=True, mutable=["cache"])
    return logits[:, -1].astype(jnp.float32), updated["cache"]

  def choose(logits, i, done):
    tok = _sample(logits, jax.random.fold_in(rng, i), temperature, top_k, top_p, greedy)
    tok = jnp.where(done, PAD_ID, tok)
    return tok, done | (tok == stop_token)

  logits, cache = step(cache, input_ids, prompt_pos)
  tok, done = choose(logits, 0, jnp.zeros((b,), bool))
  tokens = jnp.full((b, n), PAD_ID, jnp.int32).at[:, 0].set(tok)
  all_logits = jnp.zeros((b, n, logits.shape[-1]) if return_logits else (0,), jnp.float32)
  if return_logits:
    all_logits = all_logits.at[:, 0].set(logits)

  def cond(state):
    i, _, _, done, _, _ = state
    return (i < n) & ~jnp.all(done)

  def body(state):
    i, cache, tok, done, tokens, all_logits = state
    # Token i-1 sits at position length + i - 1 (positions count real tokens only).
    logits, cache = step(cache, tok[:, None], (prompt_lengths + i - 1)[:, None])
    tok, done = choose(logits, i, done)
    tokens = tokens.at[:, i].set(tok)
    if return_logits:
      all_logits = all_logits.at[:, i].set(logits)
    return i + 1, cache, tok, done, tokens, all_logits

  state = (jnp.int32(1), cache, tok, done, tokens, all_logits)
  _, _, _, _, tokens, all_logits = jax.lax.while_loop(cond, body, state)
  return tokens, all_logits


def generate_with_logits(config: ModelConfig, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                         temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
                         stop_token: Optional[int] = None, seed: int = 0,
                         return_logits: bool = True) -> GenerationOutput:
  """:func:`generate`, returning the padded token array, lengths and per-step logits."""
  if config.architecture != "transformer":
    raise ValueError("generation uses the KV cache, which only the transformer has")
  if not prompts:
    raise ValueError("no prompts")
  lengths = [len(p) for p in prompts]
  if min(lengths) == 0:
    raise ValueError("every prompt needs at least one token (GPT-1 has no begin-of-text token; "
                     "start with _start_ if you need one)")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  longest = max(lengths)
  if longest + max_new_tokens - 1 > config.n_ctx:
    raise ValueError(f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the context of "
                     f"{config.n_ctx} positions")
  if not greedy and temperature <= 0:
    raise ValueError(f"temperature must be > 0 (got {temperature}); use greedy=True for argmax decoding")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  for p in prompts:
    bad = [t for t in p if not 0 <= t < config.vocab_size]
    if bad:
      raise ValueError(f"token ids {bad[:5]} are outside the vocabulary of {config.vocab_size}")

  ids = np.full((len(prompts), longest), PAD_ID, np.int32)
  for row, p in zip(ids, prompts):
    row[longest - len(p):] = p
  tokens, logits = _decode(weights.lm_params(config, params), jnp.asarray(ids), jnp.asarray(lengths, jnp.int32),
                           jax.random.key(seed), jnp.float32(temperature if not greedy else 1.0), jnp.int32(top_k),
                           jnp.float32(top_p), jnp.bool_(greedy), jnp.int32(-1 if stop_token is None else stop_token),
                           config=config, max_new_tokens=int(max_new_tokens), return_logits=return_logits)
  tokens = np.asarray(tokens)
  out_lengths = np.full(len(prompts), max_new_tokens, np.int64)
  if stop_token is not None:
    for r, row in enumerate(tokens):
      hits = np.flatnonzero(row == stop_token)
      if hits.size:
        out_lengths[r] = hits[0] + 1
  return GenerationOutput(tokens, out_lengths, np.asarray(logits) if return_logits else None)


def generate(config: ModelConfig, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
             stop_token: Optional[int] = None, seed: int = 0) -> list[list[int]]:
  """Continues each prompt (a list of token ids) by up to ``max_new_tokens`` tokens.

  Returns the new tokens only, one list per prompt. A row ends at
  ``max_new_tokens`` or just after it emits ``stop_token``, which is included
  as its last element. ``greedy`` takes the argmax (temperature, top-k and
  top-p are then ignored); otherwise tokens are sampled from
  ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely
  (0: all) and then to the nucleus of mass ``top_p``. The same ``seed`` and
  inputs give the same tokens.
  """
  return generate_with_logits(config, params, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, greedy=greedy, stop_token=stop_token, seed=seed,
                              return_logits=False).to_lists()


def _parse_ids(text: str, vocab_size: int) -> list[int]:
  try:
    ids = [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"--prompt_ids={text!r}: expected comma-separated integers") from None
  bad = [i for i in ids if not 0 <= i < vocab_size]
  if not ids or bad:
    raise ValueError(f"--prompt_ids={text!r}: " + (f"ids {bad[:5]} are outside [0, {vocab_size})" if bad else "empty"))
  return ids


PROG = "python -m gpt1_jax.generate"
_SOURCES = ("checkpoint", "from_hf", "from_openai")
_PROMPTS = ("prompt", "prompt_ids")


def define_flags(flag_values=None) -> None:
  """The command's flags, on ``flag_values`` (default absl's global ``FLAGS``)."""
  from absl import flags
  fv = dict(flag_values=flags.FLAGS if flag_values is None else flag_values)
  flags.DEFINE_string(
      "checkpoint", None, "A gpt1_jax.checkpoint weights checkpoint or training workdir "
      "(one of --checkpoint, --from_hf, --from_openai).", **fv)
  flags.DEFINE_string("from_hf", None, "A saved Hugging Face OpenAI-GPT model (directory or weights file).", **fv)
  flags.DEFINE_string("from_openai", None, "OpenAI's release directory (params_shapes.json, params_*.npy).", **fv)
  flags.DEFINE_multi_string("prompt", None, "Text; repeat for a batch (one of --prompt, --prompt_ids)", **fv)
  flags.DEFINE_multi_string(
      "prompt_ids", None, "Token ids, comma-separated; repeat for a batch (no spaCy needed, "
      "e.g. on a bare GPU image)", **fv)
  flags.DEFINE_integer("max_new_tokens", 40, "New tokens per prompt (at most).", **fv)
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature (> 0).", **fv)
  flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens only (0: all).", **fv)
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: the smallest set of tokens of this probability mass.", **fv)
  flags.DEFINE_bool("greedy", False, "Argmax decoding (temperature, top-k and top-p are then ignored).", **fv)
  flags.DEFINE_integer("stop_token", None, "Token id that ends a row (e.g. 40477, newline).", **fv)
  flags.DEFINE_integer("seed", 0, "Sampling seed.", **fv)


def _one_of(F, names) -> str:
  """The one flag of ``names`` that was given; anything else ends in one ``error:`` line."""
  given = [n for n in names if F[n].value is not None]
  if len(given) > 1:
    raise SystemExit(f"error: --{given[0]} and --{given[1]} exclude each other")
  if not given:
    raise SystemExit(f"error: give one of {', '.join('--' + n for n in names)}")
  return given[0]


def _run(F, argv=(PROG,)) -> None:
  """The command, on parsed flags ``F``; ``argv``: what ``app.run`` leaves (positional arguments)."""
  errors.no_arguments(argv)
  source = _one_of(F, _SOURCES)
  _one_of(F, _PROMPTS)
  spec = {"checkpoint": F.checkpoint, "from_hf": f"hf:{F.from_hf}", "from_openai": f"openai:{F.from_openai}"}[source]
  config, params = weights.load(spec)

  tokenizer = GPT1Tokenizer()
  if F.prompt_ids:
    prompts = [_parse_ids(text, config.vocab_size) for text in F.prompt_ids]
  else:
    prompts = tokenizer.encode_batch(F.prompt)
  outputs = generate(config, params, prompts, max_new_tokens=F.max_new_tokens, temperature=F.temperature, top_k=F.top_k,
                     top_p=F.top_p, greedy=F.greedy, stop_token=F.stop_token, seed=F.seed)
  for prompt_ids, new in zip(prompts, outputs):
    print(f"{tokenizer.decode(prompt_ids)} >>> {tokenizer.decode(new)}")


def main(argv: Optional[Sequence[str]] = None) -> None:
  """``python -m gpt1_jax.generate ARGS`` from Python: ``main(["--checkpoint=DIR", "--prompt=hi"])``.

  ``argv``: the flags, as on the command line (default ``sys.argv[1:]``), parsed into a ``FlagValues``
  of their own. Flag mistakes raise ``SystemExit("error: ...")``; other errors propagate.
  """
  _run(*errors.parse_own_flags(define_flags, PROG, argv))


if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module
  # never clashes with another entry point's flags.
  from absl import app

  from gpt1_jax import errors
  define_flags()
  app.run(errors.cli(errors.absl_main(_run)), flags_parser=errors.parse_flags_help_ok)
