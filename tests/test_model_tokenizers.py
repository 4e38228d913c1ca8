"""Per-model tokenizers: one run in which ELF reads a text through a T5-style
SentencePiece vocabulary and MDLM/Duo through a GPT-2-style BPE, judged by one
evaluator, with each model's token count and the text bytes it read in the table.

The tokenizers are the local stand-ins at the reference sizes (32,100 and 50,257 + 1),
so the shapes are the paper's: ELF's decode head has ``len(tokenizer)`` rows, MDLM's and
Duo's vocabulary the released checkpoints' 50,258.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from dlmbench.config import build_run_config
from dlmbench.errors import ConfigError, HubUnavailableError
from dlmbench.leaderboard import render_markdown
from dlmbench.metrics import proxy
from dlmbench.plugins import build_registry, get_plugin_manager
from dlmbench.results import ResultStore
from dlmbench.runner import Runner
from dlmbench.testing.tokenizers import gpt2_standin, t5_standin

pytest.importorskip("transformers")

NOUNS = "cat dog bird farmer river city garden teacher window song letter mountain".split()
VERBS = "sees finds hears paints writes follows remembers carries".split()
ADJS = "old quiet bright small green famous distant gentle".split()


def sentence(rng: random.Random) -> str:
    return (f"The {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} a {rng.choice(ADJS)} "
            f"{rng.choice(NOUNS)} near the {rng.choice(NOUNS)}.")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    rng = random.Random(0)
    lines = [sentence(rng) for _ in range(300)]
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path, lines


@pytest.fixture(scope="module")
def tokenizers(corpus, tmp_path_factory) -> tuple[Path, Path]:
    """A T5-style directory that is also a (tiny, random) T5 encoder, as ``t5-small`` is
    both, and a GPT-2-style tokenizer directory."""
    from transformers import T5Config, T5EncoderModel

    _, lines = corpus
    t5 = tmp_path_factory.mktemp("t5")
    T5EncoderModel(T5Config(vocab_size=32128, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16,
                            dropout_rate=0.0)).save_pretrained(t5, safe_serialization=True)
    t5_standin(lines, t5)
    gpt2 = gpt2_standin(lines, tmp_path_factory.mktemp("gpt2"))
    return Path(t5), Path(gpt2)


def _config(path: Path, t5: Path, gpt2: Path, out: Path, cache: Path, **budget):
    return build_run_config(overrides={
        "name": "tokenizers", "task": f"text:{path}", "task_options": {"packing": "pad", "vocab_size": 400},
        "models": [
            {"name": "elf", "options": {"encoder": "frozen", "encoder_name": str(t5)}},
            {"name": "mdlm", "tokenizer": str(gpt2)},
            {"name": "duo", "tokenizer": str(gpt2)},
        ],
        "metrics": ["gen-ppl", "unigram-entropy"],
        "out": str(out), "cache": str(cache),
        "budget": {"seq_len": 16, "steps": [2], "num_samples": 4, "batch_size": 8, "train_tokens": 8 * 16 * 3,
                   "seeds": [0], "sample_batch_size": 4, "evaluator": "proxy", **budget},
    })


@pytest.fixture(scope="module")
def run(corpus, tokenizers, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(proxy, "DEFAULT_CONFIG", proxy.ProxyConfig(n_layer=1, n_embd=16, n_head=2, steps=5, warmup_steps=1))
    root = tmp_path_factory.mktemp("run")
    config = _config(corpus[0], *tokenizers, root / "out", root / "cache")
    registry = build_registry(get_plugin_manager())
    records = Runner(config, registry, echo=lambda *_: None, progress=False).run()
    yield config, registry, records, ResultStore(config.out_dir)
    mp.undo()


def test_each_model_reads_the_text_through_its_own_tokenizer(run, tokenizers):
    _, _, records, store = run
    t5, gpt2 = tokenizers
    assert all(r.ok for r in records), [r.error for r in records if not r.ok]
    models = {m.model: m for m in store.model_records()}
    assert models["elf"].tokenizer == str(t5) and models["elf"].vocab_size == 32_100  # len(T5 tokenizer)
    assert models["mdlm"].vocab_size == models["duo"].vocab_size == 50_258  # GPT-2 + one appended id
    assert models["mdlm"].tokenizer == models["duo"].tokenizer == str(gpt2)
    cells = {r.model: r for r in records if not r.is_reference}
    assert cells["elf"].tokenizer.name == str(t5) and cells["elf"].tokenizer.mask is False
    assert cells["mdlm"].tokenizer.name == str(gpt2) and cells["mdlm"].tokenizer.mask is True
    # the ids each model sampled are ids of its own vocabulary
    elf_ids = [i for s in store.read_samples(cells["elf"].cell_id) for i in s["ids"]]
    assert max(elf_ids) < 32_100
    # different ids, the same text: one text fingerprint, other data fingerprints
    assert len({r.text_fingerprint for r in records}) == 1
    assert len({r.task_fingerprint for r in records}) == 3  # the task's own BPE, T5-style, GPT-2-style


def test_one_evaluator_judges_every_model(run):
    _, _, records, _ = run
    paths = {r.metrics["gen-ppl"].details["evaluator_path"] for r in records}
    assert len(paths) == 1  # trained once, on the task's own view, not once per tokenizer


def test_the_table_states_each_tokenizer_and_what_it_made_of_the_budget(run, tokenizers):
    config, _, records, store = run
    t5, gpt2 = tokenizers
    models = store.model_records()
    text = render_markdown(records, models)
    assert text.count("## Task") == 1  # one section: the views share the text
    assert "tokens of each model's own tokenizer" in text and "matched in tokens" in text
    assert f"| {t5} (32,100)" in text and f"| {gpt2} (50,258)" in text
    elf = next(m for m in models if m.model == "elf")  # its counts above the tables, in both units
    assert (f"{elf.train_tokens:,} tokens of `{t5}`, 32,100 ids; a row of 16 tokens holds "
            f"{elf.bytes_per_position * 16:.4g} bytes of text on average; {elf.train_bytes:,} bytes") in text
    assert f"data (held-out, {t5})" in text and f"data (held-out, {gpt2})" in text
    assert "not comparable" in text  # unigram-entropy on each model's own ids
    for m in models:  # the same tokens for every model; the bytes each read follow its tokenizer
        assert m.train_tokens == config.budget.counted_train_tokens
        assert m.train_bytes == round(m.train_tokens * m.bytes_per_position)
    assert len({m.train_bytes for m in models}) > 1


def test_a_bytes_budget_gives_each_model_the_steps_that_read_that_much_text(corpus, tokenizers, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(proxy, "DEFAULT_CONFIG", proxy.ProxyConfig(n_layer=1, n_embd=16, n_head=2, steps=5,
                                                                   warmup_steps=1))
    train_bytes = 3000
    config = _config(corpus[0], *tokenizers, tmp_path / "out", tmp_path / "cache", train_bytes=train_bytes)
    config = config.model_copy(update={"models": config.models[:2]})  # elf and mdlm
    records = Runner(config, build_registry(get_plugin_manager()), echo=lambda *_: None, progress=False).run()
    assert all(r.ok for r in records)
    models = {m.model: m for m in ResultStore(config.out_dir).model_records()}
    for m in models.values():  # the fewest whole batches that hold train_bytes of text
        per_batch = m.bytes_per_position * 8 * 16
        assert m.train_steps == -(-train_bytes // per_batch)
        assert train_bytes <= m.train_bytes < train_bytes + per_batch + 1
    assert models["elf"].train_steps != models["mdlm"].train_steps  # other tokenizers, other step counts
    text = render_markdown(records, list(models.values()))
    assert f"training text {train_bytes:,} bytes per model (matched in bytes" in text


def test_a_fixed_vocabulary_task_refuses_a_model_tokenizer(tokenizers, tmp_path):
    _, gpt2 = tokenizers
    config = build_run_config(overrides={"models": [{"name": "mdlm", "tokenizer": str(gpt2)}],
                                         "out": str(tmp_path / "o"), "cache": str(tmp_path / "c")})
    with pytest.raises(ConfigError, match="task 'grammar' has its own fixed vocabulary"):
        Runner(config, build_registry(get_plugin_manager()), echo=lambda *_: None, progress=False).run()


def test_a_hub_tokenizer_offline_fails_before_any_training(corpus, tmp_path):
    from dlmbench.context import RunContext

    config = build_run_config(overrides={
        "task": f"text:{corpus[0]}", "models": ["mdlm", {"name": "duo", "tokenizer": "gpt2-not-cached-here"}],
        "out": str(tmp_path / "o"), "cache": str(tmp_path / "c"),
        "budget": {"seq_len": 16, "num_samples": 4}})
    context = RunContext.create(cache=config.cache, device="cpu", offline=True, offline_reason="a test")
    said: list[str] = []
    with pytest.raises(HubUnavailableError, match="^model duo: tokenizer: hub repository 'gpt2-not-cached-here' .*`hf download gpt2-not-cached-here`$"):
        Runner(config, build_registry(get_plugin_manager()), context=context, echo=said.append,
               progress=False).run()
    assert not any("training" in line for line in said)  # mdlm, the first entry, never started


def test_token_budgets_keep_their_hashes():
    """``train_bytes`` joined the budget without moving any token budget's hash: the
    committed default table's cells are still this preset's."""
    cell = next((Path(__file__).parents[1] / "leaderboard/records/default/cells").glob("*.json"))
    assert build_run_config(overrides={"models": ["mdlm"]}).budget_hash() == json.loads(cell.read_text())["budget_hash"]


def test_the_owt_config_reads_t5_ids_for_elf_and_the_tasks_gpt2_ids_for_the_rest():
    from dlmbench.build import tokenizer_request
    from dlmbench.tokenizer import TokenizerRequest

    config = build_run_config(file=Path(__file__).parents[1] / "configs/owt-small.yaml")
    registry = build_registry(get_plugin_manager())
    requests = {e.name: tokenizer_request(e, config.preset, registry) for e in config.models}
    assert requests.pop("elf") == TokenizerRequest(name="t5-small", mask=False)
    assert all(r.is_default for r in requests.values())  # the owt task's gpt2 (+ [MASK]: 50,258 rows)


def test_stored_samples_are_rescored_through_the_view_each_model_read(run):
    """``dlmbench eval`` decodes each cell with its own model's tokenizer: re-scoring the
    run's own metric reproduces every value, and samples nothing."""
    from dlmbench.config import MetricEntry
    from dlmbench.context import RunContext
    from dlmbench.rescore import rescore

    config, registry, records, store = run
    before = {r.cell_id: r.metrics["unigram-entropy"].value for r in records}
    context = RunContext.create(cache=config.cache, device="cpu", offline=True, offline_reason="a test")
    count, failed = rescore(config.out_dir, [MetricEntry(name="unigram-entropy")], registry, context)
    assert failed == {} and count == len(records)
    after = {r.cell_id: r.metrics["unigram-entropy"].value for r in store.records()}
    assert after == before
