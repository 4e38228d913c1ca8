"""The plugin layer: hooks, registration checks, documentation of every hook."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import click
import pluggy
import pytest
from click.testing import CliRunner

import dlmbench
from dlmbench import hookspecs
from dlmbench.errors import ConfigError, UnknownNameError
from dlmbench.plugins import UnmarkedHookWarning, build_registry, get_plugin_manager

README = Path(__file__).parents[1] / "README.md"


def hook_names():
    return [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("register_")]


def test_every_hook_is_documented_with_its_exact_signature():
    """README and the hookspec docstring both state each hook's exact signature."""
    readme = README.read_text()
    for name in hook_names():
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert re.search(rf"{name}\({params}\b", readme), f"README does not document {name}({params})"
        assert f"{name}(" in hookspecs.__doc__


def test_a_hook_with_a_typo_is_rejected():
    class Typo:
        @dlmbench.hookimpl
        def register_model(self, register):  # missing "s"
            pass

    with pytest.raises(pluggy.PluginValidationError):
        get_plugin_manager(autoload=False, defaults=False, extra=[Typo()])


def test_registering_a_non_model_is_a_type_error():
    class Bad:
        @dlmbench.hookimpl
        def register_models(self, register):
            register(dict)

    pm = get_plugin_manager(autoload=False, defaults=False, extra=[Bad()])
    with pytest.raises(TypeError, match="through register_models, which takes dlmbench.Model subclasses"):
        build_registry(pm)


def test_a_sampler_without_its_model_is_a_type_error():
    import toyplugin

    class Orphan:
        @dlmbench.hookimpl
        def register_samplers(self, register):
            register(type("Orphan", (toyplugin.Reveal,), {"model": ""}))

    pm = get_plugin_manager(autoload=False, defaults=False, extra=[Orphan()])
    with pytest.raises(TypeError, match="must set `model`"):
        build_registry(pm)


def test_a_hookimpl_with_specname_registers_under_its_plugin_name():
    """pluggy's ``specname`` lets the function have any name; it was ignored by getattr dispatch."""
    import toyplugin

    class Provider:
        @dlmbench.hookimpl(specname="register_models")
        def provide_the_toy(self, register):
            register(toyplugin.ToyModel)

    provider = Provider()
    pm = get_plugin_manager(autoload=False, defaults=False, extra=[provider])
    registry = build_registry(pm)
    assert registry.models == {"toy": toyplugin.ToyModel}
    assert registry.origin[(dlmbench.Model, "toy")] == pm.get_name(provider)


def test_an_unmarked_hook_function_is_not_called_and_the_warning_says_why():
    """A function merely named like a hook is invisible to pluggy; registering it anyway hid the bug."""
    import toyplugin

    class Unmarked:
        def register_models(self, register):
            register(toyplugin.ToyModel)

    unmarked = Unmarked()
    with pytest.warns(UnmarkedHookWarning) as caught:
        pm = get_plugin_manager(autoload=False, defaults=False, extra=[unmarked])
    assert [str(w.message) for w in caught] == [
        f"plugin {pm.get_name(unmarked)!r}: function 'register_models' is not marked with "
        "@dlmbench.hookimpl, so pluggy does not call it; add the decorator"
    ]
    assert build_registry(pm).models == {}


def test_a_wrapper_on_a_register_hook_is_rejected():
    class Wrapper:
        @dlmbench.hookimpl(wrapper=True)
        def register_models(self, register):
            return (yield)

    pm = get_plugin_manager(autoload=False, defaults=False, extra=[Wrapper()])
    with pytest.raises(TypeError, match="a wrapper implementation cannot take part"):
        build_registry(pm)


def test_builtins_register_before_extras():
    import toyplugin

    class Shadow:
        @dlmbench.hookimpl
        def register_models(self, register):
            register(type("Shadow", (toyplugin.ToyModel,), {"name": "ar"}))

    shadow = Shadow()
    pm = get_plugin_manager(autoload=False, extra=[shadow])
    with pytest.raises(ConfigError, match=f"by 'dlmbench.builtin.ar' and by '{pm.get_name(shadow)}'"):
        build_registry(pm)


