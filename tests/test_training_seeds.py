"""Training seeds: one model trained per seed, pooled into one row whose spread includes
training, and a table that says which spread it shows."""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from safetensors.torch import load_file

from dlmbench.leaderboard import render_markdown
from dlmbench.results import ResultStore
from dlmbench.runner import Runner


def run(config, registry, said=None):
    return Runner(config, registry, echo=(said.append if said is not None else lambda *_: None),
                  progress=False).run()


def test_each_training_seed_trains_its_own_model_and_the_row_pools_them(toy_config, toy_registry):
    single = run(toy_config(), toy_registry)  # training seed 0 only, the default
    said: list[str] = []
    cfg = toy_config(budget={"train_seeds": [0, 1, 2]}, out=str(toy_config().out_dir) + "-seeds")
    cells = [c for c in run(cfg, toy_registry, said) if not c.is_reference]
    models = ResultStore(cfg.out_dir).model_records()
    assert sorted(m.train_seed for m in models) == [0, 1, 2]
    assert len({m.checkpoint_hash for m in models}) == 3
    assert len({m.first_loss for m in models}) == 3  # other initial weights and training noise each
    assert sum("reusing checkpoint" in line for line in said) == 1  # seed 0 is the single-seed run's model
    assert sum("trained in" in line for line in said) == 2
    seed0 = {(c.steps, c.seed): c.metrics for c in cells if c.train_seed == 0}
    assert seed0 == {(c.steps, c.seed): c.metrics for c in single if not c.is_reference}
    assert len({c.setup_hash for c in cells}) == 1 and len(cells) == 3 * 2 * 2  # 3 models x 2 steps x 2 seeds
    text = render_markdown(cells, models)
    steps2 = [c.metrics["starts-right"].value for c in cells if c.steps == 2]
    mean, sd = statistics.fmean(steps2), statistics.stdev(steps2)  # over 3 trained models x 2 sampling seeds
    row = next(line for line in text.splitlines() if line.startswith("| toy/reveal "))
    assert f"{mean:.4g} ± {sd:.2g}" in row
    assert "standard deviation over 3 trained models (training seeds 0, 1, 2) x 2 sampling seed(s)" in text
    assert all(f"[training seed {s}]" in text for s in (0, 1, 2))


def test_a_single_training_seed_says_its_spread_leaves_training_out(toy_config, toy_registry):
    cells = run(toy_config(), toy_registry)
    assert "of one trained model (training seed 0): training variance not included" in render_markdown(cells)


def test_the_model_of_each_training_seed_is_the_one_that_seed_trains_alone(toy_config, toy_registry, tmp_path):
    """Seed 1 of a 3-seed run is, weight for weight, the model ``train_seed: 1`` trains in
    a fresh cache: the seed sets its initial weights and its training noise."""
    many = toy_config(budget={"train_seeds": [0, 1, 2]})
    run(many, toy_registry)
    alone = toy_config(budget={"train_seed": 1}, out=str(tmp_path / "alone"), cache=str(tmp_path / "cache-alone"))
    run(alone, toy_registry)
    [one] = ResultStore(alone.out_dir).model_records()
    seeded = next(m for m in ResultStore(many.out_dir).model_records() if m.train_seed == 1)
    assert one.checkpoint_hash == seeded.checkpoint_hash
    name = f"toy-{one.checkpoint_hash}.safetensors"
    a, b = (load_file(str(Path(c.cache) / "checkpoints" / name)) for c in (alone, many))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the same weights
