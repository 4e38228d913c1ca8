"""A guard that every random draw a sampler makes is a float64 categorical draw.

Float32 uniforms truncate the Gumbel / exponential noise of a categorical draw and lower
the effective temperature (Zheng et al., arXiv 2409.02908), which no frequency
test of a few thousand samples can see: the distortion lives in events of probability
about ``2**-24`` per draw. So the guard checks the dtype actually drawn instead.
:func:`float64_draws` wraps, for the block it guards, ``sample_categorical`` as each
given sampler module sees it (counting calls, requiring float64 weights) and the torch
functions that produce random floats (``rand``, ``rand_like``, ``Tensor.uniform_``,
``Tensor.exponential_``), requiring float64 results; ``multinomial`` is refused outright,
since every categorical draw must go through :mod:`dlmbench.categorical`. Integer draws
(``randint``, e.g. a uniform prior over ids) are exact and allowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from types import ModuleType
from typing import Iterator
from unittest import mock

import torch


@dataclasses.dataclass
class Draws:
    """What the guarded block drew: categorical calls per module, float draws by name."""

    categorical: dict[str, int] = dataclasses.field(default_factory=dict)
    floats: list[tuple[str, torch.dtype]] = dataclasses.field(default_factory=list)


@contextlib.contextmanager
def float64_draws(*modules: ModuleType) -> Iterator[Draws]:
    """Fail (``AssertionError`` at the draw) on any random float draw not in float64,
    on float32 weights passed to ``sample_categorical`` by ``modules``, and on
    ``multinomial``; yields the :class:`Draws` made."""
    seen = Draws()

    def categorical(module: ModuleType):
        original = module.sample_categorical

        def wrapped(probs, generator, *args, **kwargs):
            assert probs.dtype == torch.float64, f"{module.__name__}: categorical weights in {probs.dtype}"
            seen.categorical[module.__name__] = seen.categorical.get(module.__name__, 0) + 1
            return original(probs, generator, *args, **kwargs)

        return wrapped

    def floats(name: str, original):
        def wrapped(*args, **kwargs):
            out = original(*args, **kwargs)
            assert out.dtype == torch.float64, f"a random draw ({name}) in {out.dtype}"
            seen.floats.append((name, out.dtype))
            return out

        return wrapped

    def refused(*args, **kwargs):
        raise AssertionError("multinomial: categorical draws must use dlmbench.categorical (float64)")

    with contextlib.ExitStack() as stack:
        for module in modules:
            stack.enter_context(mock.patch.object(module, "sample_categorical", categorical(module)))
        for name in ("rand", "rand_like"):
            stack.enter_context(mock.patch.object(torch, name, floats(name, getattr(torch, name))))
        for name in ("uniform_", "exponential_"):
            stack.enter_context(mock.patch.object(torch.Tensor, name, floats(name, getattr(torch.Tensor, name))))
        stack.enter_context(mock.patch.object(torch, "multinomial", refused))
        stack.enter_context(mock.patch.object(torch.Tensor, "multinomial", refused))
        yield seen
