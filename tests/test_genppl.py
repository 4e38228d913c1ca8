"""gen-ppl against a brute-force loop with a tiny locally built GPT-2 and tokenizer."""

from __future__ import annotations

import math
import time

import pytest
import torch

from dlmbench.context import RunContext
from dlmbench.data import DataSpec, Generation
from dlmbench.errors import ConfigError, HubUnavailableError
from dlmbench.metrics.genppl import GenPPL, GenPPLConfig
from dlmbench.metrics.text import EntropyConfig, UnigramEntropy, unigram_entropy
from dlmbench.task import TaskData
from dlmbench.tokenizer import TextTokenizer

transformers = pytest.importorskip("transformers")

EOS = "<|endoftext|>"
WORDS = "the cat sat on a mat dog ran far away and then slept".split()
CONTEXT = 8


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {EOS: 0, "[UNK]": 1}
    for w in WORDS:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, unk_token="[UNK]")


def save_evaluator(path, eos_heavy=False):
    tok = build_tokenizer()
    cfg = transformers.GPT2Config(
        vocab_size=len(tok), n_positions=CONTEXT, n_embd=16, n_layer=2, n_head=2,
        bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    if eos_heavy:  # a constant next-token distribution that makes EOS very likely
        with torch.no_grad():
            e = model.transformer.wte.weight[0]
            model.transformer.ln_f.weight.zero_()
            model.transformer.ln_f.bias.copy_(4.0 * e / e.norm() ** 2)
    tok.save_pretrained(path)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    return save_evaluator(tmp_path_factory.mktemp("gpt2-tiny"))


@pytest.fixture(scope="module")
def eos_evaluator(tmp_path_factory):
    return save_evaluator(tmp_path_factory.mktemp("gpt2-eos"), eos_heavy=True)


def task_():
    tok = TextTokenizer.word_level(WORDS)
    spec = DataSpec(tok.vocab_size, 4, 0, 2, 3, 4)
    empty = torch.zeros(0, 4, dtype=torch.long)
    return TaskData("t", spec, tok, empty, empty)


def gen_(texts):
    return Generation(torch.zeros(len(texts), 1, dtype=torch.long), [[] for _ in texts], texts)


TEXTS = [
    "the cat sat on a mat",
    f"{EOS} dog ran far away and then slept the cat sat {EOS} on a mat {EOS} {EOS} the",
    "dog",
    "",
    f"the {EOS} {EOS} cat sat on the mat and then the dog ran far away {EOS} slept",
    "a mat a mat a mat a mat a mat a mat",
]


def brute_force(path, texts, max_length, eos_rule):
    """One text, one chunk at a time, no padding, target by target."""
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).eval()
    eos = tok.eos_token_id
    nll, count = [], []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"][:max_length]
        s, c = 0.0, 0
        for c0 in range(0, len(ids), CONTEXT):
            chunk = ids[c0 : c0 + CONTEXT]
            if len(chunk) < 2:
                continue
            with torch.no_grad():
                logp = model(torch.tensor([chunk])).logits[0].float().log_softmax(-1)
            for t in range(1, len(chunk)):  # the first token is never scored
                is_eos = chunk[t] == eos
                eos_so_far = sum(1 for v in chunk[: t + 1] if v == eos)
                counted = {
                    "all": True,
                    "none": not is_eos,
                    "first-eos": (not is_eos) or eos_so_far == 1,
                }[eos_rule]
                if counted:
                    s += -logp[t - 1, chunk[t]].item()
                    c += 1
        nll.append(s)
        count.append(c)
    return nll, count


@pytest.mark.parametrize("eos_rule", ["first-eos", "all", "none"])
@pytest.mark.parametrize("max_length", [None, 20])
def test_matches_brute_force(evaluator, eos_rule, max_length):
    cfg = GenPPLConfig(evaluator=evaluator, eos_rule=eos_rule, max_length=max_length, batch_size=3, device="cpu")
    mv = GenPPL(cfg).compute(gen_(TEXTS), task_())
    nll, count = brute_force(evaluator, TEXTS, max_length or CONTEXT, eos_rule)
    assert mv.details["tokens"] == sum(count)
    assert mv.details["nll_sum"] == pytest.approx(sum(nll), rel=1e-12)  # exact up to summation order
    assert mv.value == pytest.approx(math.exp(sum(nll) / sum(count)), rel=1e-12)
    assert mv.details["context"] == CONTEXT and mv.details["max_length"] == (max_length or CONTEXT)
    assert mv.details["eos_rule"] == eos_rule and mv.details["pooling"] == "corpus"
    assert mv.stderr is None


