"""The dlmbench hook specifications: the whole plugin interface in one place.

Every hook hands the plugin a ``register`` callback (the style of ``llm``): the plugin
calls it once per thing it provides, and the core validates each item as it arrives.
Built-in models, samplers, metrics and tasks are registered through these same hooks
(see ``dlmbench.plugins.DEFAULT_PLUGINS``), so a third-party plugin has exactly the
powers the core has.

A plugin implements any subset, each function marked with ``@dlmbench.hookimpl``
(``@dlmbench.hookimpl(specname="register_models")`` lets it have another name); pluggy
does not call an unmarked function, and ``dlmbench.plugins`` warns about one that has a
hook's name. Exact signatures::

    register_models(register: Callable[[type[dlmbench.Model]], None]) -> None
    register_samplers(register: Callable[[type[dlmbench.Sampler]], None]) -> None
    register_metrics(register: Callable[[type[dlmbench.Metric]], None]) -> None
    register_tasks(register: Callable[[type[dlmbench.Task]], None]) -> None
    register_commands(cli: click.Group) -> None
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    import click

    from dlmbench.metric import Metric
    from dlmbench.model import Model
    from dlmbench.sampler import Sampler
    from dlmbench.task import Task

PROJECT = "dlmbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_models(register: Callable[[type["Model"]], None]) -> None:
    """Register model classes: call ``register(ModelClass)`` once per model.

    ``ModelClass`` subclasses :class:`dlmbench.Model` and sets ``name`` (the id used by
    ``--models``), ``Config`` (a pydantic options model) and ``default_sampler``.
    """


@hookspec
def register_samplers(register: Callable[[type["Sampler"]], None]) -> None:
    """Register sampler classes: call ``register(SamplerClass)`` once per sampler.

    ``SamplerClass`` subclasses :class:`dlmbench.Sampler` and sets ``name`` and
    ``model`` (the model name it serves). Samplers are separate from models so that
    the same network can be evaluated under several samplers with one NFE counter.
    """


@hookspec
def register_metrics(register: Callable[[type["Metric"]], None]) -> None:
    """Register metric classes: call ``register(MetricClass)`` once per metric."""


@hookspec
def register_tasks(register: Callable[[type["Task"]], None]) -> None:
    """Register task (dataset) classes: call ``register(TaskClass)`` once per task."""


@hookspec
def register_commands(cli: "click.Group") -> None:
    """Add sub-commands to the ``dlmbench`` command-line group."""
