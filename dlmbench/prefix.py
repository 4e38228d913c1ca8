"""The clean prefix of a conditional task, handled once for every model and sampler.

On a conditional task (``spec.prefix_len = P > 0``) the first ``P`` positions of every
row hold the source. A model neither corrupts nor scores them (:func:`target_positions`);
a sampler starts from the request's prefix and returns it unchanged
(:func:`request_prefix`, :func:`initial_ids`), so every model is asked the same question.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from dlmbench.data import Batch, DataSpec, SampleRequest
from dlmbench.errors import ConfigError


class TargetPositions(NamedTuple):
    """Boolean ``(B, L)`` masks of a batch."""

    target: Tensor  # positions from prefix_len on: the ones a model corrupts and generates
    scored: Tensor  # target positions the loss counts: narrowed by batch.loss_mask when given


def target_positions(spec: DataSpec, batch: Batch) -> TargetPositions:
    """Which positions of ``batch`` are the target, and which of those the loss counts."""
    tokens = batch.tokens
    target = torch.arange(tokens.shape[1], device=tokens.device) >= spec.prefix_len
    target = target.unsqueeze(0).expand_as(tokens)
    scored = target if batch.loss_mask is None else target & batch.loss_mask.to(torch.bool)
    return TargetPositions(target, scored)


def request_prefix(spec: DataSpec, request: SampleRequest, device: torch.device | str) -> Tensor | None:
    """The request's ``(num_samples, prefix_len)`` prefix as int64 on ``device``; None on an
    unconditional task. Raises :class:`ConfigError` when a conditional request lacks it or
    gives another shape."""
    n, P = request.num_samples, spec.prefix_len
    if P == 0:
        return None
    if request.prefix is None or tuple(request.prefix.shape) != (n, P):
        got = None if request.prefix is None else tuple(request.prefix.shape)
        raise ConfigError(f"conditional task: request.prefix must be ({n}, {P}), got {got}")
    return request.prefix.to(device=device, dtype=torch.long)


def initial_ids(spec: DataSpec, request: SampleRequest, fill: int | Tensor,
                device: torch.device | str) -> Tensor:
    """A sampler's ``(num_samples, seq_len)`` int64 start: ``fill`` (an id, or a tensor of
    that shape, e.g. draws from a uniform prior) with the request's prefix written over the
    first ``prefix_len`` positions."""
    if isinstance(fill, int):
        x = torch.full((request.num_samples, spec.seq_len), fill, dtype=torch.long, device=device)
    else:
        x = fill.to(device=device, dtype=torch.long)
    prefix = request_prefix(spec, request, device)
    if prefix is not None:
        x[:, : spec.prefix_len] = prefix
    return x
