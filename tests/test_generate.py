"""KV-cache generation equals recomputing every prefix, and Hugging Face's greedy search.

Weights are random with ten times GPT-1's init scale (0.2): at 0.02 a random
model with tied embeddings mostly repeats its last token, which would make
"the same tokens" a weak check; much larger scales blow float32 rounding
differences between the cached and the full computation past 1e-5.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_module, xla_compiles
from gpt1_jax import generate as gen
from gpt1_jax.model import GPT1LM, ModelConfig, init_params

CFG = ModelConfig(vocab_size=101, n_ctx=32, n_embd=64, n_head=4, n_layer=2, initializer_range=0.2)
PROMPTS = [[5, 6, 7, 8, 9], [11, 12], [3, 40, 41, 97]]  # lengths 5, 2, 4: left padding differs per row
N = 8


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.key(1))


@pytest.fixture(scope="module")
def greedy(params):
  return gen.generate_with_logits(CFG, params, PROMPTS, max_new_tokens=N, greedy=True)


def recompute_greedy(config, params, prompts, n):
  """Reference without cache or left padding: each step runs the model on the whole sequence so far.

  Rows are right-padded to one fixed length (one compilation); causal
  attention makes what follows a position invisible to it.
  """
  b, total = len(prompts), max(map(len, prompts)) + n
  forward = jax.jit(lambda ids: GPT1LM(config).apply({"params": params}, ids))
  buf = np.zeros((b, total), np.int32)
  for row, p in zip(buf, prompts):
    row[:len(p)] = p
  cur = np.array([len(p) for p in prompts])
  tokens, logits = np.zeros((b, n), np.int64), np.zeros((b, n, config.vocab_size), np.float32)
  for i in range(n):
    step = np.asarray(forward(jnp.asarray(buf)))[np.arange(b), cur - 1]
    logits[:, i], tokens[:, i] = step, step.argmax(-1)
    buf[np.arange(b), cur] = tokens[:, i]
    cur += 1
  return tokens, logits


def test_kv_cache_greedy_equals_recomputing_the_prefix(params, greedy):
  tokens, logits = recompute_greedy(CFG, params, PROMPTS, N)
  np.testing.assert_array_equal(greedy.tokens, tokens)
  np.testing.assert_allclose(greedy.logits, logits, atol=1e-5, rtol=0)
  assert greedy.lengths.tolist() == [N] * len(PROMPTS)
  assert all(len(set(row)) >= 3 for row in tokens.tolist())  # a non-trivial continuation


def test_greedy_matches_hugging_face_generate(params, greedy):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from gpt1_jax.convert import to_hf
  hf_config = transformers.OpenAIGPTConfig(vocab_size=CFG.vocab_size, n_positions=CFG.n_ctx, n_embd=CFG.n_embd,
                                           n_layer=CFG.n_layer, n_head=CFG.n_head, afn="gelu")  # "gelu" = tanh form
  model = transformers.OpenAIGPTLMHeadModel(hf_config).eval()
  model.load_state_dict({k: torch.from_numpy(v) for k, v in to_hf(CFG, params).items()}, strict=True)
  # The argmax is only comparable across implementations if it is not a near tie.
  top2 = np.sort(greedy.logits, axis=-1)[..., -2:]
  assert (top2[..., 1] - top2[..., 0]).min() > 1e-4
  for prompt, ours in zip(PROMPTS, greedy.to_lists()):
    ids = torch.tensor([prompt])  # one prompt per call: HF derives no positions from padding
    with torch.no_grad():
      out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=N, pad_token_id=0,
                           eos_token_id=None)
    assert out[0, len(prompt):].tolist() == ours


def test_top_k_1_and_tiny_top_p_are_greedy(params, greedy):
  expected = greedy.to_lists()
  assert gen.generate(CFG, params, PROMPTS, max_new_tokens=N, top_k=1, temperature=0.7, seed=3) == expected
  assert gen.generate(CFG, params, PROMPTS, max_new_tokens=N, top_p=1e-6, seed=4) == expected


def test_seeded_sampling_is_reproducible_and_seed_dependent(params):

  def sample(seed):
    return gen.generate(CFG, params, PROMPTS, max_new_tokens=N, temperature=1.3, seed=seed)

  assert sample(7) == sample(7)
  assert sample(7) != sample(8)


def test_samples_stay_inside_top_k_and_the_nucleus(params):
  for seed in range(3):
    out = gen.generate_with_logits(CFG, params, PROMPTS, max_new_tokens=N, top_k=3, seed=seed)
    ranks = (out.logits > np.take_along_axis(out.logits, out.tokens[..., None], -1)).sum(-1)
    assert ranks.max() < 3
    out = gen.generate_with_logits(CFG, params, PROMPTS, max_new_tokens=N, top_p=0.5, temperature=0.8, seed=seed)
    probs = jax.nn.softmax(out.logits / 0.8, axis=-1)
    chosen = np.take_along_axis(probs, out.tokens[..., None], -1)
    mass_above = np.where(probs > chosen, probs, 0).sum(-1)  # probability of the strictly more likely tokens
    assert mass_above.max() < 0.5


def test_stop_token_halts_each_row_and_pads_after(params, greedy):
  full = greedy.tokens.tolist()
  stop = full[0][2]
  out = gen.generate_with_logits(CFG, params, PROMPTS, max_new_tokens=N, greedy=True, stop_token=stop)
  for row, ref, got, n in zip(out.tokens.tolist(), full, out.to_lists(), out.lengths):
    cut = ref.index(stop) + 1 if stop in ref else N
    assert got == ref[:cut] and n == cut  # the stop token is included
    assert row[cut:] == [gen.PAD_ID] * (N - cut)
  assert gen.generate(CFG, params, PROMPTS, max_new_tokens=N, greedy=True, stop_token=stop) == out.to_lists()

  # Once every row has stopped the loop ends: later steps are never computed.
  first = full[1][0]
  out = gen.generate_with_logits(CFG, params, [PROMPTS[1]], max_new_tokens=N, greedy=True, stop_token=first)
  assert out.to_lists() == [[first]]
  assert not out.logits[:, 1:].any()


def test_compiled_once_per_shape(params):
  prompts_a = [[1, 2, 3], [4, 5]]
  prompts_b = [[7, 8], [9, 10, 11]]  # same batch, same longest prompt
  with xla_compiles("_decode") as compiles:
    gen.generate(CFG, params, prompts_a, max_new_tokens=5, greedy=True)
    assert len(compiles) == 1
    gen.generate(CFG, params, prompts_b, max_new_tokens=5, temperature=0.5, top_k=7, top_p=0.9, seed=2, stop_token=3)
    gen.generate(CFG, params, prompts_a, max_new_tokens=5, seed=9)
    assert len(compiles) == 1
    gen.generate(CFG, params, prompts_a, max_new_tokens=6)  # a new shape compiles again
    assert len(compiles) == 2


def test_scanned_layers_generate_the_same(params, greedy):
  config = CFG.replace(scan_layers=True)  # per-layer params are stacked to match
  assert gen.generate(config, params, PROMPTS, max_new_tokens=N, greedy=True) == greedy.to_lists()


def test_invalid_requests(params):
  with pytest.raises(ValueError, match="at least one token"):
    gen.generate(CFG, params, [[1], []], max_new_tokens=3)
  with pytest.raises(ValueError, match="exceeds the context of 32"):
    gen.generate(CFG, params, [[1] * 30], max_new_tokens=4)
  with pytest.raises(ValueError, match="temperature"):
    gen.generate(CFG, params, [[1]], max_new_tokens=3, temperature=0.0)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    gen.generate(CFG, params, [[1, 101]], max_new_tokens=3)
  with pytest.raises(ValueError, match="top_p"):
    gen.generate(CFG, params, [[1]], max_new_tokens=3, top_p=0.0)


@pytest.mark.slow
def test_cli_prints_prompt_and_continuation(tmp_path, capsys):
  checkpoint = pytest.importorskip("gpt1_jax.checkpoint")
  tokenizer_module = pytest.importorskip("gpt1_jax.tokenizer")
  try:
    tokenizer = tokenizer_module.GPT1Tokenizer()
  except Exception as e:  # noqa: BLE001 - the tokenizer is tested on its own
    pytest.skip(f"GPT1Tokenizer unavailable: {type(e).__name__}: {e}")
  config = ModelConfig(n_ctx=32, n_embd=16, n_head=2, n_layer=1, initializer_range=0.5)  # full vocabulary
  params = init_params(config, jax.random.key(0))
  checkpoint.save_params(str(tmp_path / "ckpt"), config, params)
  gen.main([
      f"--checkpoint={tmp_path / 'ckpt'}", "--prompt=the quick brown fox", "--prompt=hello", "--max_new_tokens=4",
      "--greedy"
  ])
  lines = capsys.readouterr().out.strip().splitlines()
  prompts = [tokenizer.encode("the quick brown fox"), tokenizer.encode("hello")]
  expected = gen.generate(config, params, prompts, max_new_tokens=4, greedy=True)
  assert lines == [f"{tokenizer.decode(p)} >>> {tokenizer.decode(e)}" for p, e in zip(prompts, expected)]

  # The same prompts as ids (no spaCy needed), and bad ids refused with the flag named.
  gen.main([
      f"--checkpoint={tmp_path / 'ckpt'}", "--prompt_ids=" + ",".join(map(str, prompts[0])),
      "--prompt_ids=" + ",".join(map(str, prompts[1])), "--max_new_tokens=4", "--greedy"
  ])
  assert capsys.readouterr().out.strip().splitlines() == lines
  with pytest.raises(ValueError, match=r"--prompt_ids='1,99999': ids \[99999\] are outside \[0, 40481\)"):
    gen.main([f"--checkpoint={tmp_path / 'ckpt'}", "--prompt_ids=1,99999"])


def test_cli_flags_take_both_spellings_repeat_and_keep_their_defaults():
  from gpt1_jax import errors
  for argv in ([
      "--checkpoint=ck", "--prompt=a, b", "--prompt=c", "--max_new_tokens=5", "--temperature=0.5", "--top_k=-1",
      "--top_p=0.9", "--greedy", "--stop_token=40477", "--seed=3"
  ], [
      "--checkpoint", "ck", "--prompt", "a, b", "--prompt", "c", "--max_new_tokens", "5", "--temperature", "0.5",
      "--top_k", "-1", "--top_p", "0.9", "--greedy", "--stop_token", "40477", "--seed", "3"
  ]):
    F, rest = errors.parse_own_flags(gen.define_flags, gen.PROG, argv)
    assert (F.checkpoint, F.prompt, F.prompt_ids, F.max_new_tokens, F.temperature, F.top_k, F.top_p, F.greedy,
            F.stop_token, F.seed, rest) == ("ck", ["a, b", "c"], None, 5, 0.5, -1, 0.9, True, 40477, 3, [gen.PROG])
  F, _ = errors.parse_own_flags(gen.define_flags, gen.PROG, ["--from_hf=h", "--prompt_ids=1,2", "--prompt_ids=3"])
  assert (F.from_hf, F.prompt_ids, F.max_new_tokens, F.temperature, F.top_k, F.top_p, F.greedy, F.stop_token,
          F.seed) == ("h", ["1,2", "3"], 40, 1.0, 0, 1.0, False, None, 0)
  for argv, words in [(["--prompt=hi"], ["give one of --checkpoint, --from_hf, --from_openai"]),
                      (["--checkpoint=a", "--from_openai=b",
                        "--prompt=hi"], ["--checkpoint", "--from_openai", "exclude each other"]),
                      (["--checkpoint=a"], ["give one of --prompt, --prompt_ids"]),
                      (["--checkpoint=a", "--prompt=x", "--prompt_ids=1"], ["--prompt and --prompt_ids exclude"]),
                      (["--checkpoint=a", "--prompt=x", "--top_p=high"], ["--top_p=high"]),
                      (["--checkpoint=a", "--prompt=x", "more"], ["unexpected arguments: more"])]:
    with pytest.raises(SystemExit) as e:
      gen.main(argv)
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message and all(w in message for w in words), message


@pytest.mark.slow
def test_python_m_generate_help_and_one_line_errors(tmp_path):

  def run(*args):
    return run_module("gpt1_jax.generate", *args)

  r = run("--help")
  assert r.returncode == 0, r.stderr[-2000:]
  assert all(f in r.stdout
             for f in ("--checkpoint", "--from_hf", "--from_openai", "--prompt:", "--prompt_ids", "--max_new_tokens",
                       "--temperature", "--top_k", "--top_p", "--[no]greedy", "--stop_token", "--seed")), r.stdout
  for args, want in [(["--prompt", "hi"], "error: give one of --checkpoint, --from_hf, --from_openai"),
                     (["--checkpoint", str(tmp_path / "missing"), "--prompt_ids", "1,2"], str(tmp_path / "missing"))]:
    r = run(*args)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and want in last, r.stderr[-3000:]
