"""Plain data carriers shared by models, samplers, tasks and metrics.

They are deliberately small: a model sees only a :class:`DataSpec` and :class:`Batch`
objects, so a plugin never depends on how a task stores its corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class DataSpec:
    """What a model must know about the data to be built.

    ``prefix_len`` is 0 for unconditional tasks; for conditional tasks the first
    ``prefix_len`` positions hold the clean source and the rest the target.
    Every tokenizer in dlmbench reserves ``pad``, ``bos``, ``eos`` and ``mask`` ids
    inside ``vocab_size`` so absorbing-state models need no extra row.
    """

    vocab_size: int
    seq_len: int
    pad_id: int
    bos_id: int
    eos_id: int
    mask_id: int
    prefix_len: int = 0

    @property
    def conditional(self) -> bool:
        return self.prefix_len > 0

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Batch:
    """A training or evaluation batch: ``tokens`` is ``(B, seq_len)`` int64.

    ``loss_mask`` (bool, same shape) marks the positions the loss is taken over; when
    None the model uses every position after ``spec.prefix_len``.
    """

    tokens: torch.Tensor
    loss_mask: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        mask = None if self.loss_mask is None else self.loss_mask.to(device)
        return Batch(self.tokens.to(device), mask)


@dataclass
class SampleRequest:
    """What a sampler is asked for.

    ``prefix`` is ``(num_samples, spec.prefix_len)`` for conditional tasks (the source
    tokens to continue from) and None otherwise. All randomness must come from
    ``generator`` so that a seed fixes the output.
    """

    steps: int
    num_samples: int
    generator: torch.Generator
    prefix: torch.Tensor | None = None


@dataclass
class Generation:
    """Samples as metrics see them.

    ``ids`` is the raw ``(B, seq_len)`` output; ``tokens`` holds each sample's
    continuation (prefix stripped, cut before the first EOS); ``texts`` their decoding.
    ``references`` are the target strings of a conditional task, ``sources`` its inputs.
    """

    ids: torch.Tensor
    tokens: list[list[int]]
    texts: list[str]
    references: list[str] | None = None
    sources: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
