"""dlmbench: a fair benchmark for diffusion language models.

The public API a plugin author needs::

    import dlmbench

    @dlmbench.hookimpl
    def register_models(register):
        register(MyModel)          # a dlmbench.Model subclass

Names are imported lazily so that ``dlmbench --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from dlmbench.hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY = {
    "Batch": "dlmbench.data",
    "DataSpec": "dlmbench.data",
    "Generation": "dlmbench.data",
    "SampleRequest": "dlmbench.data",
    "CheckpointError": "dlmbench.errors",
    "ConfigError": "dlmbench.errors",
    "DLMBenchError": "dlmbench.errors",
    "Metric": "dlmbench.metric",
    "MetricConfig": "dlmbench.metric",
    "MetricValue": "dlmbench.metric",
    "Model": "dlmbench.model",
    "ModelConfig": "dlmbench.model",
    "Sampler": "dlmbench.sampler",
    "SamplerConfig": "dlmbench.sampler",
    "Task": "dlmbench.task",
    "TaskConfig": "dlmbench.task",
    "TaskData": "dlmbench.task",
    "TokenizerRequest": "dlmbench.tokenizer",
    "RunContext": "dlmbench.context",
    "CellRecord": "dlmbench.records",
    "MetricResult": "dlmbench.records",
    "ModelRecord": "dlmbench.records",
    "LogLinearSchedule": "dlmbench.schedule",
    "StratifiedUniform": "dlmbench.schedule",
    "initial_ids": "dlmbench.prefix",
    "request_prefix": "dlmbench.prefix",
    "target_positions": "dlmbench.prefix",
}

__all__ = sorted([*_LAZY, "__version__", "hookimpl"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dlmbench' has no attribute {name!r}")
