"""Finding plugins and calling their hooks, all through pluggy.

Plugins register in a fixed order: the built-ins (``DEFAULT_PLUGINS``), then the
``dlmbench`` entry-point group through pluggy's own ``load_setuptools_entrypoints``, then
``extra`` objects. Entry points load one at a time, so a plugin that fails to import is
recorded in ``DlmbenchPluginManager.failures`` and the rest still load: commands that do
not need it keep working. Registries are filled from ``pm.hook.register_*.get_hookimpls()``
with each implementation's ``plugin_name`` as its origin, so ``specname`` is honoured and
a function that merely has a hook's name is not called (an :class:`UnmarkedHookWarning`
says so). Versions come from ``pm.list_plugin_distinfo()``.

This module reads no environment; the CLI translates the operator controls (the
pytest/llm/datasette conventions) into :func:`get_plugin_manager` arguments and builds one
plugin manager per process:
  ``DLMBENCH_LOAD_PLUGINS=elf,mdlm`` or ``--plugins elf,mdlm``: ``only=["elf", "mdlm"]``
  (an empty list loads no entry point).
  ``DLMBENCH_DISABLE_PLUGIN_AUTOLOAD=1``: ``autoload=False``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable

import pluggy

from dlmbench import hookspecs
from dlmbench.errors import UnknownNameError
from dlmbench.registry import Registry, did_you_mean

ENTRY_POINT_GROUP = "dlmbench"
DEFAULT_PLUGINS: tuple[str, ...] = (
    "dlmbench.builtin.ar",
    "dlmbench.tasks.synthetic",
    "dlmbench.tasks.text",
    "dlmbench.tasks.hub",
    "dlmbench.metrics.oracle",
    "dlmbench.metrics.text",
)


class UnmarkedHookWarning(UserWarning):
    """A plugin has a function named like a hook but not marked, so it is never called."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    location: str
    builtin: bool
    hooks: tuple[str, ...]


class DlmbenchPluginManager(pluggy.PluginManager):
    """pluggy's manager with the dlmbench hookspecs, plus the entry points that failed.

    ``failures`` maps an entry-point name to one printable line saying why it did not
    load; the CLI prints them as warnings.
    """

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.failures: dict[str, str] = {}

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register as pluggy does, warning about hook-named functions pluggy will skip."""
        plugin_name = super().register(plugin, name)
        if plugin_name is not None:
            for hook_name, caller in vars(self.hook).items():
                function = getattr(plugin, hook_name, None)
                if caller.has_spec() and callable(function) and self.parse_hookimpl_opts(plugin, hook_name) is None:
                    warnings.warn(
                        f"plugin {plugin_name!r}: function {hook_name!r} is not marked with "
                        "@dlmbench.hookimpl, so pluggy does not call it; add the decorator",
                        UnmarkedHookWarning,
                        stacklevel=2,
                    )
        return plugin_name


def _one_line(exc: Exception) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _load_entry_points(pm: DlmbenchPluginManager, only: Iterable[str] | None) -> None:
    """Load the entry points (all, or those named in ``only``) one by one, recording failures."""
    installed = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    if only is None:
        names = list(installed)
    else:
        names = list(dict.fromkeys(n.strip() for n in only if n.strip()))
        for name in names:
            if name not in installed:
                raise UnknownNameError(
                    f"no installed plugin entry point is named {name!r} "
                    f"(built-in plugins always load).{did_you_mean(name, list(installed))}"
                )
    for name in names:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
            pm.check_pending()  # a misspelt hook fails this plugin, not the whole manager
        except Exception as exc:  # noqa: BLE001 - any error loading a plugin is its own failure
            if pm.has_plugin(name):
                pm.unregister(name=name)
            pm.failures[name] = (
                f"plugin {name!r} (entry point {name} = {installed[name].value}) "
                f"failed to load: {_one_line(exc)}"
            )


def get_plugin_manager(
    only: Iterable[str] | None = None,
    autoload: bool = True,
    extra: Iterable[object] = (),
    defaults: bool = True,
) -> DlmbenchPluginManager:
    """A fresh plugin manager (no import-time global, so tests stay isolated).

    ``only`` names the entry points to load (``None``: all; ``[]``: none); naming one that
    is not installed raises :class:`UnknownNameError` listing those that are.
    ``autoload=False`` loads no entry point. ``extra`` registers plugin objects directly
    (tests, notebooks); ``defaults=False`` leaves out the built-ins. Entry points that fail
    to load are in ``.failures``; misspelt hooks of built-ins or extras raise
    ``pluggy.PluginValidationError``.
    """
    pm = DlmbenchPluginManager()
    for modname in DEFAULT_PLUGINS if defaults else ():
        pm.register(importlib.import_module(modname), name=modname)
    if autoload:
        _load_entry_points(pm, only)
    for obj in extra:
        pm.register(obj)
    pm.check_pending()
    return pm


def _call_register_hook(hook: pluggy.HookCaller, add: Callable[..., None]) -> None:
    """Call each implementation in registration order with a ``register`` that knows its origin."""
    for impl in hook.get_hookimpls():
        if impl.hookwrapper or impl.wrapper:
            raise TypeError(
                f"plugin {impl.plugin_name!r}: {hook.name} collects registrations; "
                "a wrapper implementation cannot take part"
            )
        kwargs = {"register": functools.partial(add, plugin=impl.plugin_name)}
        impl.function(*(kwargs[arg] for arg in impl.argnames))  # pluggy's calling convention


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Call every ``register_*`` hook and collect the results, noting their origin."""
    registry = Registry()
    _call_register_hook(pm.hook.register_models, registry.add_model)
    _call_register_hook(pm.hook.register_samplers, registry.add_sampler)
    _call_register_hook(pm.hook.register_metrics, registry.add_metric)
    _call_register_hook(pm.hook.register_tasks, registry.add_task)
    return registry


def load_registry(
    only: Iterable[str] | None = None, extra: Iterable[object] = (), autoload: bool = True
) -> Registry:
    """A registry from a plugin manager of its own, for scripts and tests.

    The CLI builds one manager per process and calls :func:`build_registry` on it instead.
    """
    return build_registry(get_plugin_manager(only=only, autoload=autoload, extra=extra))


def describe_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Name, version, location and implemented hooks of every loaded plugin."""
    from dlmbench import __version__

    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    infos = []
    for name, plugin in pm.list_name_plugin():
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or []))
        builtin = name in DEFAULT_PLUGINS
        dist = dists.get(id(plugin))
        version = dist.version if dist is not None else __version__ if builtin else "?"
        location = getattr(plugin, "__file__", None) or repr(plugin)
        infos.append(PluginInfo(name, version, str(location), builtin, hooks))
    return infos


def plugin_versions(pm: pluggy.PluginManager) -> dict[str, str]:
    """Version of every non-built-in plugin, for the run record."""
    return {p.name: p.version for p in describe_plugins(pm) if not p.builtin}
