"""dlmbench: a fair benchmark for diffusion language models.

The public API a plugin author needs::

    import dlmbench

    @dlmbench.hookimpl
    def register_models(register):
        register(MyModel)          # a dlmbench.Model subclass
"""

from dlmbench.data import Batch, DataSpec, Generation, SampleRequest
from dlmbench.errors import CheckpointError, ConfigError, DLMBenchError
from dlmbench.hookspecs import hookimpl
from dlmbench.metric import Metric, MetricConfig, MetricValue
from dlmbench.model import Model, ModelConfig
from dlmbench.sampler import Sampler, SamplerConfig
from dlmbench.task import Task, TaskConfig, TaskData

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "CheckpointError",
    "ConfigError",
    "DLMBenchError",
    "DataSpec",
    "Generation",
    "Metric",
    "MetricConfig",
    "MetricValue",
    "Model",
    "ModelConfig",
    "SampleRequest",
    "Sampler",
    "SamplerConfig",
    "Task",
    "TaskConfig",
    "TaskData",
    "__version__",
    "hookimpl",
]
