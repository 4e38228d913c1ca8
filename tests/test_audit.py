"""dlmbench audit: each factor re-runs the chosen cells in its own process, next to the run,
and its effect is measured against the run's own spread; the run is left as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dlmbench.audit import DEFAULT_FACTORS, Effect, effects
from dlmbench.cli import main


def cli(args: list[str]) -> None:
    try:
        main(args)
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and "audit" not in p.relative_to(root).parts:
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def small_run(tmp_path, monkeypatch):
    """A finished AR run on the grammar, small enough to audit in seconds: 2,000 training
    sentences (10 steps of 64 read 640 of them) instead of the default 50,000, which each
    of the audit's three processes would otherwise generate again."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cli(["run", "--models", "ar", "--steps", "4", "--seeds", "0,1", "--num-samples", "16",
         "--train-tokens", str(64 * 32 * 10), "--name", "small", "--no-progress",
         "--set", "task_options.train_sentences=2000"])
    return tmp_path / "runs" / "small"


def test_the_audit_reruns_each_factor_beside_the_run_and_leaves_the_run_alone(small_run, capsys):
    before = digest(small_run)
    cli(["audit", str(small_run), "--factors", "sample-batch,world,source-truncation", "-o", "audit.md"])
    assert digest(small_run) == before  # nothing of the run changed
    text = Path("audit.md").read_text()
    assert text == (small_run / "audit" / "audit.md").read_text()
    assert "## `sample-batch`: sample_batch_size 256 -> 4" in text  # a quarter of the 16 samples' one batch
    batch = text[text.index("## `sample-batch`"):text.index("## `world`")]
    assert "+0 (0 sd)" not in batch.split("| ar/ancestral")[1].split("|")[4]  # other seeds: other samples
    # sharded sampling under torchrun draws exactly the single-process samples: no effect at all
    world = text[text.index("## `world`"):text.index("## `source-truncation`")]
    assert "| ar/ancestral" in world and "+0 (0 sd)" in world
    assert "## `source-truncation`: not run" in text  # the grammar is unconditional
    assert not list((small_run.parent.parent / ".dlmbench-cache" / "checkpoints").glob("*.tmp"))
    models = list((small_run / "audit" / "world" / "models").glob("*.json"))
    assert models and all("reused_checkpoint" in m.read_text() for m in models)  # sampling factors: no training


def test_an_effect_is_measured_in_the_rows_own_spread():
    from dlmbench.records import CellRecord

    def cell(seed, value, label="m/s"):
        return CellRecord.model_validate({
            "cell_id": f"c{seed}{value}", "status": "ok", "run": "r", "model": "m", "label": label, "sampler": "s",
            "steps": 4, "task": "t", "task_fingerprint": "f", "seed": seed, "budget_hash": "b", "device": "cpu",
            "versions": {}, "metrics": {"acc": {"value": value, "higher_is_better": True}},
            "budget": {"seq_len": 2, "steps": [4], "num_samples": 1, "batch_size": 1, "train_tokens": 2,
                       "seeds": [0, 1]}})

    original = [cell(0, 0.4), cell(1, 0.6)]  # spread: stdev(0.4, 0.6) = 0.1414
    [e] = effects("f", original, [cell(0, 0.5), cell(1, 0.9)])  # mean change (+0.1 + 0.3) / 2 = +0.2
    assert isinstance(e, Effect) and e.cells == 2
    assert e.delta == pytest.approx(0.2) and e.in_spreads == pytest.approx(0.2 / 0.1414213562)


def test_the_default_factors_are_those_that_reuse_the_runs_models():
    assert DEFAULT_FACTORS == ("sample-batch", "threads", "world")
