"""What the plugins registered, with validation and did-you-mean errors."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from dlmbench.errors import ConfigError, UnknownNameError
from dlmbench.metric import Metric
from dlmbench.model import Model, ModelConfig
from dlmbench.names import RULE, is_safe_name
from dlmbench.sampler import Sampler, SamplerConfig
from dlmbench.task import Task


def did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{hint} Known: {', '.join(sorted(known)) or 'none'}."


@dataclass
class Registry:
    """Models, samplers, metrics and tasks by name, plus which plugin gave each."""

    models: dict[str, type[Model]] = field(default_factory=dict)
    samplers: dict[tuple[str, str], type[Sampler]] = field(default_factory=dict)
    metrics: dict[str, type[Metric]] = field(default_factory=dict)
    tasks: dict[str, type[Task]] = field(default_factory=dict)
    origin: dict[Any, str] = field(default_factory=dict)

    def _add(self, table: dict, cls: type, base: type, plugin: str) -> None:
        if not (isinstance(cls, type) and issubclass(cls, base)):
            hook = f"register_{base.__name__.lower()}s"
            raise TypeError(f"plugin {plugin!r} registered {cls!r} through {hook}, which takes "
                            f"dlmbench.{base.__name__} subclasses; register it through the hook for its kind")
        if not cls.name:
            raise TypeError(f"plugin {plugin!r} registered {cls.__name__} without a name")
        if not is_safe_name(cls.name):  # names become file names (cells, checkpoints)
            raise TypeError(f"plugin {plugin!r} registered {cls.__name__} as {cls.name!r}: a name may use {RULE}")
        self._check_config(cls, base, plugin)
        key: Any = cls.name
        if base is Sampler:
            if not cls.model:
                raise TypeError(f"sampler {cls.__name__} from {plugin!r} must set `model`")
            if cls.model not in self.models:  # every plugin's models register before any sampler
                raise TypeError(
                    f"sampler {cls.name!r} from plugin {plugin!r} is registered for model {cls.model!r}, which no "
                    f"plugin registers (known: {', '.join(sorted(self.models)) or 'none'}); set `model` to the "
                    f"name of the model it serves")
            key = (cls.model, cls.name)
        if key in table and table[key] is not cls:
            raise ConfigError(
                f"{base.__name__.lower()} {key!r} is registered twice: by {self.origin[(base, key)]!r} "
                f"and by {plugin!r}; block one with DLMBENCH_LOAD_PLUGINS"
            )
        table[key] = cls
        self.origin[(base, key)] = plugin

    @staticmethod
    def _check_config(cls: type, base: type, plugin: str) -> None:
        """A model or sampler carries its own options class, of the right kind."""
        wanted = {Model: ModelConfig, Sampler: SamplerConfig}.get(base)
        if wanted is None:
            return
        config = getattr(cls, "Config", None)
        if not (isinstance(config, type) and issubclass(config, wanted)):
            raise TypeError(f"{base.__name__.lower()} {cls.__name__} from plugin {plugin!r}: Config = {config!r} is "
                            f"not a dlmbench.{wanted.__name__} subclass; derive it from dlmbench.{wanted.__name__}")
        if base is Model and config is ModelConfig:
            raise TypeError(f"model {cls.__name__} from plugin {plugin!r} has no Config of its own: set "
                            f"`Config = {cls.__name__}Config`, a dlmbench.ModelConfig subclass holding its options")

    def add_model(self, cls: type[Model], plugin: str = "?") -> None:
        self._add(self.models, cls, Model, plugin)

    def add_sampler(self, cls: type[Sampler], plugin: str = "?") -> None:
        self._add(self.samplers, cls, Sampler, plugin)

    def add_metric(self, cls: type[Metric], plugin: str = "?") -> None:
        self._add(self.metrics, cls, Metric, plugin)

    def add_task(self, cls: type[Task], plugin: str = "?") -> None:
        self._add(self.tasks, cls, Task, plugin)

    # look-ups -------------------------------------------------------------------------
    def model(self, name: str) -> type[Model]:
        if name not in self.models:
            raise UnknownNameError(
                f"unknown model {name!r}.{did_you_mean(name, list(self.models))} A model comes from a plugin "
                f"installed in the 'dlmbench' entry-point group; `dlmbench plugins` lists what loaded")
        return self.models[name]

    def sampler(self, model: str, name: str | None = None, conditional: bool = False) -> type[Sampler]:
        """The named sampler, else the model's default for this kind of task."""
        cls = self.model(model)
        name = name or (conditional and cls.default_conditional_sampler) or cls.default_sampler
        if (model, name) not in self.samplers:
            known = [s for (m, s) in self.samplers if m == model]
            owners = sorted(m for (m, s) in self.samplers if s == name)
            if owners and not known:
                raise UnknownNameError(f"sampler {name!r} is registered for {', '.join(map(repr, owners))}, not "
                                       f"for {model!r}, which has no samplers; its plugin must register one")
            if owners:
                raise UnknownNameError(f"sampler {name!r} is registered for {', '.join(map(repr, owners))}, not "
                                       f"for {model!r}.{did_you_mean(name, known)}")
            raise UnknownNameError(
                f"unknown sampler {name!r} for model {model!r}.{did_you_mean(name, known)}"
            )
        return self.samplers[(model, name)]

    def samplers_for(self, model: str) -> list[str]:
        return sorted(s for (m, s) in self.samplers if m == model)

    def metric(self, name: str) -> type[Metric]:
        if name not in self.metrics:
            raise UnknownNameError(f"unknown metric {name!r}.{did_you_mean(name, list(self.metrics))}")
        return self.metrics[name]

    def task(self, spec: str) -> tuple[type[Task], str | None]:
        """Resolve ``NAME`` or ``NAME:ARGUMENT`` (e.g. ``text:corpus.txt``)."""
        name, _, argument = spec.partition(":")
        if name not in self.tasks:
            raise UnknownNameError(f"unknown task {name!r}.{did_you_mean(name, list(self.tasks))}")
        return self.tasks[name], (argument or None)
