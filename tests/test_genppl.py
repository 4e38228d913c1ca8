"""gen-ppl against a brute-force loop with a tiny locally built GPT-2 and tokenizer."""

from __future__ import annotations

import math
import time

import pytest
import torch

from dlmbench.context import RunContext
from dlmbench.data import DataSpec, Generation
from dlmbench.errors import ConfigError, HubUnavailableError
from dlmbench.metrics import genppl, proxy
from dlmbench.metrics.genppl import (
    GenPPL, GenPPLConfig, evaluator_context, load_model, load_tokenizer, retokenize, score_chunks, target_weights,
)
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


class RecordingTokenizer:
    """Word-level ids of each text; records the truncation each call asks for. ``attrs``:
    ``model_max_length=...``, or nothing, as a tokenizer without that attribute."""

    def __init__(self, **attrs):
        self.__dict__.update(attrs)
        self.calls = []

    def __call__(self, texts, add_special_tokens, truncation, max_length):
        self.calls.append((add_special_tokens, truncation, max_length))
        rows = [[WORDS.index(w) for w in t.split()] for t in texts]
        return {"input_ids": [row[:max_length] if truncation else row for row in rows]}


@pytest.mark.parametrize("max_length, attrs, limit", [
    (None, {"model_max_length": 4}, 4),  # the tokenizer's own limit
    (None, {"model_max_length": 999_999}, 999_999),
    (None, {"model_max_length": 1_000_000}, None),  # as large as transformers' "no limit" (1e30): none
    (None, {"model_max_length": 10**30}, None),
    (None, {}, None),  # a tokenizer without the attribute
    (3, {"model_max_length": 5}, 3),  # max_length= wins
])
def test_entropy_on_evaluator_ids_asks_the_resolved_tokenizer_for_its_limit(monkeypatch, max_length, attrs, limit):
    """ids='evaluator': the evaluator name goes through resolve_evaluator (with the task and
    the run context: 'proxy' is trained from them), the tokenizer is loaded as the run's
    offline flag says, and the truncation is max_length=, else the tokenizer's
    model_max_length unless that is transformers' huge 'no limit' value."""
    seen = {}
    tokenizer = RecordingTokenizer(**attrs)

    def resolve(name, task, context):
        seen["resolve"] = (name, task, context)
        return f"resolved-{name}"

    def load(name, offline=True):
        seen["load"] = (name, offline)
        return tokenizer

    monkeypatch.setattr(proxy, "resolve_evaluator", resolve)
    monkeypatch.setattr(genppl, "load_tokenizer", load)
    context, task = RunContext(offline=False), task_()
    cfg = EntropyConfig(ids="evaluator", evaluator="an-lm", max_length=max_length)
    text = "the cat the cat sat on"
    mv = UnigramEntropy(cfg, context).compute(gen_([text]), task)
    name, resolved_task, resolved_context = seen["resolve"]
    assert name == "an-lm" and resolved_task is task and resolved_context is context
    assert seen["load"] == ("resolved-an-lm", False)
    assert tokenizer.calls == [(False, limit is not None, limit)]
    ids = [WORDS.index(w) for w in text.split()][:limit]
    assert mv.value == pytest.approx(unigram_entropy(ids))
    assert mv.details["evaluator"] == "an-lm" and mv.details["ids"] == "evaluator"


