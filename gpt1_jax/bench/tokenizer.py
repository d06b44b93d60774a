"""The tokenizer suite: ``GPT1Tokenizer.encode_batch`` (fresh instance, cold memo) against Hugging Face's.

Both on the same lines (``data/sst2/unlabelled.txt`` by default). Hugging Face's
``OpenAIGPTTokenizer`` skips ftfy, the text standardisation and spaCy, so its ids differ on
some lines: the fraction of identical lines is reported with the speeds.
"""

from __future__ import annotations

import os
import time

from gpt1_jax.bench.options import REPO, Options
from gpt1_jax.bench.pipelines import corpus_lines
from gpt1_jax.tokenizer import GPT1Tokenizer


def tokenizer_suite(opts: Options) -> tuple[dict, list[list[int]]]:
  """``(result, our ids of every line)``: the pipeline suite reuses the ids."""
  lines = corpus_lines(opts.corpus, opts.tokenizer_lines)
  chars = sum(map(len, lines))
  ours = GPT1Tokenizer()  # fresh: empty memos, spaCy not loaded yet
  t = time.perf_counter()
  ours.encode("a")  # setup (loading spaCy's rules), as constructing HF's tokenizer is setup
  setup_s = time.perf_counter() - t
  t = time.perf_counter()
  ids = ours.encode_batch(lines)  # cold memo
  cold_s = time.perf_counter() - t
  t = time.perf_counter()
  ours.encode_batch(lines)
  warm_s = time.perf_counter() - t
  n_ours = sum(map(len, ids))
  result = {
      "corpus": os.path.relpath(opts.corpus, REPO) if opts.corpus.startswith(REPO) else opts.corpus,
      "lines": len(lines),
      "chars": chars,
      "ours": {
          "impl": "gpt1_jax.tokenizer.GPT1Tokenizer.encode_batch (fresh instance)",
          "tokens": n_ours,
          "setup_s": setup_s,
          "seconds": cold_s,
          "tokens_per_s": n_ours / cold_s,
          "lines_per_s": len(lines) / cold_s,
          "tokens_per_s_with_setup": n_ours / (cold_s + setup_s),
          "warm_seconds": warm_s,
          "warm_tokens_per_s": n_ours / warm_s
      }
  }
  try:
    from gpt1_jax.bench import hf_reference  # torch and transformers: only for the comparison
  except ImportError as e:
    result["hf_skipped"] = f"transformers not importable: {e}"
    return result, ids
  t = time.perf_counter()
  hf = hf_reference.hf_tokenizer()
  hf_setup_s = time.perf_counter() - t
  hf("a", add_special_tokens=False)
  t = time.perf_counter()
  hf_ids = hf(lines, add_special_tokens=False)["input_ids"]
  hf_s = time.perf_counter() - t
  n_hf = sum(map(len, hf_ids))
  result["hf"] = {
      "impl": f"transformers.{type(hf).__name__} (vocab=, merges=) batch call",
      "tokens": n_hf,
      "setup_s": hf_setup_s,
      "seconds": hf_s,
      "tokens_per_s": n_hf / hf_s,
      "lines_per_s": len(lines) / hf_s,
      "vocab_size": hf.vocab_size,
      "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "unset (Rust default: on)")
  }
  result["ours_over_hf"] = result["ours"]["tokens_per_s"] / result["hf"]["tokens_per_s"]
  result["identical_lines_fraction"] = sum(a == b for a, b in zip(ids, hf_ids)) / max(len(lines), 1)
  result["note"] = ("Hugging Face's tokenizer skips ftfy, GPT-1's text standardisation and spaCy (it splits on "
                    "whitespace and punctuation), so its ids differ from GPT-1's on some lines")
  return result, ids
