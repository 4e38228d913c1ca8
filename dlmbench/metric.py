"""The metric interface: score a :class:`Generation` against a :class:`TaskData`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_serializer

from dlmbench.context import RunContext
from dlmbench.data import Generation
from dlmbench.errors import DLMBenchError
from dlmbench.records import MetricResult
from dlmbench.task import TaskData


DEFAULT_PROTOCOL = "dlmbench"


def result_key(metric: str, protocol: str = DEFAULT_PROTOCOL) -> str:
    """A metric's key in ``CellRecord.metrics``: its name, with ``@protocol`` unless the
    protocol is the default, so results of several protocols live side by side."""
    return metric if protocol == DEFAULT_PROTOCOL else f"{metric}@{protocol}"


class MetricConfig(BaseModel):
    """Base of metric settings; recorded with every value so a protocol is explicit.

    Settings named in ``added`` (added after results were first stored) are written out
    only when they differ from their default, so a result stored before they existed
    still reads as scored alike (:func:`scored_alike`) and shares its table with newer
    ones: an absent added setting means its default."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    added: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_added_defaults(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        fields = type(self).model_fields
        return {k: v for k, v in data.items() if k not in self.added or getattr(self, k) != fields[k].default}


@dataclass
class MetricValue:
    """One metric's result for one cell.

    ``value`` is the headline number; ``stderr`` its standard error over samples when
    the metric is a mean of per-sample values; ``details`` anything else worth keeping
    (counts, protocol settings, signatures); ``n`` the number of samples the value rests
    on (tables show it when it is fewer than were drawn; default: ``details["n"]``);
    ``undefined`` why a NaN value has no number.
    """

    value: float
    stderr: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    n: int | None = None
    undefined: str | None = None

    def __post_init__(self) -> None:
        if self.n is None and isinstance(self.details.get("n"), int):
            self.n = self.details["n"]

    @classmethod
    def mean_of(cls, values: list[float], **details: Any) -> "MetricValue":
        """Mean with its standard error (sample std / sqrt(n))."""
        n = len(values)
        if n == 0:
            return cls(float("nan"), None, {"n": 0, **details})
        mean = sum(values) / n
        se = None
        if n > 1:
            var = sum((v - mean) ** 2 for v in values) / (n - 1)
            se = math.sqrt(var / n)
        return cls(mean, se, {"n": n, **details})


class Metric:
    """Base class of every metric plugin.

    Class attributes: ``name``, ``higher_is_better``, ``description`` and ``Config``.
    :meth:`applies_to` says whether a task can serve the metric; the runner leaves out
    those that cannot. ``context`` is the run's :class:`~dlmbench.context.RunContext`:
    a metric that loads or trains an evaluator caches it under ``context.evaluators``
    and contacts the hub only when ``context.offline`` is False.
    """

    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    description: ClassVar[str] = ""
    Config: ClassVar[type[MetricConfig]] = MetricConfig
    #: the evaluation protocol that chose the settings (set by ``build_metrics``)
    protocol: str = DEFAULT_PROTOCOL
    #: the view of the task an evaluator trained on the task learns from (the offline
    #: proxy): the run's own (set by ``build_metrics``), whichever tokenizer a model read
    #: the task through, so every model in a table is judged by one evaluator
    judge_task: TaskData | None = None

    def __init__(self, config: MetricConfig | None = None, context: RunContext | None = None):
        self.config = config if config is not None else self.Config()
        # without a run's context: the default cache, and the user's own HF_* switches
        self.context = context if context is not None else RunContext.create(device="cpu")

    @property
    def key(self) -> str:
        """Where the result is stored in a cell (see :func:`result_key`)."""
        return result_key(self.name, self.protocol)

    def evaluator_task(self, task: TaskData) -> TaskData:
        """The task an evaluator built from the task's data is built from (see ``judge_task``)."""
        return self.judge_task if self.judge_task is not None else task

    def applies_to(self, task: TaskData) -> bool:
        """Whether this metric can score ``task`` (e.g. BLEU needs references)."""
        return True

    def compute(self, generation: Generation, task: TaskData) -> MetricValue:
        raise NotImplementedError


def score_all(metrics: list[Metric], generation: Generation, task: TaskData) -> dict[str, MetricResult]:
    """Each metric's result with its settings, as stored in cell records."""
    out = {}
    for metric in metrics:
        try:
            value = metric.compute(generation, task)
        except DLMBenchError:
            raise  # already says what to fix
        except Exception as exc:
            raise RuntimeError(f"metric {metric.name!r} failed: {type(exc).__name__}: {exc}") from exc
        out[metric.key] = MetricResult(
            value=value.value, stderr=value.stderr, higher_is_better=metric.higher_is_better,
            config=metric.config.model_dump(mode="json"), details=value.details,
            n=value.n, undefined=value.undefined, protocol=metric.protocol,
        )
    return out


def scored_alike(result: MetricResult, metric: Metric) -> bool:
    """Whether a stored result was computed by ``metric`` with the same settings."""
    return result.config == metric.config.model_dump(mode="json")
