"""The log-linear schedule and the stratified training times shared by MDLM and Duo."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dlmbench.schedule import LogLinearSchedule, ScheduleOutput, StratifiedUniform

EPS = 1e-3


def test_alpha_falls_linearly_from_one_to_eps():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    out = LogLinearSchedule(EPS)(t)
    assert isinstance(out, ScheduleOutput)
    torch.testing.assert_close(out.alpha_t, 1 - (1 - EPS) * t)
    assert float(out.alpha_t[0]) == 1.0 and math.isclose(float(out.alpha_t[-1]), EPS)


def test_d_alpha_is_the_time_derivative_of_alpha():
    t = torch.rand(7, dtype=torch.float64, requires_grad=True)
    schedule = LogLinearSchedule(0.1)
    (grad,) = torch.autograd.grad(schedule(t).alpha_t.sum(), t)
    torch.testing.assert_close(schedule(t.detach()).d_alpha_t, grad)


def test_total_noise_is_minus_log_alpha_and_finite_at_t_1():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    out = LogLinearSchedule(EPS)(t)
    torch.testing.assert_close(out.total_noise, -out.alpha_t.log())
    assert float(out.total_noise[0]) == 0.0
    assert math.isclose(float(out.total_noise[-1]), -math.log(EPS))


@pytest.mark.parametrize("t", [torch.tensor(0.3, dtype=torch.float64), torch.rand(4), torch.rand(2, 3)])
def test_every_field_has_the_shape_and_dtype_of_t(t):
    out = LogLinearSchedule(EPS)(t)
    for value in dataclasses.astuple(out):
        assert value.shape == t.shape and value.dtype == t.dtype


def test_schedule_objects_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        LogLinearSchedule(EPS).eps = 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        StratifiedUniform(EPS).antithetic = False


def strata(t: torch.Tensor, eps: float) -> torch.Tensor:
    n = t.numel()
    return (((t - eps) / (1 - eps)) * n).floor().long().sort().values


def test_antithetic_times_take_one_stratum_each_within_eps_and_1():
    n = 16
    t = StratifiedUniform(EPS, antithetic=True).sample(n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(strata(t, EPS), torch.arange(n))
    assert float(t.min()) >= EPS and float(t.max()) <= 1.0


def test_without_antithetic_times_are_plain_uniform_draws():
    n = 16
    g = torch.Generator().manual_seed(0)
    t = StratifiedUniform(EPS, antithetic=False).sample(n, generator=g)
    u = torch.rand(n, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(t, (1 - EPS) * u + EPS)
    assert not torch.equal(strata(t, EPS), torch.arange(n))  # 16 uniform draws almost never hit every stratum


def test_times_follow_the_generator_and_the_global_seed_without_one():
    dist = StratifiedUniform(EPS)
    a = dist.sample(8, generator=torch.Generator().manual_seed(3))
    b = dist.sample(8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    torch.manual_seed(5)
    c = dist.sample(8)
    torch.manual_seed(5)
    assert torch.equal(c, dist.sample(8))


@pytest.mark.parametrize("antithetic", [True, False])
def test_times_are_drawn_on_the_requested_device(antithetic):
    """The meta device stands in for an accelerator on the CPU suite: the uniforms and the
    strata offsets must both be made there."""
    t = StratifiedUniform(EPS, antithetic).sample(8, device="meta")
    assert t.device.type == "meta" and t.shape == (8,)


def test_stratified_times_wrap_at_one_like_the_reference():
    """``_sample_t`` of ``kuleshov-group/mdlm@c112c52 diffusion.py``, recomputed verbatim:
    ``(u / n + arange(n) / n) % 1``. With n = 2^16 the last row's float32 sum rounds up to
    exactly 1 when u > 1 - 2^-9; seed 240 is such a draw (found by search), and the
    reference's ``% 1`` wraps it to 0, i.e. t = eps."""
    n = 2**16
    t = StratifiedUniform(EPS).sample(n, generator=torch.Generator().manual_seed(240))
    u = torch.rand(n, generator=torch.Generator().manual_seed(240))
    offset = torch.arange(n) / n
    assert float(u[-1] / n + offset[-1]) == 1.0  # the case this test is about
    assert torch.equal(t, (1 - EPS) * ((u / n + offset) % 1) + EPS)
    assert float(t[-1]) == float(torch.tensor(EPS))
