"""Named evaluation protocols: "score this the way that paper's code did", in one word.

Each reference measures differently (which padding its Gen PPL scores, in which
precision its evaluator runs, which ids its entropy counts, how its BLEU is cased), and
the differences move numbers by more than the gaps papers report. A protocol is a named
set of metric settings, laid under a run's own metric options (an option the user set
wins, and is recorded):

* ``dlmbench`` (default): the project's own settings, the metrics' defaults: no padding
  is ever scored, nothing is dropped, SacreBLEU's standard cased signature;
* ``mdlm-duo``: the MDLM and Duo code (kuleshov-group/mdlm@c112c52 ``diffusion.py``
  ``compute_generative_perplexity``; s-sahoo/duo@7c9b498 ``metrics.py``), quirks
  included: samples scored in calls of 8 (Duo's sampling batch in ``gen_ppl_owt_duo.sh``),
  each EOS-padded to its longest row with the first padding EOS of shorter rows scored,
  remainders of whole evaluator batches dropped, re-tokenized text truncated at the
  model's length, entropy over the model's whole raw row;
* ``elf``: the ELF code (lillian039/ELF@b29d883 ``src/utils/metrics_utils.py``): GPT-2
  in bf16, batches of 64, all samples in one EOS-padded call (the first padding EOS of
  shorter rows scored), EOS weights summed (not OR-ed),
  blank samples skipped, entropy on the evaluator's re-tokenized ids, lowercased
  effective-order BLEU, ROUGE with the population standard deviation.

A result scored under a protocol other than ``dlmbench`` is stored as ``NAME@PROTOCOL``
beside the default one, so re-scoring stored samples under another protocol (``dlmbench
eval RUN --protocol elf``) adds numbers and never replaces any; each table states its
protocol.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from dlmbench.config import MetricEntry
from dlmbench.errors import ConfigError
from dlmbench.metric import DEFAULT_PROTOCOL as DEFAULT
from dlmbench.metric import result_key


class Protocol(BaseModel):
    """A name, what it reproduces, and ``{metric name: {option: value}}``."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    settings: dict[str, dict[str, Any]] = {}

    def key(self, metric: str) -> str:
        """Where a metric's result is stored in a cell."""
        return result_key(metric, self.name)

    def apply(self, entry: MetricEntry) -> MetricEntry:
        """``entry`` with this protocol's settings under its own options."""
        options = {**self.settings.get(entry.name, {}), **entry.options}
        return entry.model_copy(update={"options": options})


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol(name=DEFAULT, description="the project's own settings, the metrics' defaults"),
    Protocol(
        name="mdlm-duo",
        description="the MDLM/Duo code: Gen PPL in EOS-padded batches of 8 (the first padding "
                    "EOS scored, the remainder dropped, text truncated at the model length); "
                    "entropy over the model's raw rows",
        settings={
            "gen-ppl": {"batch_size": 8, "call_size": 8, "padding": "reference", "remainder": "drop",
                        "max_length": "model",
                        "eos_rule": "first-eos", "pooling": "corpus"},
            "unigram-entropy": {"ids": "model", "span": "raw"},
        },
    ),
    Protocol(
        name="elf",
        description="the ELF code: Gen PPL by the evaluator in bf16, EOS-padded batches of 64 "
                    "(the first padding EOS scored), EOS weights summed, blank samples skipped; "
                    "entropy on re-tokenized ids; lowercased effective-order BLEU; ROUGE with "
                    "the population standard deviation",
        settings={
            "gen-ppl": {"batch_size": 64, "padding": "reference", "precision": "bf16", "eos_weights": "sum",
                        "skip_empty": True, "eos_rule": "first-eos", "pooling": "corpus"},
            "unigram-entropy": {"ids": "evaluator", "skip_empty": True},
            "bleu": {"lowercase": True, "use_effective_order": True},
            "rouge": {"stderr": "population"},
        },
    ),
)}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        from dlmbench.registry import did_you_mean

        raise ConfigError(f"protocol = {name!r} is unknown.{did_you_mean(name, list(PROTOCOLS))}")
    return PROTOCOLS[name]
