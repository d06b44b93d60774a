"""Zero-shot behaviours of the pretrained LM (Section 5, "Zero-shot Behaviors"; Figure 2 right).

The paper asks whether pretraining alone teaches the model the tasks it is
later fine-tuned on, by reading task answers off the language model with no
task training at all. The heuristics, on the same task registry and data
sources as fine-tuning (``data/tasks.py``), with ``[s]`` = ``_start_``:

* **SST-2**: ``[s] sentence very`` -> the LM's next-token log-probabilities of
  ``negative`` and ``positive`` (the label names, single tokens); the more
  probable one is the prediction. Metric: accuracy.
* **CoLA**: the average token log-probability of ``[s] sentence``; a sentence
  is predicted acceptable iff its score is >= a threshold. The threshold is
  ``--cola_threshold`` if given, else fitted on the train split to maximise
  MCC (``--fit_threshold_on=train``), else, by default, **the median score of
  the evaluated split itself** (half the sentences predicted acceptable; MCC
  then measures only how well the scores rank the sentences). Metric: MCC.
* **RACE, Story Cloze** (and any multiple-choice task of the registry): per
  candidate, the average token log-probability of the answer tokens given
  ``[s] document question`` (Story Cloze: ``[s] story``); the highest wins.
  RACE's cloze-style questions keep their blank as written. Metric: accuracy.
  The generic form is :meth:`Scorer.score_candidates`. (Story Cloze's ``dev``
  is the fine-tuning held-out fifth, 374 stories; ``--split=test`` scores the
  1,871 test stories.)
* **Winograd-style pronoun resolution** (DPRD / WSC / WinoGrande; not in the
  task registry): each candidate replaces the blank and the candidate under
  which the rest of the sentence after the substitution is more probable
  (average token log-probability, as the paper and Trinh & Le 2018's
  "partial" scoring) wins; ``--winograd_scoring=full`` scores the whole
  substituted sentence instead. Input: a local JSONL file in WinoGrande's
  format, one problem a line::

      {"sentence": "The trophy does not fit in the suitcase because _ is too big.",
       "option1": "the trophy", "option2": "the suitcase", "answer": 1}

  ``sentence`` holds exactly one ``_`` (the pronoun to resolve), ``answer`` is
  1 or 2 (an int or WinoGrande's string; absent: unlabelled). Metric: accuracy.

Scoring is batched and jitted: sequences are right-padded to buckets of 32
positions (at most ``n_ctx``), sorted by length, and run in fixed-size
batches, so XLA compiles once per (batch, bucket) shape and checkpoints of
one run share the compiled functions. A sequence longer than ``n_ctx`` loses
context tokens from its front (after the leading ``_start_``), never the
answer being scored. Right padding is exact: causal attention never lets a
real token see the padding after it.

    python -m gpt1_jax.zeroshot --checkpoint=workdirs/pretrain --task=sst2 --source=data/sst2
    python -m gpt1_jax.zeroshot --from_hf=/path/to/openai-gpt --task=cola --fit_threshold_on=train
    python -m gpt1_jax.zeroshot --checkpoint=DIR --task=winograd --source=wsc.jsonl
    python -m gpt1_jax.zeroshot --run=workdirs/pretrain --tasks=sst2,cola --curve_out=/tmp/curve

The last form evaluates every checkpoint step of a pretraining run and writes
``zeroshot_curve.json`` (step -> task -> score), prints a markdown table, and
plots ``zeroshot_curve.png`` (score vs pretraining step, one line per task,
chance levels dashed): the paper's Figure 2 (right) for your run, in raw
scores where the paper normalises each task between chance and the state of
the art. Steps
already in the JSON with the same settings are not evaluated again, so the
command can follow a run that is still training.

The package: ``scoring`` (the jitted log-probabilities, ``Scorer``),
``heuristics`` (one class per kind of task), ``suite`` (building a task's
heuristic from its data, running and reporting a suite), ``curve`` (the
pretraining curve), ``cli`` (the flags and ``main``; ``__main__`` runs it).
"""

from gpt1_jax.zeroshot.cli import define_flags, main  # noqa: F401 - re-exported
from gpt1_jax.zeroshot.curve import CURVE_JSON, CURVE_PNG, checkpoint_steps, curve, markdown_table, plot_curve
from gpt1_jax.zeroshot.heuristics import (WINOGRAD, WINOGRAD_SCORING, Acceptability, MultipleChoice, Sentiment,
                                          Winograd, WinogradExample, fit_threshold, read_winograd)
from gpt1_jax.zeroshot.scoring import BUCKET, Scorer, fit_context
from gpt1_jax.zeroshot.suite import (build, default_source, evaluate, load_model, summary, supported_tasks,
                                     write_predictions)

__all__ = [
    "BUCKET", "CURVE_JSON", "CURVE_PNG", "WINOGRAD", "WINOGRAD_SCORING", "Acceptability", "MultipleChoice", "Scorer",
    "Sentiment", "Winograd", "WinogradExample", "build", "checkpoint_steps", "curve", "default_source", "evaluate",
    "fit_context", "fit_threshold", "load_model", "main", "markdown_table", "plot_curve", "read_winograd", "summary",
    "supported_tasks", "write_predictions"
]
