"""Named evaluation protocols: settings laid under a run's own, stored beside each other,
stated in every table, and applied to stored samples without sampling again."""

from __future__ import annotations

import math

import pytest
import torch

from dlmbench.build import build_metric, build_metrics
from dlmbench.config import MetricEntry, build_run_config
from dlmbench.context import RunContext
from dlmbench.data import Generation
from dlmbench.errors import ConfigError
from dlmbench.leaderboard import render_markdown
from dlmbench.plugins import load_registry
from dlmbench.protocol import PROTOCOLS, get_protocol
from dlmbench.rescore import rescore
from dlmbench.results import ResultStore
from dlmbench.runner import Runner

from test_metric_entries import count_network_rows


@pytest.fixture(scope="module")
def builtins():
    return load_registry(autoload=False)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_every_setting_of_every_protocol_is_an_option_of_its_metric(protocol, builtins):
    """A misspelt setting would otherwise surface only in the run that first uses it."""
    for metric in PROTOCOLS[protocol].settings:
        entry = get_protocol(protocol).apply(MetricEntry(name=metric))
        built = build_metric(entry, builtins, "oracle", RunContext(offline=True))
        for option, value in entry.options.items():
            assert getattr(built.config, option) == value, (protocol, metric, option)


def test_the_entry_own_options_win_over_the_protocol(builtins):
    elf = get_protocol("elf")
    entry = elf.apply(MetricEntry.model_validate("bleu:lowercase=false"))
    assert entry.options == {"lowercase": False, "use_effective_order": True}
    assert get_protocol("dlmbench").apply(MetricEntry(name="bleu")).options == {}


def test_an_unknown_protocol_is_refused_naming_the_known_ones(capsys):
    from test_bad_input import run_cli

    code, lines = run_cli(["validate-config", "--models", "ar", "--protocol", "elff"], capsys)
    assert code == 2 and "protocol = 'elff': unknown protocol; use one of dlmbench, mdlm-duo, elf" in lines[-1]
    with pytest.raises(ConfigError, match="protocol = 'x' is unknown"):
        get_protocol("x")


def _bleu_under(protocol: str, builtins) -> float:
    hyps = ["The cat", "a dog", "Sat"]
    refs = ["the cat sat", "a dog", "sat down"]
    [bleu] = build_metrics([MetricEntry(name="bleu")], builtins, _Refs(refs), "oracle", RunContext(offline=True),
                           get_protocol(protocol))
    generation = Generation(ids=torch.zeros(3, 1, dtype=torch.long), tokens=[[]] * 3, texts=hyps, references=refs)
    return bleu.compute(generation, _Refs(refs)).value


class _Refs:
    def __init__(self, references):
        self.references = references


def test_elf_bleu_is_lowercased_with_effective_order_by_hand(builtins):
    """Lowercased, every unigram (5/5) and bigram (2/2) matches and no hypothesis has a
    trigram, so effective order stops at 2: BLEU = 100 * BP = 100 * exp(1 - 7/5). Cased
    with all four orders (dlmbench's default), the empty trigram precision makes it 0."""
    assert _bleu_under("elf", builtins) == pytest.approx(100 * math.exp(1 - 7 / 5), rel=1e-9)
    assert _bleu_under("dlmbench", builtins) == pytest.approx(0.0, abs=1e-6)


def test_stored_samples_scored_under_another_protocol_sit_beside_the_first_with_zero_nfe(
        toy_config, toy_and_builtins, monkeypatch):
    cfg = toy_config(metrics=["starts-right", "unigram-entropy:ids=model"])
    first = {r.cell_id: r for r in Runner(cfg, toy_and_builtins, echo=lambda *_: None, progress=False).run()}
    rows = count_network_rows(monkeypatch)
    n, failed = rescore(cfg.out_dir, None, toy_and_builtins, RunContext(cache=cfg.cache, offline=True), "mdlm-duo")
    assert n == len(first) and not failed and sum(rows) == 0, "no forward pass: the stored samples were scored"
    records = ResultStore(cfg.out_dir).records()
    for record in records:
        assert set(record.metrics) == {"starts-right", "unigram-entropy", "starts-right@mdlm-duo",
                                       "unigram-entropy@mdlm-duo"}
        for name in ("starts-right", "unigram-entropy"):  # the first results are kept as they were
            assert record.metrics[name] == first[record.cell_id].metrics[name]
        duo = record.metrics["unigram-entropy@mdlm-duo"]
        assert duo.protocol == "mdlm-duo" and duo.config["span"] == "raw"
        assert record.metrics["unigram-entropy"].protocol == "dlmbench"
    text = render_markdown(records)
    assert "### unigram-entropy@mdlm-duo ↑" in text and "Protocol: `mdlm-duo`: the MDLM/Duo code" in text
    assert text.count("Protocol: `dlmbench`: the project's own settings") == 2


def test_a_run_under_a_protocol_records_it(toy_config, toy_registry):
    cfg = toy_config(protocol="elf")
    assert build_run_config(overrides={"models": ["ar"], "protocol": "elf"}).protocol == "elf"
    records = Runner(cfg, toy_registry, echo=lambda *_: None, progress=False).run()
    assert records and all(set(r.metrics) == {"starts-right@elf"} for r in records)
    assert all(r.metrics["starts-right@elf"].protocol == "elf" for r in records)
