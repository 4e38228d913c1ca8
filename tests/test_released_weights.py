"""Released weights: evaluated under the run's budget without training, named in records
and tables, and refused at once when a name is wrong or the hub is out of reach."""

from __future__ import annotations

import pytest
from safetensors.torch import save_file

from dlmbench.context import RunContext
from dlmbench.errors import ConfigError, HubUnavailableError
from dlmbench.leaderboard import render_markdown
from dlmbench.results import ResultStore
from dlmbench.runner import Runner


def quiet(config, registry, **kw):
    return Runner(config, registry, echo=lambda *_: None, progress=False, **kw)


@pytest.fixture
def trained(toy_config, toy_registry, tmp_path):
    """A toy run that trains, and its trained network saved as 'released' weights."""
    from dlmbench.build import build_model, build_task
    from dlmbench.checkpoint import load_checkpoint

    cfg = toy_config()
    runner = quiet(cfg, toy_registry)
    records = runner.run()
    data = build_task(cfg, toy_registry, runner.ctx)
    model = build_model(cfg.models[0], cfg.preset, toy_registry, data)
    slot = runner.checkpoint_slot(model, data)
    load_checkpoint(model, slot.path, slot.key)
    weights = tmp_path / "toy-weights"
    weights.mkdir()
    save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, str(weights / "model.safetensors"))
    return records, weights


def test_released_weights_are_evaluated_without_training(trained, toy_config, toy_registry, tmp_path):
    records, weights = trained
    cfg = toy_config(models=[{"name": "toy", "weights": str(weights)}], out=str(tmp_path / "released"),
                     cache=str(tmp_path / "fresh-cache"))
    released = quiet(cfg, toy_registry).run()
    assert not (tmp_path / "fresh-cache" / "checkpoints").exists()  # nothing was trained
    ok = [r for r in released if not r.is_reference]
    assert ok and all(r.ok and r.train_tokens is None for r in ok)
    # the same weights, sampler and seeds as the trained run: the same numbers
    by_cell = {(r.steps, r.seed): r.metrics for r in records if not r.is_reference}
    assert {(r.steps, r.seed): r.metrics for r in ok} == by_cell
    [model] = ResultStore(cfg.out_dir).model_records()
    assert model.weights.source == str(weights) and model.train_tokens == 0 and model.weights.released is None
    text = render_markdown(released, [model])
    assert f"released weights `{weights}`" in text and "the budget's training tokens do not apply" in text
    assert f"toy/reveal (weights={weights})" in text and " released " in text  # its train-tokens cell


def test_a_rerun_reuses_the_cells_of_the_same_weights(trained, toy_config, toy_registry, tmp_path):
    _, weights = trained
    cfg = toy_config(models=[{"name": "toy", "weights": str(weights)}], out=str(tmp_path / "released"))
    first = {r.cell_id for r in quiet(cfg, toy_registry).run()}
    said: list[str] = []
    second = {r.cell_id for r in Runner(cfg, toy_registry, echo=said.append, progress=False).run()}
    assert first == second and any("finished already" in line for line in said)


def test_a_released_name_the_plugin_does_not_list_is_refused(toy_config, toy_registry):
    cfg = toy_config(models=[{"name": "toy", "weights": "released:toy-v2"}])
    with pytest.raises(ConfigError, match=r"lists no released checkpoint 'toy-v2' \(it lists: released:toy-v1\)"):
        quiet(cfg, toy_registry).run()


def test_offline_a_released_hub_checkpoint_fails_before_any_training(toy_config, toy_registry, tmp_path):
    cfg = toy_config(models=["toy", {"name": "toy", "weights": "released:toy-v1"}])
    context = RunContext.create(cache=cfg.cache, device="cpu", offline=True, offline_reason="a test")
    with pytest.raises(HubUnavailableError, match=r"'toy-org/toy-v1' is not in the local Hugging Face cache.*"
                                                  r"hf download toy-org/toy-v1 --local-dir DIR"):
        quiet(cfg, toy_registry, context=context).run()
    assert not (tmp_path / "cache" / "checkpoints").exists()  # the first entry never trained


def test_a_downloaded_copy_of_a_released_checkpoint_keeps_its_facts(trained, toy_config, toy_registry, tmp_path):
    from dlmbench.released import resolve_weights

    _, weights = trained
    toy = toy_registry.model("toy")
    assert resolve_weights(f"released:toy-v1@{weights}", toy) == (str(weights), toy.released_weights["toy-v1"])
    with pytest.raises(ConfigError, match=r"'/nowhere' does not exist; give the directory "
                                          r"`hf download toy-org/toy-v1 --local-dir DIR` wrote"):
        resolve_weights("released:toy-v1@/nowhere", toy)
