"""The validation likelihood bound against a hand count: a stand-in model whose NELBO is
known, rows whose decoded bytes are known."""

from __future__ import annotations

import math

import pytest
import torch

from dlmbench.bound import likelihood_bound
from dlmbench.data import DataSpec
from dlmbench.task import TaskData
from dlmbench.tokenizer import BOS_ID, EOS_ID, MASK_ID, PAD_ID, TextTokenizer

TOKENIZER = TextTokenizer.word_level(["a", "bb", "ccc"])
A, BB, CCC = (TOKENIZER.backend.token_to_id(w) for w in ("a", "bb", "ccc"))
# scored after the one-token prefix: "a bb ccc" (8 bytes), then "ccc" and two [PAD]s (3 bytes)
ROWS = torch.tensor([[BOS_ID, A, BB, CCC], [BOS_ID, CCC, PAD_ID, PAD_ID]] * 150)


def task_(prefix_len=1):
    spec = DataSpec(TOKENIZER.vocab_size, 4, PAD_ID, BOS_ID, EOS_ID, MASK_ID, prefix_len)
    return TaskData("t", spec, TOKENIZER, ROWS[:2], ROWS)


class KnownNELBO:
    """NELBO of a row: 2 + (its first scored token == ccc) + a uniform draw from torch's
    generator (as a model's random times are), recording each call's rows."""

    def __init__(self, bounded=True):
        self.bounded, self.calls = bounded, []

    def nelbo(self, batch):
        self.calls.append(batch.tokens)
        if not self.bounded:
            return None
        x = batch.tokens
        return 2.0 + (x[:, 1] == CCC).double() + torch.rand(x.shape[0], dtype=torch.float64)


def test_bound_per_token_per_byte_and_rows_by_hand():
    model = KnownNELBO()
    bound = likelihood_bound(model, task_(), "cpu", seed=7, max_rows=200)
    torch.manual_seed(7)  # the draws of two calls, 128 rows then 72, in the bound's order
    draws = torch.cat([torch.rand(128, dtype=torch.float64), torch.rand(72, dtype=torch.float64)])
    total = float((2.0 + torch.tensor([0.0, 1.0]).repeat(100) + draws).sum())
    assert [c.shape[0] for c in model.calls] == [128, 72]
    assert torch.equal(torch.cat(model.calls), ROWS[:200])
    assert bound.rows == 200
    assert bound.nelbo_per_token == pytest.approx(total / (200 * 3), rel=1e-12)  # 3 scored positions a row
    assert bound.ppl_bound == pytest.approx(math.exp(total / 600), rel=1e-6)
    assert bound.nelbo_per_byte == pytest.approx(total / (100 * 8 + 100 * 3), rel=1e-12)


def test_bound_is_seeded_by_its_seed():
    again = likelihood_bound(KnownNELBO(), task_(), "cpu", seed=7, max_rows=200)
    assert likelihood_bound(KnownNELBO(), task_(), "cpu", seed=7, max_rows=200) == again
    assert likelihood_bound(KnownNELBO(), task_(), "cpu", seed=8, max_rows=200) != again


def test_bound_without_a_prefix_scores_every_position():
    bound = likelihood_bound(KnownNELBO(), task_(prefix_len=0), "cpu", seed=0, max_rows=2)
    torch.manual_seed(0)
    total = float((torch.tensor([2.0, 3.0], dtype=torch.float64) + torch.rand(2, dtype=torch.float64)).sum())
    # every position is scored: 2 rows x 4, and [BOS] decodes to nothing
    assert (bound.rows, bound.nelbo_per_token) == (2, pytest.approx(total / 8, rel=1e-12))
    assert bound.nelbo_per_byte == pytest.approx(total / 11, rel=1e-12)


def test_default_reads_at_most_512_rows():
    model = KnownNELBO()
    rows = torch.cat([ROWS, ROWS])  # 600
    task = TaskData("t", task_().spec, TOKENIZER, rows[:2], rows)
    assert likelihood_bound(model, task, "cpu", seed=0).rows == 512
    assert [c.shape[0] for c in model.calls] == [128, 128, 128, 128]


def test_model_without_a_bound_gives_none():
    model = KnownNELBO(bounded=False)
    assert likelihood_bound(model, task_(), "cpu", seed=0) is None
    assert len(model.calls) == 1  # it stops at the first answer


def test_bound_runs_without_gradients():
    seen = []

    class Grad(KnownNELBO):
        def nelbo(self, batch):
            seen.append(torch.is_grad_enabled())
            return super().nelbo(batch)

    likelihood_bound(Grad(), task_(), "cpu", seed=0, max_rows=2)
    assert seen == [False]


def test_rows_go_to_the_device_given():
    model = KnownNELBO(bounded=False)  # stops before any arithmetic a meta tensor could not do
    likelihood_bound(model, task_(), "meta", seed=0, max_rows=2)
    assert model.calls[0].device.type == "meta"


def test_rows_that_decode_to_no_text_have_no_per_byte_bound():
    rows = torch.tensor([[BOS_ID, PAD_ID, PAD_ID, EOS_ID]] * 3)  # only special tokens after the prefix
    task = TaskData("t", task_().spec, TOKENIZER, rows[:2], rows)
    bound = likelihood_bound(KnownNELBO(), task, "cpu", seed=0)
    assert bound.rows == 3 and bound.nelbo_per_token > 0
    assert bound.nelbo_per_byte is None
