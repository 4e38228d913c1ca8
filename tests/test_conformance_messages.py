"""The conformance kit tells a plugin author what is wrong and where to fix it.

The kit runs as its author runs it, under pytest, but in this process (the
``inner_pytest`` fixture of ``conftest.py``); the plugin's bug is put in with
``monkeypatch``, so it ends with the test.
"""

from __future__ import annotations

import textwrap

import pytest

KIT = textwrap.dedent("""
    import pytest
    import toyplugin
    from dlmbench.testing.conformance import ModelConformance


    class TestToy(ModelConformance):
        model_name = "toy"

        @pytest.fixture(scope="class")
        def registry(self):
            from dlmbench.plugins import build_registry, get_plugin_manager

            return build_registry(get_plugin_manager(autoload=False, defaults=False, extra=[toyplugin]))
""")


@pytest.fixture
def run_kit(tmp_path, inner_pytest):
    """Exit code and failure text of the kit's checks that ``select`` picks."""

    def call(select: str) -> tuple[int, str]:
        kit = tmp_path / "test_kit.py"
        kit.write_text(KIT)
        code, passed, failed = inner_pytest("--rootdir", tmp_path, "-k", select, kit)
        assert passed or failed, "the kit collected nothing"
        return code, "\n".join(failed)

    return call


def test_a_wrong_default_sampler_names_the_samplers_there_are(run_kit, monkeypatch):
    import toyplugin

    monkeypatch.setattr(toyplugin.ToyModel, "default_sampler", "revael")
    code, out = run_kit("registered")
    assert code == 1 and "default_sampler = 'revael', but 'toy' has the samplers ['reveal']" in out


def test_an_unseeded_sampler_fails_the_determinism_check_with_its_reason(run_kit, monkeypatch):
    import torch
    import toyplugin

    sample = toyplugin.Reveal.sample

    def unseeded(self, model, request):
        request.generator.manual_seed(int(torch.randint(0, 2**31, (1,))))
        return sample(self, model, request)

    monkeypatch.setattr(toyplugin.Reveal, "sample", unseeded)
    code, out = run_kit("seed_determinism")
    assert code == 1 and "gave other ids on the same seed" in out and "request.generator" in out


def test_the_kit_passes_the_toy_plugin_as_it_is(run_kit):
    """The messages above come from the bugs put in, not from a kit that always fails."""
    code, out = run_kit("registered or seed_determinism")
    assert code == 0, out
