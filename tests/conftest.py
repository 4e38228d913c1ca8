"""Shared fixtures: an isolated registry with the toy plugin, and hub-offline defaults."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def toy_registry():
    import toyplugin

    from dlmbench.plugins import build_registry, get_plugin_manager

    return build_registry(get_plugin_manager(autoload=False, defaults=False, extra=[toyplugin]))


@pytest.fixture
def toy_and_builtins():
    """The toy plugin beside the built-in tasks and metrics (no entry points)."""
    import toyplugin

    from dlmbench.plugins import build_registry, get_plugin_manager

    return build_registry(get_plugin_manager(autoload=False, extra=[toyplugin]))


@pytest.fixture
def toy_config(tmp_path):
    """A tiny run on the toy task: 2 steps budgets x 2 seeds, trained for a few steps."""
    from dlmbench.config import build_run_config

    def make(**extra):
        over = {
            "name": "toy",
            "task": "toy-count",
            "models": ["toy"],
            "out": str(tmp_path / "run"),
            "cache": str(tmp_path / "cache"),
            "budget": {"seq_len": 8, "steps": [2, 4], "num_samples": 6, "batch_size": 8,
                       "train_tokens": 8 * 8 * 20, "seeds": [0, 1], "sample_batch_size": 4},
        }
        from dlmbench.config import deep_merge

        return build_run_config(overrides=deep_merge(over, extra))

    return make