def test_the_same_name_from_two_plugins_is_an_error():
    import toyplugin

    class Twin:
        @dlmbench.hookimpl
        def register_models(self, register):
            register(type("ToyTwin", (toyplugin.ToyModel,), {}))

    pm = get_plugin_manager(autoload=False, defaults=False, extra=[toyplugin, Twin()])
    with pytest.raises(ConfigError, match="registered twice"):
        build_registry(pm)


def test_builtins_come_through_the_same_hooks(toy_registry):
    registry = build_registry(get_plugin_manager(autoload=False))
    assert "ar" in registry.models and "grammar" in registry.tasks and "oracle-nll" in registry.metrics
    assert registry.origin[(dlmbench.Model, "ar")] == "dlmbench.builtin.ar"


def test_register_commands_adds_a_subcommand():
    from dlmbench.cli import PluginCommandGroup

    class Commands:
        @dlmbench.hookimpl
        def register_commands(self, cli):
            @cli.command()
            def hello():
                click.echo("hello from a plugin")

    group = PluginCommandGroup()
    get_plugin_manager(autoload=False, defaults=False, extra=[Commands()]).hook.register_commands(cli=group)
    result = CliRunner().invoke(group, ["hello"])
    assert result.exit_code == 0 and "hello from a plugin" in result.output


def _registry_of(*plugins):
    return build_registry(get_plugin_manager(autoload=False, defaults=False, extra=list(plugins)))


def test_plugin_mistakes_each_get_one_message_naming_the_fix():
    import toyplugin

    class NoConfig(dlmbench.Model):
        name = "noconf"

    class WrongConfig(toyplugin.ToyModel):
        name = "wrongconf"
        Config = dict

    class Orphan(toyplugin.Reveal):
        name = "topk"
        model = "bda"

    def plugin(hook, cls):
        holder = type("P", (), {hook: staticmethod(dlmbench.hookimpl(lambda register: register(cls)))})
        return holder()

    cases = [
        (plugin("register_models", NoConfig), "has no Config of its own: set `Config = NoConfigConfig`"),
        (plugin("register_models", WrongConfig), "is not a dlmbench.ModelConfig subclass; derive it from"),
        (plugin("register_samplers", Orphan), "sampler 'topk' from plugin"),
    ]
    for bad, message in cases:
        with pytest.raises(TypeError, match=re.escape(message)):
            _registry_of(toyplugin, bad)
    with pytest.raises(TypeError, match="is registered for model 'bda', which no plugin registers"):
        _registry_of(toyplugin, cases[2][0])


def test_a_sampler_of_another_model_is_named_with_its_owner():
    import toyplugin

    from dlmbench.builtin.ar import AR

    registry = _registry_of(toyplugin)
    registry.add_model(AR, "builtin")
    with pytest.raises(UnknownNameError, match="sampler 'reveal' is registered for 'toy', not for 'ar'"):
        registry.sampler("ar", "reveal")
    with pytest.raises(UnknownNameError, match="entry-point group; `dlmbench plugins` lists what loaded"):
        registry.model("d3pm")


def test_one_plugin_manager_per_invocation_honours_plugins_for_commands_too(monkeypatch):
    """Once, plugin sub-commands came from a second manager that ignored --plugins."""
    import dlmbench.plugins as plugins
    from dlmbench.cli import cli

    made = []
    real = plugins.get_plugin_manager

    def counting(*args, **kwargs):
        made.append(kwargs.get("only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(plugins, "get_plugin_manager", counting)
    out = CliRunner().invoke(cli, ["ls", "--plugins", "mdlm"])
    assert out.exit_code == 0 and "mdlm" in out.output and "elf " not in out.output
    assert made == [["mdlm"]]
    made.clear()
    out = CliRunner().invoke(cli, ["no-such-command", "--plugins", "mdlm"])
    assert out.exit_code != 0 and made == [["mdlm"]]  # the plugin-command look-up used the same restriction