# --- target weights and the metric's settings, by hand --------------------------------------
def test_target_weights_by_hand():
    """Targets are ids[:, 1:]. Row 1: 5 EOS 6 EOS 7 [pad]; row 2 starts with an (unscored)
    EOS that still counts as the chunk's first. first-eos keeps non-EOS targets and the
    chunk's first EOS, none only non-EOS, all every real target; ELF's sum adds
    [not EOS] + [exactly one EOS so far], so targets after the first EOS and before the
    second count twice; without an EOS id every real target counts. Catches each rule's
    condition, the running EOS count (its axis, its value), padding scored, and an unknown
    rule accepted."""
    ids = torch.tensor([[5, 0, 6, 0, 7, 0], [0, 5, 0, 6, 7, 8]])
    real = torch.tensor([[True] * 5 + [False], [True] * 6])
    expected = {
        ("all", "or"): [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]],
        ("none", "or"): [[0, 1, 0, 1, 0], [1, 0, 1, 1, 1]],
        ("first-eos", "or"): [[1, 1, 0, 1, 0], [1, 0, 1, 1, 1]],
        ("first-eos", "sum"): [[1, 2, 0, 1, 0], [2, 0, 1, 1, 1]],
    }
    for (rule, weights), want in expected.items():
        got = target_weights(ids, real, 0, rule, weights)
        assert got.dtype == torch.int64 and got.tolist() == want, (rule, weights)
    assert target_weights(ids, real, 0, "first-eos").tolist() == expected[("first-eos", "or")]
    for rule in ("first-eos", "none"):
        assert target_weights(ids, real, None, rule).tolist() == expected[("all", "or")]
    with pytest.raises(ConfigError, match="^eos_rule='last' is not 'first-eos', 'all' or 'none'$"):
        target_weights(ids, real, 0, "last")


def long_task():
    """seq_len 9 with a 2-token prefix: the model's continuation is 7 tokens."""
    tok = TextTokenizer.word_level(WORDS)
    empty = torch.zeros(0, 9, dtype=torch.long)
    return TaskData("t", DataSpec(tok.vocab_size, 9, 0, 2, 3, 4, 2), tok, empty, empty)


def test_every_setting_reaches_the_scorer_and_details(evaluator):
    """With every setting off its default (ELF's summed EOS weights, reference padding,
    calls of 3 in batches of 2 with the remainder dropped, chunks of 4, truncation to the
    task's 7-token continuation, blank texts skipped) the value is the scorer's on the
    rows re-tokenized by hand, and details record every setting and count. Catches a
    setting not passed on, a wrong truncation length, and a lost or miscounted detail."""
    cfg = GenPPLConfig(evaluator=evaluator, context=4, max_length="model", batch_size=2, eos_weights="sum",
                       padding="reference", call_size=3, remainder="drop", skip_empty=True, device="cpu")
    texts = TEXTS + ["  "]  # TEXTS holds one empty text: 2 blanks in all, 5 texts scored
    mv = GenPPL(cfg).compute(gen_(texts), long_task())
    tok = load_tokenizer(evaluator)
    rows = [tok(t, add_special_tokens=False)["input_ids"][:7] for t in texts if t.strip()]
    nll, count, kept = score_chunks(load_model(evaluator, "cpu"), rows, context=4, batch_size=2, eos_id=0,
                                    eos_rule="first-eos", padding="reference", call_size=3, remainder="drop",
                                    eos_weights="sum")
    assert kept.tolist() == [True, True, False, True, True]  # the third row: its call's remainder
    total_nll, total = float(nll[kept].sum()), float(count[kept].sum())
    assert mv.value == pytest.approx(math.exp(total_nll / total), rel=1e-12) and mv.stderr is None
    assert mv.n == 4
    assert mv.details.pop("nll_sum") == pytest.approx(total_nll, rel=1e-12)
    assert mv.details.pop("corpus_ppl") == pytest.approx(mv.value, rel=1e-12)
    assert mv.details == {
        "evaluator": evaluator, "eos_rule": "first-eos", "pooling": "corpus", "context": 4, "max_length": 7,
        "padding": "reference", "call_size": 3, "remainder": "drop", "eos_weights": "sum", "precision": "fp32",
        "skip_empty": True, "tokens": int(total), "samples": 7, "skipped_empty": 2, "dropped": 1,
        "unscored_samples": 0,
    }