def test_batching_does_not_change_the_number(evaluator):
    values = {
        bs: GenPPL(GenPPLConfig(evaluator=evaluator, max_length=20, batch_size=bs, device="cpu"))
        .compute(gen_(TEXTS), task_())
        for bs in (1, 4, 8)
    }
    assert values[1].details["tokens"] == values[4].details["tokens"] == values[8].details["tokens"]
    assert values[1].value == pytest.approx(values[4].value, rel=1e-6)
    assert values[1].value == pytest.approx(values[8].value, rel=1e-6)


def test_eos_rule_direction(eos_evaluator):
    """More EOS targets under all >= first-eos >= none; easy EOS targets lower Gen PPL."""
    texts = [f"the cat {EOS} {EOS} {EOS} sat on", f"dog {EOS} ran {EOS} far"]
    out = {
        rule: GenPPL(GenPPLConfig(evaluator=eos_evaluator, eos_rule=rule, device="cpu")).compute(
            gen_(texts), task_()
        )
        for rule in ("all", "first-eos", "none")
    }
    tokens = {r: v.details["tokens"] for r, v in out.items()}
    assert tokens == {"all": 10, "first-eos": 7, "none": 5}
    assert out["all"].value < out["first-eos"].value < out["none"].value


def test_per_sample_pooling_reads_worse(evaluator):
    texts = ["the cat sat on a mat", "dog ran far away and then", "a a a a a a"]  # 5 targets each
    corpus = GenPPL(GenPPLConfig(evaluator=evaluator, device="cpu")).compute(gen_(texts), task_())
    per = GenPPL(GenPPLConfig(evaluator=evaluator, pooling="per-sample", device="cpu")).compute(
        gen_(texts), task_()
    )
    nll, count = brute_force(evaluator, texts, CONTEXT, "first-eos")
    assert count == [5, 5, 5]
    ppl = [math.exp(a / c) for a, c in zip(nll, count)]
    assert per.value == pytest.approx(sum(ppl) / 3, rel=1e-6)
    assert per.stderr is not None and per.details["pooling"] == "per-sample"
    assert per.value > corpus.value  # Jensen, equal token counts
    assert per.details["corpus_ppl"] == pytest.approx(corpus.value)
    assert corpus.n == per.n == 3  # every value says how many samples it rests on


def test_truncation_scores_fewer_tokens(evaluator):
    long = [" ".join(WORDS)]
    a = GenPPL(GenPPLConfig(evaluator=evaluator, device="cpu")).compute(gen_(long), task_())
    b = GenPPL(GenPPLConfig(evaluator=evaluator, max_length=32, device="cpu")).compute(gen_(long), task_())
    assert a.details["tokens"] == CONTEXT - 1  # truncated to the context, first unscored
    assert b.details["tokens"] == len(WORDS) - 2  # two chunks, each loses its first token


def test_nothing_to_score_is_nan(evaluator):
    mv = GenPPL(GenPPLConfig(evaluator=evaluator, device="cpu")).compute(gen_(["", "dog"]), task_())
    assert math.isnan(mv.value) and mv.details["unscored_samples"] == 2


def test_offline_hub_name_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError):
        GenPPL(GenPPLConfig(evaluator="dlmbench-test/not-a-cached-model")).compute(gen_(["x"]), task_())
    assert time.perf_counter() - start < 10
    with pytest.raises(HubUnavailableError, match="huggingface-cli download"):  # a run's context says so too
        GenPPL(GenPPLConfig(evaluator="dlmbench-test/not-a-cached-model"),
               RunContext(offline=True)).compute(gen_(["x"]), task_())


def test_unreachable_hub_fails_fast(monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False, raising=False)
    monkeypatch.setattr(huggingface_hub, "model_info", no_network)
    with pytest.raises(HubUnavailableError, match="cannot be reached"):
        GenPPL(GenPPLConfig(evaluator="dlmbench-test/not-a-cached-model"),
               RunContext(offline=False)).compute(gen_(["x"]), task_())


def test_missing_local_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        GenPPL(GenPPLConfig(evaluator=str(tmp_path / "nope"))).compute(gen_(["x"]), task_())


def test_entropy_on_evaluator_ids(evaluator):
    texts = ["the cat the cat", "dog ran far"]
    cfg = EntropyConfig(ids="evaluator", evaluator=evaluator, max_length=3)
    mv = UnigramEntropy(cfg).compute(gen_(texts), task_())
    # truncated to 3 evaluator ids: [the, cat, the] and [dog, ran, far]
    expect = [unigram_entropy([1, 2, 1]), math.log(3)]
    assert mv.value == pytest.approx(sum(expect) / 2)
    assert mv.details["ids"] == "evaluator"
