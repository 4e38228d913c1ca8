"""The settings that reproduce each reference's evaluation (MDLM, Duo, ELF), each against
a brute-force loop or a hand count, with the tiny local GPT-2 of ``test_genppl``."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from dlmbench.data import DataSpec, Generation
from dlmbench.metrics.genppl import GenPPL, GenPPLConfig
from dlmbench.metrics.text import ROUGE, EntropyConfig, ROUGEConfig, UnigramEntropy, unigram_entropy
from dlmbench.task import TaskData
from dlmbench.tokenizer import TextTokenizer

from test_genppl import CONTEXT, EOS, TEXTS, WORDS, gen_, save_evaluator, task_

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_evaluator(tmp_path_factory.mktemp("gpt2-tiny-ref"))


def ppl(path, texts, task=None, **options):
    return GenPPL(GenPPLConfig(evaluator=path, device="cpu", **options)).compute(gen_(texts), task or task_())


def reference_brute_force(path, texts, max_length, batch_size, call_size=None, drop=False, weights="or"):
    """The references' scorer, row by row: each call's rows EOS-padded to the call's
    longest (attention mask 0 there), its last ``len % min(batch_size, len)`` rows left
    out under ``drop``, and per chunk target ``t`` weighted ``[not EOS] or/+ [exactly one
    EOS in chunk[: t + 1]]``, padding included."""
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).eval()
    eos = tok.eos_token_id
    rows = [tok(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts]
    nll, count = 0.0, 0
    step = call_size or len(rows)
    for g0 in range(0, len(rows), step):
        call = rows[g0 : g0 + step]
        whole = min(batch_size, len(call))
        width = max(map(len, call))
        for r in call[: len(call) // whole * whole] if drop else call:
            ids, mask = r + [eos] * (width - len(r)), [1] * len(r) + [0] * (width - len(r))
            for c0 in range(0, width, CONTEXT):
                chunk, m = ids[c0 : c0 + CONTEXT], mask[c0 : c0 + CONTEXT]
                w = []
                for t in range(1, len(chunk)):
                    not_eos, one_so_far = chunk[t] != eos, chunk[: t + 1].count(eos) == 1
                    w.append(int(not_eos) + int(one_so_far) if weights == "sum" else int(not_eos or one_so_far))
                if not any(w):
                    continue
                with torch.no_grad():
                    logits = model(torch.tensor([chunk]), attention_mask=torch.tensor([m])).logits[0]
                logp = logits.float().log_softmax(-1)
                for t, wt in enumerate(w, start=1):
                    nll += wt * -logp[t - 1, chunk[t]].item()
                    count += wt
    return nll, count


@pytest.mark.parametrize("options", [
    dict(batch_size=4),
    dict(batch_size=4, eos_weights="sum"),
    dict(batch_size=2, call_size=3, remainder="drop"),
    dict(batch_size=4, remainder="drop"),
    dict(batch_size=1, call_size=2),
])
def test_reference_padding_matches_the_brute_force_reference(tiny, options):
    mv = ppl(tiny, TEXTS, max_length=20, padding="reference", **options)
    nll, count = reference_brute_force(
        tiny, TEXTS, 20, options["batch_size"], options.get("call_size"),
        options.get("remainder") == "drop", options.get("eos_weights", "or"),
    )
    assert mv.details["tokens"] == count
    assert mv.details["nll_sum"] == pytest.approx(nll, rel=1e-6)
    assert mv.details["padding"] == "reference"


def test_reference_padding_scores_the_first_padding_eos_of_the_shorter_row(tiny):
    texts = ["the cat sat on a", "dog ran"]  # 5 and 2 evaluator tokens, no EOS
    plain = ppl(tiny, texts, batch_size=2)
    ref = ppl(tiny, texts, batch_size=2, padding="reference")
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny, use_safetensors=True).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny)
    with torch.no_grad():
        ids = torch.tensor([tok("dog ran", add_special_tokens=False)["input_ids"]])
        eos_nll = -model(ids).logits[0, -1].log_softmax(-1)[tok.eos_token_id].item()
    assert ref.details["tokens"] == plain.details["tokens"] + 1 == 4 + 1 + 1
    assert ref.details["nll_sum"] - plain.details["nll_sum"] == pytest.approx(eos_nll, rel=1e-6)
    # one sample per call (MDLM's README: eval_batch_size=1) pads nothing
    alone = ppl(tiny, texts, batch_size=2, padding="reference", call_size=1)
    assert alone.details["tokens"] == plain.details["tokens"]
    assert alone.value == pytest.approx(plain.value, rel=1e-9)
    # one call for all samples (ELF): the evaluator batch does not matter
    split = ppl(tiny, texts, batch_size=1, padding="reference")
    assert split.details["tokens"] == ref.details["tokens"] and split.value == pytest.approx(ref.value, rel=1e-6)


def test_remainder_drop_scores_whole_batches_only(tiny):
    texts = ["the cat sat on a mat", "dog ran far away", "a mat a mat", "then slept", "the dog ran"]
    dropped = ppl(tiny, texts, batch_size=2, remainder="drop")
    first4 = ppl(tiny, texts[:4], batch_size=2)
    assert dropped.n == 4 and dropped.details["dropped"] == 1 and dropped.details["samples"] == 5
    assert dropped.details["tokens"] == first4.details["tokens"] and dropped.value == first4.value
    assert ppl(tiny, texts, batch_size=2).n == 5
    # per call of 2 samples the last call holds one whole batch of 1: nothing is dropped
    assert ppl(tiny, texts, batch_size=2, call_size=2, remainder="drop").n == 5


def test_a_dropped_row_still_widens_its_call_padding(tiny):
    texts = ["the cat sat", "dog ran", "a mat a mat a mat"]  # the longest is dropped
    mv = ppl(tiny, texts, batch_size=2, remainder="drop", padding="reference")
    assert mv.n == 2 and mv.details["tokens"] == (2 + 1) + (1 + 1)  # both rows: their first padding EOS
    nll, count = reference_brute_force(tiny, texts, CONTEXT, 2, drop=True)
    assert count == 5 and mv.details["nll_sum"] == pytest.approx(nll, rel=1e-6)


def test_summed_eos_weights_count_the_targets_between_two_eos_twice(tiny):
    text = [f"the cat {EOS} sat on {EOS} a mat"]  # one chunk of 8: sat and on follow exactly one EOS
    ored, summed = ppl(tiny, text), ppl(tiny, text, eos_weights="sum")
    assert ored.details["tokens"] == 6 and summed.details["tokens"] == 8  # cat EOS sat on a mat (+ sat on)
    tok = transformers.AutoTokenizer.from_pretrained(tiny)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny, use_safetensors=True).eval()
    ids = tok(text[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    twice = -(logp[2, ids[3]] + logp[3, ids[4]]).item()  # sat, on
    assert summed.details["nll_sum"] - ored.details["nll_sum"] == pytest.approx(twice, rel=1e-6)
    assert summed.details["eos_weights"] == "sum"
    with pytest.raises(ValidationError, match="needs eos_rule='first-eos'"):
        GenPPLConfig(eos_weights="sum", eos_rule="none")


def test_bf16_evaluator_is_close_to_fp32_but_not_the_same(tiny):
    texts = TEXTS[:2] + TEXTS[4:]
    fp32, bf16 = ppl(tiny, texts, max_length=20), ppl(tiny, texts, max_length=20, precision="bf16")
    assert bf16.details["precision"] == "bf16" and fp32.details["precision"] == "fp32"
    assert bf16.details["tokens"] == fp32.details["tokens"]
    assert bf16.value != fp32.value and bf16.value == pytest.approx(fp32.value, rel=0.05)


def _task(seq_len, prefix_len):
    tok = TextTokenizer.word_level(WORDS)
    spec = DataSpec(tok.vocab_size, seq_len, 0, 2, 3, 4, prefix_len)
    empty = torch.zeros(0, seq_len, dtype=torch.long)
    return TaskData("t", spec, tok, empty, empty)


def test_max_length_model_truncates_at_the_continuation_length(tiny):
    long = [" ".join(WORDS)]
    mv = ppl(tiny, long, _task(seq_len=6, prefix_len=1), max_length="model")
    assert mv.details["max_length"] == 5 and mv.details["tokens"] == 4  # 5 ids, the first unscored
    assert ppl(tiny, long, _task(seq_len=6, prefix_len=1)).details["tokens"] == CONTEXT - 1


def test_skip_empty_leaves_blank_samples_out_before_scoring(tiny):
    texts = ["the cat sat", " ", "dog ran far", "a mat", "then slept"]
    kept = ppl(tiny, texts, batch_size=2, remainder="drop")  # the blank is unscored, 'then slept' dropped
    skipped = ppl(tiny, texts, batch_size=2, remainder="drop", skip_empty=True)
    assert (kept.n, kept.details["unscored_samples"], kept.details["dropped"]) == (3, 1, 1)
    assert (skipped.n, skipped.details["skipped_empty"], skipped.details["dropped"]) == (4, 1, 0)
    assert skipped.details["skip_empty"] is True


def test_entropy_over_the_raw_row_counts_eos_and_what_follows():
    task = _task(seq_len=6, prefix_len=1)
    ids = torch.tensor([[9, 5, 6, 3, 5, 0], [9, 7, 7, 7, 7, 7]])
    generation = Generation(ids, [[5, 6], [7, 7, 7, 7, 7]], ["x", "y"])
    raw = UnigramEntropy(EntropyConfig(span="raw")).compute(generation, task)
    h_raw = -(0.4 * math.log(0.4) + 3 * 0.2 * math.log(0.2))  # 5 5 | 6 | 3 | 0, then a constant row
    assert raw.value == pytest.approx(h_raw / 2) and raw.details["span"] == "raw"
    assert UnigramEntropy().compute(generation, task).value == pytest.approx(math.log(2) / 2)
    with pytest.raises(ValidationError, match="needs ids='model'"):
        EntropyConfig(ids="evaluator", span="raw")


def test_entropy_skip_empty_leaves_blank_samples_out():
    tokens = [[1, 2], [], [1, 2, 3, 4]]
    generation = Generation(torch.zeros(3, 1, dtype=torch.long), tokens, ["a b", "", "a b c d"])
    every = UnigramEntropy().compute(generation, task_())
    skipped = UnigramEntropy(EntropyConfig(skip_empty=True)).compute(generation, task_())
    assert every.n == 3 and every.value == pytest.approx(math.log(8) / 3)
    assert skipped.n == 2 and skipped.value == pytest.approx(math.log(8) / 2)
    assert skipped.details["skipped_empty"] == 1 and skipped.details["skip_empty"] is True


def test_rouge_population_stderr():
    pytest.importorskip("rouge_score")
    hyps, refs = ["the cat sat", "a dog ran far", "slept"], ["the cat sat down", "a dog", "the cat slept"]
    gen = Generation(torch.zeros(3, 1, dtype=torch.long), [[]] * 3, hyps, refs)
    sample = ROUGE().compute(gen, task_())
    pop = ROUGE(ROUGEConfig(stderr="population")).compute(gen, task_())
    shrink = math.sqrt(2 / 3)
    assert pop.value == sample.value and pop.details["stderr"] == "population"
    assert pop.stderr == pytest.approx(sample.stderr * shrink) and pop.stderr > 0
    for k in ROUGE.kinds:
        assert pop.details[f"{k}_stderr"] == pytest.approx(sample.details[f"{k}_stderr"] * shrink)


def test_settings_at_their_defaults_are_not_written_to_the_config():
    """Results stored before these settings existed still read as scored alike."""
    assert GenPPLConfig().model_dump() == {
        "evaluator": "gpt2-large", "context": None, "max_length": None, "batch_size": 8,
        "eos_rule": "first-eos", "pooling": "corpus", "device": "auto",
    }
    assert EntropyConfig().model_dump() == {"ids": "model", "evaluator": "gpt2-large", "max_length": None}
    assert ROUGEConfig().model_dump() == {"use_stemmer": True}
    elf = GenPPLConfig(padding="reference", precision="bf16", skip_empty=True, max_length="model")
    dumped = elf.model_dump(mode="json")
    assert dumped["padding"] == "reference" and dumped["max_length"] == "model" and "remainder" not in dumped
    assert GenPPLConfig.model_validate_json(elf.model_dump_json()) == elf