def test_per_sample_pooling_counts_every_scored_sample_once(evaluator):
    """Per-sample pooling averages exp(NLL / targets) over the samples with a target: a
    two-token text (one target) counts, a one-token text (none) does not, and the mean
    carries the details. Also the corpus value of a single target is that target's
    perplexity. Catches a sample with one target left out, one with none let in, and the
    details dropped."""
    texts = ["dog ran", "the cat sat on a mat", "dog"]
    nll, count = brute_force(evaluator, texts, CONTEXT, "first-eos")
    assert count == [1, 5, 0]
    per = GenPPL(GenPPLConfig(evaluator=evaluator, pooling="per-sample", device="cpu")).compute(gen_(texts), task_())
    ppl = [math.exp(nll[0]), math.exp(nll[1] / 5)]
    assert per.value == pytest.approx(sum(ppl) / 2, rel=1e-9) and per.n == 2
    assert per.stderr == pytest.approx(abs(ppl[0] - ppl[1]) / 2, rel=1e-9)
    assert per.details["unscored_samples"] == 1 and per.details["pooling"] == "per-sample"
    one = GenPPL(GenPPLConfig(evaluator=evaluator, device="cpu")).compute(gen_(texts[:1]), task_())
    assert one.value == pytest.approx(math.exp(nll[0]), rel=1e-9) and one.n == 1


def test_bf16_precision_scores_with_a_bf16_evaluator(evaluator):
    """precision=bf16 scores with the evaluator cast to bfloat16 (ELF), so it equals the
    scorer under that model and differs from fp32. Catches the dtype not chosen or not
    passed to the loader."""
    text = ["the cat sat on a mat and then the dog ran"]
    bf16 = GenPPL(GenPPLConfig(evaluator=evaluator, precision="bf16", device="cpu")).compute(gen_(text), task_())
    fp32 = GenPPL(GenPPLConfig(evaluator=evaluator, device="cpu")).compute(gen_(text), task_())
    rows = [load_tokenizer(evaluator)(text[0], add_special_tokens=False)["input_ids"][:CONTEXT]]
    nll, count, _ = score_chunks(load_model(evaluator, "cpu", dtype=torch.bfloat16), rows, context=CONTEXT,
                                 batch_size=8, eos_id=0, eos_rule="first-eos")
    assert bf16.value == pytest.approx(math.exp(float(nll.sum() / count.sum())), rel=1e-12)
    assert bf16.value != fp32.value and bf16.details["precision"] == "bf16"


def test_gen_ppl_loads_on_the_chosen_device_as_the_run_allows(evaluator, monkeypatch):
    """``device=auto`` is cuda when there is one and cpu otherwise, an explicit device is
    kept, the evaluator and the scoring follow it, and the loaders get the run's offline
    flag (wrapped to record what they are asked for; they still load on the cpu). Catches a
    device, dtype or offline flag not passed on, and a wrong auto choice."""
    calls = []
    monkeypatch.setattr(genppl, "load_tokenizer",
                        lambda name, offline=True: calls.append(("tokenizer", name, offline)) or load_tokenizer(name))
    monkeypatch.setattr(genppl, "load_model", lambda name, device, offline=True, dtype=torch.float32: calls.append(
        ("model", name, device, offline, dtype)) or load_model(name, "cpu", dtype=dtype))

    def scorer(*args, device="cpu", **kwargs):
        calls.append(("score", device))
        return score_chunks(*args, device="cpu", **kwargs)

    monkeypatch.setattr(genppl, "score_chunks", scorer)
    for cuda, device, offline, chosen in [(True, "auto", False, "cuda"), (False, "auto", True, "cpu"),
                                          (True, "cpu", True, "cpu")]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        calls.clear()
        GenPPL(GenPPLConfig(evaluator=evaluator, device=device), RunContext(offline=offline)).compute(
            gen_(["the cat sat"]), task_())
        assert calls == [("tokenizer", evaluator, offline), ("model", evaluator, chosen, offline, torch.float32),
                         ("score", chosen)]


