"""Finding plugins: built-ins first, then the ``dlmbench`` entry-point group.

Operator controls (the pytest/llm/datasette conventions):
  ``DLMBENCH_LOAD_PLUGINS=elf,mdlm``: load only these entry points (empty: none).
  ``DLMBENCH_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points at all.
  ``--plugins`` on the CLI sets the first for one command.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from typing import Iterable

import pluggy

from dlmbench import hookspecs
from dlmbench.registry import Registry

ENTRY_POINT_GROUP = "dlmbench"
DEFAULT_PLUGINS: tuple[str, ...] = (
    "dlmbench.builtin.ar",
    "dlmbench.tasks.synthetic",
    "dlmbench.tasks.text",
    "dlmbench.tasks.hub",
    "dlmbench.metrics.oracle",
    "dlmbench.metrics.text",
)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    location: str
    builtin: bool
    hooks: tuple[str, ...]


def _allowlist(only: Iterable[str] | None) -> set[str] | None:
    if only is not None:
        return {o.strip() for o in only if o.strip()}
    env = os.environ.get("DLMBENCH_LOAD_PLUGINS")
    if env is None:
        return None
    return {o.strip() for o in env.split(",") if o.strip()}


def get_plugin_manager(
    load_entrypoints: bool = True,
    only: Iterable[str] | None = None,
    extra: Iterable[object] = (),
    defaults: bool = True,
) -> pluggy.PluginManager:
    """A fresh plugin manager (no import-time global, so tests stay isolated).

    ``only`` restricts entry points by name (overrides ``DLMBENCH_LOAD_PLUGINS``);
    ``extra`` registers plugin objects directly (tests, notebooks); ``defaults=False``
    leaves out the built-in plugins.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for modname in DEFAULT_PLUGINS if defaults else ():
        pm.register(importlib.import_module(modname), name=modname)
    autoload = load_entrypoints and not os.environ.get("DLMBENCH_DISABLE_PLUGIN_AUTOLOAD")
    if autoload:
        allow = _allowlist(only)
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if allow is not None and ep.name not in allow:
                continue
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            module = ep.load()
            pm.register(module, name=ep.name)
            dist = getattr(ep, "dist", None)
            pm._dlmbench_dists = getattr(pm, "_dlmbench_dists", {})  # type: ignore[attr-defined]
            pm._dlmbench_dists[ep.name] = dist  # type: ignore[attr-defined]
    for obj in extra:
        pm.register(obj)
    pm.check_pending()
    return pm


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Call every ``register_*`` hook and collect the results, noting their origin."""
    registry = Registry()
    for plugin_name, plugin in pm.list_name_plugin():
        name = plugin_name or repr(plugin)
        for hook, add in (
            ("register_models", registry.add_model),
            ("register_samplers", registry.add_sampler),
            ("register_metrics", registry.add_metric),
            ("register_tasks", registry.add_task),
        ):
            impl = getattr(plugin, hook, None)
            if impl is not None and callable(impl):
                impl(register=lambda cls, _add=add, _n=name: _add(cls, _n))
    return registry


def load_registry(only: Iterable[str] | None = None, extra: Iterable[object] = ()) -> Registry:
    """The registry the CLI and the runner use."""
    return build_registry(get_plugin_manager(only=only, extra=extra))


def describe_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Name, version, location and implemented hooks of every loaded plugin."""
    dists = getattr(pm, "_dlmbench_dists", {})
    infos = []
    for name, plugin in pm.list_name_plugin():
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or []))
        dist = dists.get(name)
        builtin = name in DEFAULT_PLUGINS
        if dist is not None:
            version = dist.version
        else:
            from dlmbench import __version__

            version = __version__ if builtin else "?"
        location = getattr(plugin, "__file__", None) or repr(plugin)
        infos.append(PluginInfo(name, version, str(location), builtin, hooks))
    return infos


def plugin_versions(pm: pluggy.PluginManager) -> dict[str, str]:
    return {p.name: p.version for p in describe_plugins(pm) if not p.builtin}
