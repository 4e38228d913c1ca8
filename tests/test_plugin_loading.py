"""Entry-point plugins load through pluggy's loader, one at a time, from real dist-info.

Each test installs plugin modules as a distribution on a temporary ``sys.path`` entry (a
``.dist-info`` directory with ``METADATA`` and ``entry_points.txt``, what pip writes), so
``importlib.metadata.distributions()`` finds them exactly as it finds installed plugins.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

import dlmbench
from dlmbench.errors import UnknownNameError
from dlmbench.plugins import DEFAULT_PLUGINS, build_registry, describe_plugins, get_plugin_manager, plugin_versions

GOOD = """
    import dlmbench
    import toyplugin

    class Good(toyplugin.ToyModel):
        name = "good"

    @dlmbench.hookimpl(specname="register_models")
    def models(register):
        register(Good)
"""
BROKEN = "import dlmbench_missing_dependency\n"
MISSPELT = """
    import dlmbench

    @dlmbench.hookimpl
    def register_model(register):
        pass
"""


@pytest.fixture
def install(tmp_path, monkeypatch):
    """``install(dist, version, {entry_point_name: module_source})``, as pip would."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules: list[str] = []

    def install(dist: str, version: str, plugins: dict[str, str]) -> None:
        info = site / f"{dist}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = ["[dlmbench]"]
        for name, source in plugins.items():
            module = f"{dist}_{name}"
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            lines.append(f"{name} = {module}")
            modules.append(module)
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        importlib.invalidate_caches()

    yield install
    for module in modules:
        sys.modules.pop(module, None)


def names(pm) -> set[str]:
    return {name for name, _ in pm.list_name_plugin()}


BROKEN_LINE = (
    "plugin 'broken' (entry point broken = demo_broken) failed to load: "
    "ModuleNotFoundError: No module named 'dlmbench_missing_dependency'"
)


@pytest.mark.parametrize("only", [["broken", "good"], None], ids=["named", "all"])
def test_a_plugin_that_fails_to_import_is_reported_and_the_others_still_load(install, only):
    install("demo", "1.2.3", {"broken": BROKEN, "good": GOOD})
    pm = get_plugin_manager(only=only)
    assert pm.failures["broken"] == BROKEN_LINE
    assert only is None or list(pm.failures) == ["broken"]  # only=None also loads the shipped plugins
    assert pm.has_plugin("good") and not pm.has_plugin("broken")
    registry = build_registry(pm)
    assert registry.origin[(dlmbench.Model, "good")] == "good"
    assert "ar" in registry.models  # the built-ins are unaffected


def test_a_misspelt_hook_fails_only_its_plugin(install):
    install("demo", "1.0", {"misspelt": MISSPELT, "good": GOOD})
    pm = get_plugin_manager(only=["misspelt", "good"])
    assert list(pm.failures) == ["misspelt"]
    assert "PluginValidationError: unknown hook 'register_model'" in pm.failures["misspelt"]
    assert not pm.has_plugin("misspelt") and "good" in build_registry(pm).models


def test_versions_come_from_the_distribution(install):
    install("demo", "1.2.3", {"good": GOOD})
    pm = get_plugin_manager(only=["good"])
    assert [(d.project_name, d.version) for _, d in pm.list_plugin_distinfo()] == [("demo", "1.2.3")]
    assert plugin_versions(pm) == {"good": "1.2.3"}
    info = {p.name: p for p in describe_plugins(pm)}
    assert info["good"].hooks == ("register_models",) and info["good"].location.endswith("demo_good.py")
    assert info["dlmbench.builtin.ar"].version == dlmbench.__version__


def test_a_manager_loaded_by_pluggy_directly_is_described_with_versions(install):
    """Versions live in pluggy's distinfo, not in a side table only our loader filled."""
    install("demo", "2.0", {"good": GOOD})
    pm = get_plugin_manager(autoload=False)
    pm.load_setuptools_entrypoints("dlmbench", name="good")
    assert plugin_versions(pm) == {"good": "2.0"}


def test_only_restricts_loading(install):
    install("demo", "1.0", {"broken": BROKEN, "good": GOOD})
    pm = get_plugin_manager(only=[" good "])
    assert pm.failures == {} and names(pm) == set(DEFAULT_PLUGINS) | {"good"}
    for nothing in (get_plugin_manager(only=[]), get_plugin_manager(only=["good"], autoload=False)):
        assert nothing.failures == {} and names(nothing) == set(DEFAULT_PLUGINS)


def test_naming_a_plugin_that_is_not_installed_lists_the_installed_ones(install):
    install("demo", "1.0", {"good": GOOD})
    with pytest.raises(UnknownNameError, match=r"named 'goood' .*Did you mean 'good'\?.* good"):
        get_plugin_manager(only=["goood"])


def test_a_broken_plugin_leaves_ls_and_run_working_and_is_named_on_stderr(install, tmp_path, monkeypatch):
    """Once, one plugin raising at import broke every command, ``ls`` included."""
    from click.testing import CliRunner

    from dlmbench.cli import cli

    install("demo", "1.2.3", {"broken": BROKEN})
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    listed = runner.invoke(cli, ["ls"])
    assert listed.exit_code == 0, listed.output
    assert "ar " in listed.stdout and "elf" in listed.stdout  # the working plugins are all there
    assert listed.stderr.count(BROKEN_LINE) == 1
    ran = runner.invoke(cli, ["run", "--models", "ar", "--steps", "2", "--seq-len", "8", "--num-samples", "2",
                              "--seeds", "0", "--train-tokens", "64", "--batch-size", "2", "--no-progress",
                              "--out", str(tmp_path / "r"), "--cache", str(tmp_path / "c")])
    assert ran.exit_code == 0, ran.output
    assert "broken" in ran.stderr and (tmp_path / "r" / "leaderboard.md").exists()