def test_gen_ppl_with_the_proxy_scores_with_the_cached_proxy_and_labels_it(evaluator, tmp_path):
    """``evaluator=proxy`` reads the proxy cached for this task under the run's evaluators
    directory (a saved model put where it is looked for, so nothing trains), scores as that
    model does, and says so in details. Catches resolving the proxy for another task or
    context, and a lost or renamed proxy label."""
    import shutil

    task, context = task_(), RunContext(cache=tmp_path / "cache", offline=True)
    where = proxy.proxy_dir(task, proxy.DEFAULT_CONFIG, context.evaluators)
    shutil.copytree(evaluator, where)
    texts = ["the cat sat on a mat", "dog ran far away"]
    mv = GenPPL(GenPPLConfig(evaluator=proxy.PROXY, device="cpu"), context).compute(gen_(texts), task)
    direct = GenPPL(GenPPLConfig(evaluator=evaluator, device="cpu")).compute(gen_(texts), task)
    assert mv.value == pytest.approx(direct.value, rel=1e-12)
    assert mv.details["evaluator"] == "proxy" and mv.details["evaluator_path"] == str(where)
    assert mv.details["proxy_note"] == proxy.PROXY_NOTE
    assert "evaluator_path" not in direct.details and "proxy_note" not in direct.details


def test_evaluator_context_reads_the_first_positive_integer_field():
    """The context is the first of max_position_embeddings, n_positions, n_ctx that is a
    positive int (a missing, None, non-int or 0 field is skipped); none is a config error
    that says what to set. Catches a field misnamed, the order changed, 0 or 1 misjudged,
    a non-int compared, and a missing field raising AttributeError."""
    import types

    def model(**fields):
        return types.SimpleNamespace(config=types.SimpleNamespace(**fields))

    assert evaluator_context(model(max_position_embeddings=16, n_positions=8, n_ctx=4)) == 16
    assert evaluator_context(model(n_positions=8, n_ctx=4)) == 8
    assert evaluator_context(model(n_ctx=4)) == 4
    assert evaluator_context(model(max_position_embeddings=None, n_positions=0, n_ctx=1)) == 1
    assert evaluator_context(model(max_position_embeddings="1024", n_positions=8)) == 8
    with pytest.raises(ConfigError, match="^gen-ppl: cannot read the evaluator context; set context=$"):
        evaluator_context(model(n_positions=0))


def test_retokenize_adds_no_special_tokens_and_truncates_only_when_asked():
    """Evaluator ids are the text's own, even under a tokenizer whose post-processor wraps
    a text in BOS ... EOS, cut to max_length when one is given, whole otherwise; no texts
    give no rows. Catches special tokens added and truncation dropped or always on."""
    from tokenizers import processors

    tok = build_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{EOS} $A {EOS}", special_tokens=[(EOS, 0)])
    assert tok("dog ran")["input_ids"] == [0, 8, 9, 0]  # what the post-processor would add
    assert retokenize(tok, ["dog ran", "the cat sat on a mat"], None) == [[8, 9], [2, 3, 4, 5, 6, 7]]
    assert retokenize(tok, ["dog ran", "the cat sat on a mat"], 3) == [[8, 9], [2, 3, 4]]
    assert retokenize(tok, [], 3) == []


def test_loaders_name_what_they_miss_and_put_the_model_where_asked(evaluator):
    """Offline (the loaders' default), a hub name not in the cache fails at once naming the
    evaluator and whether its model or tokenizer is missing; a loaded model is on the
    device and in the dtype asked for (the meta device shows a move without a GPU).
    Catches the offline default or flag lost, the wrong part named, and a model left where
    it was loaded."""
    name = "dlmbench-test/not-a-cached-model"
    message = (f"gen-ppl evaluator '{name}' (model) is not in the local cache and the Hugging Face Hub is "
               f"offline; download it once with `huggingface-cli download {name}`, or pass "
               "evaluator=/path/to/a/saved/model")
    with pytest.raises(HubUnavailableError) as error:
        load_model(name, "cpu")
    assert str(error.value) == message
    with pytest.raises(HubUnavailableError,
                       match=rf"^gen-ppl evaluator '{name}' \(tokenizer\) is not in the local cache"):
        load_tokenizer(name)
    with pytest.raises(HubUnavailableError, match=r"\(model\) is not in the local cache"):
        load_model(name, "cpu", offline=True)
    meta = load_model(evaluator, "meta", dtype=torch.bfloat16)
    assert {(p.device.type, p.dtype) for p in meta.parameters()} == {("meta", torch.bfloat16)}
    assert not meta.training


