"""Released weights end to end: one ``dlmbench run`` evaluates ELF, MDLM and Duo from
checkpoints in the authors' formats (the golden fixtures of ``tests/fixtures/golden``,
standing in for the hub files), each read through a vocabulary of its checkpoint's size,
and the real released names fail at once offline with the command that downloads them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from dlmbench.cli import main
from dlmbench.metrics import proxy

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
WORDS = [f"w{i}" for i in range(40)]


def word_tokenizer(directory: Path, size: int, specials: dict[str, str]) -> str:
    """A word-level fast tokenizer of exactly ``size`` ids, the ``specials`` first."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = list(dict.fromkeys(specials.values()))
    vocab = {t: i for i, t in enumerate(names + WORDS + [f"<unused {i}>" for i in range(size)])}
    vocab = {t: i for t, i in vocab.items() if i < size}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, **specials).save_pretrained(directory)
    return str(directory)


@pytest.fixture
def released_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(proxy, "DEFAULT_CONFIG", proxy.ProxyConfig(n_layer=1, n_embd=16, n_head=2, steps=5,
                                                                   warmup_steps=1))
    rng = random.Random(0)
    (tmp_path / "corpus.txt").write_text("\n".join(" ".join(rng.choices(WORDS, k=10)) for _ in range(200)) + "\n")
    elf = json.loads((GOLDEN / "elf" / "manifest.json").read_text())
    arch = elf["arch"]
    # T5's layout at the ELF fixture's size (pad 0, EOS 1, nothing appended: 100 rows);
    # GPT-2's at the DiT fixtures' (EOS = BOS = UNK, one id appended: 50 rows)
    t5 = word_tokenizer(tmp_path / "t5-words", arch["vocab_size"],
                        {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"})
    gpt2 = word_tokenizer(tmp_path / "gpt2-words", 49, {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>",
                                                        "unk_token": "<|endoftext|>"})
    config = {
        "name": "released", "task": f"text:{tmp_path / 'corpus.txt'}", "task_options": {"packing": "pad"},
        "models": [
            {"name": "elf", "preset": "B", "weights": str(GOLDEN / "elf" / elf["checkpoint"]["path"]),
             "tokenizer": t5, "sampler": "sde",
             "options": {"encoder_name": str(GOLDEN / "elf" / "t5"), "depth": arch["depth"],
                         "hidden": arch["hidden_size"], "heads": arch["num_heads"],
                         "bottleneck_dim": arch["bottleneck_dim"], "latent_scale": elf["latent_std"],
                         "latent_mean": elf["latent_mean"]}},
            {"name": "mdlm", "weights": str(GOLDEN / "mdlm"), "tokenizer": gpt2},
            {"name": "duo", "weights": f"released:duo-distilled@{GOLDEN / 'duo'}", "tokenizer": gpt2},
        ],
        "budget": {"seq_len": 16, "steps": [4], "seeds": [0], "num_samples": 4, "evaluator": "proxy"},
    }
    (tmp_path / "released.yaml").write_text(json.dumps(config))
    try:
        main(["run", "--config", "released.yaml", "--no-progress"])
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
    return tmp_path / "runs" / "released"


def test_released_checkpoints_of_all_three_run_end_to_end(released_run):
    cells = [json.loads(p.read_text()) for p in (released_run / "cells").glob("*.json")]
    models = {c["model"]: c for c in cells if c["model"] != "data"}
    assert set(models) == {"elf", "mdlm", "duo"}
    assert all(c["status"] == "ok" for c in cells), [c.get("error") for c in cells]
    assert all(c["train_tokens"] is None for c in models.values())  # nothing trained
    records = {json.loads(p.read_text())["model"]: json.loads(p.read_text()) for p in
               (released_run / "models").glob("*.json")}
    assert records["elf"]["vocab_size"] == 100 and records["mdlm"]["vocab_size"] == 50
    assert records["elf"]["weights"]["source"].endswith("checkpoint_1000")
    assert not list(Path(".dlmbench-cache", "checkpoints").glob("*.safetensors"))
    assert list(Path(".dlmbench-cache", "released").glob("*.safetensors"))  # ELF's, converted once
    table = (released_run / "leaderboard.md").read_text()
    assert table.count("released weights `") == 3 and "trained elsewhere" in table
    duo = next(line for line in table.splitlines() if "released weights `released:duo-distilled@" in line)
    assert "trained by the authors on 524B GPT-2 tokens" in duo and "; distilled;" in duo


@pytest.mark.parametrize("model, name, hub", [
    ("elf", "ELF-B-owt", "embedded-language-flows/ELF-B-owt-torch"),
    ("mdlm", "mdlm-owt", "kuleshov-group/mdlm-owt"),
    ("duo", "duo-distilled", "s-sahoo/duo-distilled"),
])
def test_offline_a_real_released_name_fails_at_once_with_the_download(model, name, hub, tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--set", f"models=[{{name: {model}, weights: 'released:{name}'}}]", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 4 and len(err) == 1, err
    assert err[0].startswith(f"error: model {model}: weights released:{name}: hub repository {hub!r} is not in "
                             "the local Hugging Face cache")
    assert err[0].endswith(f"`hf download {hub}` (or `hf download {hub} --local-dir DIR` and give weights: "
                           f"released:{name}@DIR)")
    assert not Path(".dlmbench-cache", "checkpoints").exists()
