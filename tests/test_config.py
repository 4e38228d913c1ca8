"""Configs: presets, files, overrides, and errors that name the field, value and fix."""

from __future__ import annotations

import pytest

from dlmbench.config import PRESETS, build_run_config, parse_override
from dlmbench.errors import ConfigError


def test_tiny_preset_is_the_default_and_counts_tokens_exactly():
    cfg = build_run_config(overrides={"models": ["ar"]})
    b = cfg.budget
    assert cfg.preset == "tiny" and cfg.task == "grammar"
    assert b.counted_train_tokens == b.train_steps * b.batch_size * b.seq_len
    assert b.counted_train_tokens >= b.train_tokens


def test_train_steps_round_up_to_whole_batches():
    cfg = build_run_config(overrides={"models": ["ar"], "budget": {"train_tokens": 64 * 32 * 10 + 1}})
    assert cfg.budget.train_steps == 11


def test_steps_are_sorted_and_deduplicated():
    cfg = build_run_config(overrides={"models": ["ar"], "budget": {"steps": [1024, 32, 32]}})
    assert cfg.budget.steps == [32, 1024]


@pytest.mark.parametrize("steps", [[0], [-3, 8]])
def test_nonpositive_steps_are_rejected_with_the_field_named(steps):
    with pytest.raises(ConfigError) as err:
        build_run_config(overrides={"models": ["ar"], "budget": {"steps": steps}})
    assert "budget.steps" in str(err.value) and ">= 1" in str(err.value)


def test_unknown_key_names_field_value_and_fix():
    with pytest.raises(ConfigError) as err:
        build_run_config(overrides={"models": ["ar"], "budget": {"seq_lenn": 64}})
    text = str(err.value)
    assert "budget.seq_lenn = 64" in text and "remove it or check its spelling" in text


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError) as err:
        build_run_config(overrides={"models": ["ar"], "budget": {"num_samples": "many"}})
    assert "budget.num_samples = 'many'" in str(err.value)


def test_unknown_preset_suggests_a_close_name():
    with pytest.raises(ConfigError) as err:
        build_run_config(preset="tinny", overrides={"models": ["ar"]})
    assert "Did you mean 'tiny'" in str(err.value)


def test_yaml_and_toml_files_with_cli_overrides(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("models: [elf, mdlm]\nbudget:\n  steps: [8, 64]\n  seeds: [3]\n")
    t = tmp_path / "run.toml"
    t.write_text('models = ["duo"]\n[budget]\nsteps = [16]\n')
    cy = build_run_config(file=y, overrides=parse_override("budget.seq_len=48"))
    assert [m.name for m in cy.models] == ["elf", "mdlm"]
    assert cy.budget.steps == [8, 64] and cy.budget.seeds == [3] and cy.budget.seq_len == 48
    assert cy.budget.num_samples == PRESETS["tiny"]["budget"]["num_samples"]
    ct = build_run_config(file=t)
    assert [m.name for m in ct.models] == ["duo"] and ct.budget.steps == [16]


def test_malformed_files_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [elf\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        build_run_config(file=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        build_run_config(file=tmp_path / "missing.yaml")
    odd = tmp_path / "run.json"
    odd.write_text("{}")
    with pytest.raises(ConfigError, match="use a .yaml, .yml or .toml"):
        build_run_config(file=odd)


def test_override_parsing():
    assert parse_override("budget.steps=[8, 16]") == {"budget": {"steps": [8, 16]}}
    assert parse_override("models.0=elf") == {"models": {"0": "elf"}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("budget.steps")


def test_model_entries_accept_strings_and_mappings():
    cfg = build_run_config(overrides={"models": ["ar", {"name": "elf", "sampler": "ode", "sampler_options": {"w": 1}}]})
    assert cfg.models[0].name == "ar" and cfg.models[1].sampler_options == {"w": 1}


def test_budget_hash_changes_with_the_budget():
    a = build_run_config(overrides={"models": ["ar"]})
    b = build_run_config(overrides={"models": ["ar"], "budget": {"num_samples": 7}})
    assert a.budget_hash() != b.budget_hash()
