"""``dlmbench run --smoke``: the paper configs build, train, sample and score offline at
their true model sizes (slow: all three at their true lengths; default: OWT at 16 tokens)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlmbench.config import build_run_config
from dlmbench.errors import ConfigError
from dlmbench.results import load_records
from dlmbench.smoke import smoke_config

ROOT = Path(__file__).resolve().parents[1]
#: the reduced smoke's length: gen-ppl's GPT-2 Large head scores every evaluator token of
#: the decoded samples (random ids decode to long text), so its cost grows with it
SEQ_LEN = 16


def smoke(config: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """``dlmbench run --smoke`` as a user runs it: a fresh process, whose peak memory is the run's own."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dlmbench", "run", "--config", str(ROOT / "configs" / config),
                           "--smoke", "--no-progress", "--out", str(tmp_path / "runs" / "x"),
                           "--cache", str(tmp_path / "cache"), *extra],
                          capture_output=True, text=True, env=env, timeout=3000)


def check(out, tmp_path: Path, name: str, models: set[str], seq_len: int,
          paper_size: bool = True) -> None:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    cells, records = load_records([tmp_path / "runs" / f"{name}-smoke"])
    trained = [c for c in cells if c.model != "data"]
    assert {c.model for c in trained} == models and all(c.ok and c.steps == 2 for c in trained)
    assert all(c.budget.seq_len == seq_len for c in cells)
    assert {m.model: m.train_steps for m in records} == dict.fromkeys(models, 2)
    sizes = {m.model: m.parameters for m in records}
    if paper_size:  # ELF-B (its denoiser and decode head; the frozen T5 is not counted) and DiT-small
        # (12 x 768 plus its vocabulary: 141.7M with T5's 32,101 ids, 169.6M with GPT-2's 50,258)
        assert sizes["elf"] > 100e6 and sizes["mdlm"] > 140e6, sizes
    assert "phase (ends with this line)" in out.stdout and "peak RSS so far (GiB)" in out.stdout


def test_reduced_owt_smoke_runs_the_same_path_with_the_same_stand_ins(dlmbench, empty_cache, one_thread, tmp_path):
    """The default suite's smoke, in this process beside an empty Hugging Face cache:
    owt-small's stand-ins (T5's and GPT-2's vocabularies, the random T5-small, GPT-2 Large
    at 2 layers) at 16 tokens, with ELF's denoiser and MDLM cut to 2 layers and ELF on
    AdamW (ELF-B's Muon step alone takes about 20 s on one CPU thread; at 2 layers its
    orthogonalisation of the 32,100 x 512 decode head still takes seconds a step: the
    next test checks that optimiser on ELF). The slow tests run the configs as they are."""
    models = ("models=[{name: elf, options: {depth: 2, hidden: 64, heads: 2, optimizer: adamw}}, "
              "{name: mdlm, preset: tiny}]")
    stale = tmp_path / "runs" / "owt-small-smoke" / "cells" / "stale.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")  # an earlier smoke's cell: a smoke starts afresh, it never resumes
    out = dlmbench("run", "--config", ROOT / "configs" / "owt-small.yaml", "--smoke", "--no-progress",
                   "--out", tmp_path / "runs" / "x", "--cache", tmp_path / "cache", "--set", models,
                   "--set", f"budget.seq_len={SEQ_LEN}", cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    check(out, tmp_path, "owt-small", {"elf", "mdlm"}, SEQ_LEN, paper_size=False)
    assert not stale.exists() and f"[mdlm] training 2 steps x 2 x {SEQ_LEN}" in out.stdout
    assert "elf read it through" in out.stdout and "t5-small: vocab 32100" in out.stdout  # T5's size
    assert "vocab 50258" in out.stdout  # GPT-2's 50,257 + the appended mask


def test_elf_trains_with_its_paper_optimizer(one_thread):
    """What the reduced smoke leaves out, on a tiny ELF: the paper presets' optimiser
    recipe (``optax.contrib.muon`` as :class:`dlmbench.muon.MuonOptax` computes it) puts
    every trainable matrix on Muon, leaves the frozen encoder out, and takes finite steps."""
    pytest.importorskip("dlmbench_elf")
    import torch

    from dlmbench.data import DataSpec
    from dlmbench.muon import MuonOptax
    from dlmbench.training import build_optimizer, fit
    from dlmbench_elf import ELF, ELFConfig

    recipe = {k: ELFConfig.presets["B"][k]
              for k in ("optimizer", "lr", "betas", "weight_decay", "grad_clip", "ema_decay", "ema_warmup")}
    assert recipe["optimizer"] == "muon-optax"
    torch.manual_seed(0)
    model = ELF(ELFConfig.from_preset("tiny", depth=2, hidden=64, heads=2, encoder_d_model=32, bottleneck_dim=32,
                                      encoder_pretrain_steps=2, **recipe), DataSpec(20, 16, 0, 2, 3, 4, 0))
    start = torch.randint(0, 15, (64, 1), generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = fit(model, 5 + (start + torch.arange(16)) % 15, batch_size=8, steps=2, seed=0)
    assert len(report.losses) == 2 and all(torch.isfinite(torch.tensor(report.losses)))
    frozen = {id(p) for p in model.encoder.parameters()}
    assert frozen and not any(p.requires_grad for p in model.encoder.parameters())
    optimizer = build_optimizer(model)
    assert isinstance(optimizer, MuonOptax)
    on_muon = {id(p) for g in optimizer.param_groups if g["muon"] for p in g["params"]}
    matrices = {id(p) for p in model.trainable_parameters() if p.dim() == 2}
    assert matrices and on_muon == matrices and not frozen & on_muon
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "denoiser.decode_head.unembed.weight" in moved  # the matrix the smoke's Muon step is slow on


@pytest.mark.slow
@pytest.mark.parametrize("config, name, models, seq_len", [
    ("owt-small.yaml", "owt-small", {"elf", "mdlm", "duo", "ar"}, 1024),
    ("wmt14-de-en.yaml", "wmt14-de-en", {"elf", "mdlm", "duo"}, 128),
    ("xsum.yaml", "xsum", {"elf", "mdlm", "duo"}, 1088),
])
def test_paper_config_smoke_at_true_size(tmp_path, config, name, models, seq_len):
    check(smoke(config, tmp_path), tmp_path, name, models, seq_len)


def test_smoke_refuses_released_weights_and_unknown_tasks(tmp_path):
    released = build_run_config(file=ROOT / "configs" / "owt-released.yaml")
    with pytest.raises(ConfigError, match="--smoke trains every model from scratch; model 'elf' names weights"):
        smoke_config(released, tmp_path)
    with pytest.raises(ConfigError, match="task 'grammar' is not a paper-scale hub task"):
        smoke_config(build_run_config(overrides={"models": ["mdlm"]}), tmp_path)
