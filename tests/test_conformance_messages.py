"""The conformance kit tells a plugin author what is wrong and where to fix it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).parent

KIT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import pytest
    import toyplugin
    from dlmbench.testing.conformance import ModelConformance

    {patch}

    class TestToy(ModelConformance):
        model_name = "toy"

        @pytest.fixture(scope="class")
        def registry(self):
            from dlmbench.plugins import build_registry, get_plugin_manager

            return build_registry(get_plugin_manager(autoload=False, defaults=False, extra=[toyplugin]))
""")


def run_kit(tmp_path, patch, select):
    (tmp_path / "test_kit.py").write_text(KIT.format(tests=str(TESTS), patch=patch))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", select,
                          str(tmp_path / "test_kit.py")], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    return out.returncode, out.stdout


def test_a_wrong_default_sampler_names_the_samplers_there_are(tmp_path):
    code, out = run_kit(tmp_path, "toyplugin.ToyModel.default_sampler = 'revael'", "registered")
    assert code == 1 and "default_sampler = 'revael', but 'toy' has the samplers ['reveal']" in out


def test_an_unseeded_sampler_fails_the_determinism_check_with_its_reason(tmp_path):
    patch = textwrap.dedent("""
        import torch
        _sample = toyplugin.Reveal.sample
        def unseeded(self, model, request):
            request.generator.manual_seed(int(torch.randint(0, 2**31, (1,))))
            return _sample(self, model, request)
        toyplugin.Reveal.sample = unseeded
    """)
    code, out = run_kit(tmp_path, patch, "seed_determinism")
    assert code == 1 and "gave other ids on the same seed" in out and "request.generator" in out
