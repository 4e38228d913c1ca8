"""Building a run's parts from its config: the task data, the metrics, each model and
its sampler. ``run``, ``train``, ``sample``, ``eval`` and ``probe-batch`` all build
through these functions, so a part is the same object whichever command made it."""

from __future__ import annotations

from pydantic import ValidationError

from dlmbench.config import MetricEntry, ModelEntry, RunConfig, explain, model_preset
from dlmbench.context import RunContext
from dlmbench.metric import Metric
from dlmbench.metrics.proxy import PROXY
from dlmbench.model import Model, ModelConfig
from dlmbench.protocol import DEFAULT, Protocol, get_protocol
from dlmbench.registry import Registry
from dlmbench.sampler import Sampler
from dlmbench.errors import ConfigError
from dlmbench.hub_needs import check_hub_needs
from dlmbench.task import TaskData
from dlmbench.tokenizer import TokenizerRequest


def build_task(config: RunConfig, registry: Registry, context: RunContext,
               tokenizer: TokenizerRequest | None = None, who: str = "a model") -> TaskData:
    """The task's data, through ``tokenizer`` when a model asked for another than the
    task's own (``who`` names it in the error a fixed-vocabulary task gives)."""
    task_cls, argument = registry.task(config.task)
    try:
        task_config = task_cls.Config(**config.task_options)
    except ValidationError as exc:
        raise explain(exc, f"task_options for {task_cls.name!r}") from None
    task = task_cls(task_config, argument)
    b = config.budget
    if tokenizer is None or tokenizer.is_default:
        return task.load(seq_len=b.seq_len, num_eval=b.num_samples, seed=b.data_seed, context=context)
    if not task_cls.reads_text:
        raise ConfigError(
            f"{who} reads text through tokenizer {tokenizer.name or 'of the task'!r}"
            f"{'' if tokenizer.mask else ' without a mask'}, but task {config.task!r} has its own fixed "
            f"vocabulary; remove the entry's tokenizer, or use a model setting that fits the task "
            f"(e.g. ELF's tiny preset)")
    return task.load(seq_len=b.seq_len, num_eval=b.num_samples, seed=b.data_seed, context=context,
                     tokenizer=tokenizer)


def tokenizer_request(entry: ModelEntry, run_preset: str, registry: Registry) -> TokenizerRequest:
    """The tokenizer ``entry``'s model reads the task through: its plugin's request for
    its config, with the entry's ``tokenizer`` naming another."""
    cls = registry.model(entry.name)
    request = cls.tokenizer_request(build_model_config(entry, run_preset, registry))
    return request if entry.tokenizer is None else request.model_copy(update={"name": entry.tokenizer})


class TaskViews:
    """The task as each model of a run sees it: one :class:`TaskData` per tokenizer
    request, each loaded once; ``default`` is the task through its own tokenizer (the
    metrics are built on it, and its held-out row is every table's first)."""

    def __init__(self, config: RunConfig, registry: Registry, context: RunContext, weights: bool = True):
        """Offline, first lists every hub repository the run needs that the cache lacks
        (``weights``: the models' weights among them; rescoring stored samples needs none)."""
        check_hub_needs(config, registry, context, weights)
        self.config, self.registry, self.context = config, registry, context
        self.default = build_task(config, registry, context)
        self.views: dict[TokenizerRequest, TaskData] = {TokenizerRequest(): self.default}

    def get(self, request: TokenizerRequest | None, who: str = "a model") -> TaskData:
        request = request or TokenizerRequest()
        if request not in self.views:
            self.views[request] = build_task(self.config, self.registry, self.context, request, who)
        return self.views[request]

    def request(self, entry: ModelEntry) -> TokenizerRequest:
        return tokenizer_request(entry, self.config.preset, self.registry)

    def of(self, entry: ModelEntry) -> TaskData:
        return self.get(self.request(entry), f"model {entry.name!r}")


def metric_entries(config: RunConfig, registry: Registry) -> list[MetricEntry]:
    """The run's metric entries: its own, else its task's defaults."""
    if config.metrics is not None:
        return list(config.metrics)
    task_cls, _ = registry.task(config.task)
    return [MetricEntry(name=name) for name in task_cls.default_metrics]


def build_metric(entry: MetricEntry, registry: Registry, evaluator: str, context: RunContext) -> Metric:
    """One metric with the entry's options; an LM-based metric not told otherwise judges
    with the budget's evaluator (``oracle``: the task's exact judge, so the metric's own
    default LM, or the offline proxy when the hub is off)."""
    cls = registry.metric(entry.name)
    options = dict(entry.options)
    if "evaluator" in cls.Config.model_fields and "evaluator" not in options:
        if evaluator == "oracle":
            evaluator = PROXY if context.offline else cls.Config.model_fields["evaluator"].default
        options["evaluator"] = evaluator
    try:
        return cls(cls.Config(**options), context)
    except ValidationError as exc:
        raise explain(exc, f"options for metric {entry.name!r}") from None


def build_metrics(entries: list[MetricEntry], registry: Registry, data: TaskData, evaluator: str,
                  context: RunContext, protocol: Protocol | None = None) -> list[Metric]:
    """The metrics of ``entries`` that can score ``data`` (e.g. BLEU needs references),
    with ``protocol``'s settings under each entry's own options (default: ``dlmbench``)."""
    protocol = protocol or get_protocol(DEFAULT)
    metrics = []
    for entry in entries:
        metric = build_metric(protocol.apply(entry), registry, evaluator, context)
        metric.protocol, metric.judge_task = protocol.name, data
        metrics.append(metric)
    return [m for m in metrics if m.applies_to(data)]


def build_model_config(entry: ModelEntry, run_preset: str, registry: Registry) -> ModelConfig:
    """The entry's model config: its own preset (which must exist), else the run preset's
    choice for this model (skipped when the plugin lacks it), then the entry's options."""
    cls = registry.model(entry.name)
    preset = entry.preset
    if preset is None:
        preset = model_preset(run_preset, entry.name)
        if preset not in cls.Config.presets:
            preset = None  # a plugin without this preset keeps its defaults
    try:
        return cls.Config.from_preset(preset, **entry.options)
    except ValidationError as exc:
        raise explain(exc, f"options for model {entry.name!r}") from None


def build_model(entry: ModelEntry, run_preset: str, registry: Registry, data: TaskData) -> Model:
    return registry.model(entry.name)(build_model_config(entry, run_preset, registry), data.spec)


def build_sampler(entry: ModelEntry, registry: Registry, conditional: bool = False) -> Sampler:
    cls = registry.sampler(entry.name, entry.sampler, conditional)
    try:
        return cls(cls.Config(**entry.sampler_options))
    except ValidationError as exc:
        raise explain(exc, f"sampler options for {entry.name}/{cls.name}") from None
