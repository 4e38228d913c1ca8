"""The conditional prefix, handled once: which positions a model corrupts and scores, and
the start every sampler builds from a request."""

from __future__ import annotations

import pytest
import torch

from dlmbench.data import Batch, DataSpec, SampleRequest
from dlmbench.errors import ConfigError
from dlmbench.prefix import initial_ids, request_prefix, target_positions

UNCOND = DataSpec(vocab_size=12, seq_len=6, pad_id=0, bos_id=2, eos_id=3, mask_id=4)
COND = DataSpec(vocab_size=12, seq_len=6, pad_id=0, bos_id=2, eos_id=3, mask_id=4, prefix_len=2)


def request(n: int, prefix: torch.Tensor | None = None) -> SampleRequest:
    return SampleRequest(steps=4, num_samples=n, generator=torch.Generator().manual_seed(0), prefix=prefix)


def test_unconditional_rows_are_all_target():
    tokens = torch.randint(5, 12, (3, 6))
    target, scored = target_positions(UNCOND, Batch(tokens))
    assert target.shape == scored.shape == (3, 6) and target.dtype == torch.bool
    assert bool(target.all()) and bool(scored.all())


def test_prefix_is_neither_target_nor_scored_and_loss_mask_narrows_the_scored():
    tokens = torch.randint(5, 12, (3, 6))
    target, scored = target_positions(COND, Batch(tokens))
    assert not bool(target[:, :2].any()) and bool(target[:, 2:].all())
    assert torch.equal(scored, target)
    loss_mask = torch.zeros(3, 6, dtype=torch.long)
    loss_mask[:, [0, 4]] = 1  # a prefix position in the mask is still not scored
    target, scored = target_positions(COND, Batch(tokens, loss_mask))
    expected = torch.zeros(3, 6, dtype=torch.bool)
    expected[:, 4] = True
    assert torch.equal(scored, expected) and bool(target[:, 2:].all())


def test_request_prefix_is_none_without_a_prefix_and_int64_with_one():
    assert request_prefix(UNCOND, request(3), "cpu") is None
    prefix = torch.tensor([[5, 6], [7, 8], [9, 10]], dtype=torch.int32)
    got = request_prefix(COND, request(3, prefix), "cpu")
    assert got.dtype == torch.long and torch.equal(got, prefix.long())


@pytest.mark.parametrize("prefix", [None, torch.ones(3, 3, dtype=torch.long), torch.ones(2, 2, dtype=torch.long)])
def test_a_conditional_request_without_the_right_prefix_is_refused(prefix):
    with pytest.raises(ConfigError, match=r"request.prefix must be \(3, 2\)"):
        request_prefix(COND, request(3, prefix), "cpu")
    with pytest.raises(ConfigError, match="request.prefix"):
        initial_ids(COND, request(3, prefix), COND.mask_id, "cpu")


def test_initial_ids_fill_the_target_and_keep_the_prefix():
    prefix = torch.tensor([[5, 6], [7, 8]])
    x = initial_ids(COND, request(2, prefix), COND.mask_id, "cpu")
    assert x.shape == (2, 6) and x.dtype == torch.long
    assert torch.equal(x[:, :2], prefix) and bool((x[:, 2:] == COND.mask_id).all())
    fill = torch.randint(0, 12, (2, 6), generator=torch.Generator().manual_seed(1))
    y = initial_ids(COND, request(2, prefix), fill.clone(), "cpu")
    assert torch.equal(y[:, :2], prefix) and torch.equal(y[:, 2:], fill[:, 2:])
    z = initial_ids(UNCOND, request(2), 7, "cpu")
    assert bool((z == 7).all())