def test_an_answering_hub_is_probed_once_then_its_refusal_explained(monkeypatch):
    """Online, a name not in the cache is probed once (the name, a 10 s timeout): an
    unreachable hub fails at once saying why, while a hub that answers with an HTTP error
    (gated, missing) lets the download try and its failure becomes a config error naming
    the evaluator and the part. Catches the probe's arguments lost, an HTTP answer taken
    for an unreachable hub, and an anonymous error."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    class Gated(HfHubHTTPError):
        def __init__(self):
            Exception.__init__(self, "403 gated")

    probes = []

    def answer(error):
        def model_info(*args, **kwargs):
            probes.append((args, kwargs))
            raise error
        return model_info

    name = "dlmbench-test/not-a-cached-model"
    monkeypatch.setattr(huggingface_hub, "model_info", answer(ConnectionError("Name or service not known")))
    with pytest.raises(HubUnavailableError) as error:
        load_model(name, "cpu", offline=False)
    assert str(error.value) == (f"gen-ppl evaluator '{name}' is not cached and the Hugging Face Hub cannot be "
                                "reached (Name or service not known); pass evaluator=/path/to/a/saved/model")
    assert probes == [((name,), {"timeout": 10.0})]
    monkeypatch.setattr(huggingface_hub, "model_info", answer(Gated()))  # the download then fails: HF_HUB_OFFLINE
    with pytest.raises(ConfigError, match=rf"^evaluator='{name}': cannot load its tokenizer from the hub: "):
        load_tokenizer(name, offline=False)
    assert probes[1:] == [((name,), {"timeout": 10.0})]


def test_load_routes_each_source_and_part_with_its_arguments(tmp_path, monkeypatch):
    """A model goes through the safetensors-only loader (with the evaluator named in its
    errors), a tokenizer through its own ``from_pretrained``; a local path loads as given,
    a hub name from the cache first (``local_files_only=True``), then, online, by name; a
    path that is not there is a config error naming it. Catches a part sent the wrong way,
    its arguments or the cache flag dropped, and a nameless error."""
    calls = []

    class Loader:
        @staticmethod
        def from_pretrained(source, **kwargs):
            calls.append(("tokenizer", source, kwargs))
            if kwargs.get("local_files_only") and "uncached" in source:
                raise OSError("not cached")
            return "loaded"

    def safetensors(loader, source, prefix, **kwargs):
        calls.append(("model", source, prefix, kwargs))
        return loader.from_pretrained(source, **kwargs)

    monkeypatch.setattr(genppl, "from_pretrained_safetensors", safetensors)
    monkeypatch.setattr(genppl, "_probe_hub", lambda name: calls.append(("probe", name)))
    assert genppl._load(Loader, str(tmp_path), "model", offline=True) == "loaded"
    assert calls == [("model", str(tmp_path), f"evaluator={str(tmp_path)!r}:", {}),
                     ("tokenizer", str(tmp_path), {})]
    calls.clear()
    assert genppl._load(Loader, "org/cached", "tokenizer", offline=True) == "loaded"
    assert calls == [("tokenizer", "org/cached", {"local_files_only": True})]
    calls.clear()
    assert genppl._load(Loader, "org/uncached", "model", offline=False) == "loaded"
    assert calls == [("model", "org/uncached", "evaluator='org/uncached':", {"local_files_only": True}),
                     ("tokenizer", "org/uncached", {"local_files_only": True}), ("probe", "org/uncached"),
                     ("model", "org/uncached", "evaluator='org/uncached':", {}), ("tokenizer", "org/uncached", {})]
    missing = str(tmp_path / "no" / "such")
    with pytest.raises(ConfigError) as error:
        genppl._load(Loader, missing, "model", offline=True)
    assert str(error.value) == f"evaluator={missing!r}: no such directory"
