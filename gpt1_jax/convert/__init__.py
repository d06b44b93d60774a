"""Pretrained GPT-1 weights into our parameter tree, and back out to Hugging Face.

Two sources, one target layout (``GPT1LM`` params, per-layer ``h_{i}``):

* Hugging Face ``OpenAIGPTModel`` / ``OpenAIGPTLMHeadModel`` /
  ``OpenAIGPTDoubleHeadsModel`` state dicts (:func:`from_hf`, and
  :func:`from_hf_pretrained` for a saved directory or weights file).
* OpenAI's original release, ``params_shapes.json`` + ``params_{0..9}.npy``
  (:func:`from_openai_release`).

The released token table has 40,478 rows; fine-tuning needs three more
(``_start_``, ``_delimiter_``, ``_classify_``, Section 3.3). As the original
``train.py`` does, those rows are drawn N(0, 0.02) here, from ``seed``.

:func:`to_hf` gives the ``OpenAIGPTLMHeadModel`` state dict; :func:`write_hf`
writes a whole directory that ``transformers`` loads (``config.json``,
safetensors weights, GPT-1's tokenizer files), as the class the checkpoint's
task head maps to (:func:`hf_architecture`). Imported weights are saved with
``gpt1_jax.checkpoint.save_params``::

    python -m gpt1_jax.convert --from=hf --hf_path=/path/to/openai-gpt --out=/tmp/gpt1
    python -m gpt1_jax.convert --from=openai --openai_dir=finetune-transformer-lm/model --out=/tmp/gpt1
    python -m gpt1_jax.convert --to=hf --checkpoint=workdirs/sst2/best --out=/tmp/gpt1-sst2-hf

The package: ``mapping`` (our tree <-> Hugging Face names: :func:`from_hf`, :func:`to_hf`), ``openai``
(the release's files), ``hf_dir`` (a saved Hugging Face directory, read and written), ``cli`` (the
flags and ``main``; ``__main__`` runs it).
"""

from gpt1_jax.convert.cli import PROG, check_out_dir, main
from gpt1_jax.convert.hf_dir import (DEFAULT_MAX_SHARD_BYTES, FOLD_TOLERANCE, HF_HEAD_FILE, HF_RECORD_KEY,
                                     UNMAPPED_HEADS, fold_bias_into_score, from_hf_pretrained, hf_architecture,
                                     load_hf_state_dict, task_of, write_hf)
from gpt1_jax.convert.mapping import (LAYER_KEYS, N_SPECIAL, RELEASE_VOCAB_SIZE, SPECIAL_INIT_STD, ConversionError,
                                      from_hf, from_hf_double_heads, to_hf)
from gpt1_jax.convert.openai import (ARRAYS_PER_LAYER, NUM_SHARDS, from_openai_release, read_openai_release,
                                     read_params_shapes)

__all__ = [
    "ARRAYS_PER_LAYER", "DEFAULT_MAX_SHARD_BYTES", "FOLD_TOLERANCE", "HF_HEAD_FILE", "HF_RECORD_KEY", "LAYER_KEYS",
    "NUM_SHARDS", "N_SPECIAL", "PROG", "RELEASE_VOCAB_SIZE", "SPECIAL_INIT_STD", "UNMAPPED_HEADS", "ConversionError",
    "check_out_dir", "fold_bias_into_score", "from_hf", "from_hf_double_heads", "from_hf_pretrained",
    "from_openai_release", "hf_architecture", "load_hf_state_dict", "main", "read_openai_release", "read_params_shapes",
    "task_of", "to_hf", "write_hf"
]
