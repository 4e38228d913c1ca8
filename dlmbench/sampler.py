"""The sampler interface, kept separate from the model (the diffusers split).

A sampler takes a model, a step budget and a request (batch size, optional
conditioning prefix, a seeded generator) and returns token ids. It never counts its own
function evaluations: the core counts forward calls of ``model.network``.
"""

from __future__ import annotations

import itertools
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from dlmbench.data import DataSpec, SampleRequest
from dlmbench.model import Model


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a sampler builds its state: the device of the model's first parameter or
    buffer (CPU for a model with neither)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


class SamplerConfig(BaseModel):
    """Base of sampler settings; subclasses add fields (``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Sampler:
    """Base class of every sampler plugin.

    Class attributes a plugin sets:
      ``name``: the sampler id (unique per model, e.g. ``sde``).
      ``model``: the model name it serves.
      ``Config``: its :class:`SamplerConfig` subclass.
    """

    name: ClassVar[str] = ""
    model: ClassVar[str] = ""
    Config: ClassVar[type[SamplerConfig]] = SamplerConfig

    def __init__(self, config: SamplerConfig | None = None):
        self.config = config if config is not None else self.Config()

    def sample(self, model: Model, request: SampleRequest) -> torch.Tensor:
        """Return ``(request.num_samples, model.spec.seq_len)`` int64 token ids.

        For conditional tasks the first ``model.spec.prefix_len`` columns repeat
        ``request.prefix``: :func:`dlmbench.prefix.initial_ids` builds such a start.
        """
        raise NotImplementedError

    def max_nfe(self, steps: int, spec: DataSpec | None = None) -> int:
        """Upper bound on function evaluations per sample for ``steps`` steps.

        The conformance kit checks the measured NFE never exceeds it. ``spec`` is for
        samplers whose cost depends on the length rather than ``steps`` (the AR
        baseline: one evaluation per generated token).
        """
        return steps

    def exact_nfe(self) -> bool:
        """True when the NFE always equals :meth:`max_nfe` (no caching)."""
        return True
