"""Every config shipped in configs/ resolves: budget, task, models, presets, samplers."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlmbench.config import build_run_config
from dlmbench.errors import ConfigError
from dlmbench.plugins import build_registry, get_plugin_manager
from dlmbench.build import build_model_config, build_sampler
from dlmbench.released import resolve_weights

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def registry():
    return build_registry(get_plugin_manager())


def test_configs_exist():
    assert {"owt-small.yaml", "wmt14-de-en.yaml", "xsum.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_resolves(path, registry):
    config = build_run_config(file=path)
    registry.task(config.task)
    for entry in config.models:
        build_model_config(entry, config.preset, registry)
        build_sampler(entry, registry)
        if entry.weights is not None:  # a released checkpoint its plugin lists
            resolve_weights(entry.weights, registry.model(entry.name))


def test_an_explicit_unknown_model_preset_is_an_error(registry):
    config = build_run_config(overrides={"models": [{"name": "ar", "preset": "huge"}]})
    with pytest.raises(ConfigError, match="preset='huge' is not defined"):
        build_model_config(config.models[0], config.preset, registry)
