"""The float64 draw guard of :mod:`dlmbench.testing.draws` trips on what it promises to."""

from __future__ import annotations

import re
import subprocess
import types
from pathlib import Path

import pytest
import torch

from dlmbench.categorical import sample_categorical
from dlmbench.testing.draws import float64_draws

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


def sampler_module() -> types.ModuleType:
    """A stand-in sampler module that imported ``sample_categorical`` by name."""
    module = types.ModuleType("standin_sampler")
    module.sample_categorical = sample_categorical
    return module


def test_float64_categorical_draws_pass_and_are_counted():
    module, g = sampler_module(), torch.Generator().manual_seed(0)
    with float64_draws(module) as seen:
        module.sample_categorical(torch.ones(4, 3, dtype=torch.float64), g)
        module.sample_categorical(torch.ones(4, 3, dtype=torch.float64), g)
        torch.randint(0, 5, (3,), generator=g)  # integer draws are exact
    assert seen.categorical == {"standin_sampler": 2}
    assert seen.floats == [("rand", torch.float64)] * 2
    assert module.sample_categorical is sample_categorical  # restored


@pytest.mark.parametrize("bad", [
    lambda m, g: m.sample_categorical(torch.ones(4, 3), g),  # float32 weights
    lambda m, g: torch.rand(3, generator=g),  # float32 uniforms (a hand-rolled Gumbel)
    lambda m, g: torch.rand_like(torch.ones(3)),
    lambda m, g: torch.empty(3).uniform_(generator=g),
    lambda m, g: torch.empty(3).exponential_(generator=g),
    lambda m, g: torch.multinomial(torch.ones(3, dtype=torch.float64), 1, generator=g),
    lambda m, g: torch.ones(3, dtype=torch.float64).multinomial(1, generator=g),
], ids=["float32-weights", "rand", "rand_like", "uniform_", "exponential_", "multinomial", "Tensor.multinomial"])
def test_the_guard_trips_on_float32_draws_and_on_multinomial(bad):
    module, g = sampler_module(), torch.Generator().manual_seed(0)
    with pytest.raises(AssertionError):
        with float64_draws(module):
            bad(module, g)
    torch.rand(3, generator=g)  # and everything is restored after the block
    torch.multinomial(torch.ones(3), 1, generator=g)


def test_no_package_module_draws_categories_outside_dlmbench_categorical():
    """The runtime guard sees only the samplers a test runs; this covers every module of
    the package and its plugins (tests excluded): no call of multinomial, a Gumbel
    helper, exponential_ or torch.distributions, which would bypass the float64 draw."""
    pattern = re.compile(r"multinomial\(|gumbel\w*\(|exponential_\(|torch\.distributions", re.IGNORECASE)
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "dlmbench/*.py",
                            "plugins/*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    allowed = {"dlmbench/categorical.py", "dlmbench/testing/draws.py"}
    hits = [f"{name}:{i}" for name in files if "/tests/" not in name and name not in allowed and (ROOT / name).is_file()
            for i, line in enumerate((ROOT / name).read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "draw categories with dlmbench.categorical.sample_categorical: " + ", ".join(hits)
