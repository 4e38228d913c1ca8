"""EMA: ELF's fixed decay (closed form) and MDLM/Duo's warm-up (first decay 2/11)."""

from __future__ import annotations

import pytest
import torch

from dlmbench.ema import EMA

INIT, VALUES = 1.5, [2.0, -1.0, 0.5, 4.0, 3.0]


def averaged(decay: float, warmup: bool, values: list[float] = VALUES) -> list[float]:
    p = torch.nn.Parameter(torch.tensor(INIT, dtype=torch.float64))
    ema = EMA([p], decay, warmup=warmup)
    seen = []
    for v in values:
        with torch.no_grad():
            p.fill_(v)
        ema.update()
        seen.append(ema.shadow[0].item())
    return seen


def test_fixed_decay_is_the_closed_form_from_the_first_update():
    d = 0.9
    for n, got in enumerate(averaged(d, warmup=False), start=1):
        want = d**n * INIT + sum((1 - d) * d ** (n - k) * VALUES[k - 1] for k in range(1, n + 1))
        assert got == pytest.approx(want, rel=1e-12)


def test_warmup_starts_at_two_elevenths():
    first = averaged(0.9, warmup=True)[0]
    assert first == pytest.approx(2 / 11 * INIT + 9 / 11 * VALUES[0], rel=1e-12)
    # the second update's decay is 3/12, then min(0.9, ...) caps it
    second = averaged(0.9, warmup=True)[1]
    assert second == pytest.approx(3 / 12 * first + 9 / 12 * VALUES[1], rel=1e-12)
    assert averaged(0.9, warmup=False)[0] == pytest.approx(0.9 * INIT + 0.1 * VALUES[0], rel=1e-12)


@pytest.mark.parametrize("warmup", [True, False])
def test_fit_passes_the_config_flag(monkeypatch, warmup):
    import toyplugin

    import dlmbench.training as training
    from dlmbench.data import DataSpec

    built: list[EMA] = []

    class Recorded(EMA):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(training, "EMA", Recorded)
    spec = DataSpec(12, 6, 0, 1, 2, 3, 0)
    model = toyplugin.ToyModel(toyplugin.ToyConfig(ema_decay=0.5, ema_warmup=warmup), spec)
    training.fit(model, torch.randint(5, 12, (8, 6), generator=torch.Generator().manual_seed(0)),
                 batch_size=4, steps=2)
    assert [e.warmup for e in built] == [warmup] and built[0].updates == 2
    assert EMA([torch.nn.Parameter(torch.zeros(()))], 0.99).warmup is True  # the default


def test_elf_paper_presets_use_the_fixed_decay_and_tiny_keeps_the_warmup():
    from dlmbench_elf.config import ELFConfig

    for name in ("B", "M", "L"):
        c = ELFConfig.from_preset(name)
        assert (c.optimizer, c.lr, c.betas, c.weight_decay, c.grad_clip) == ("muon-optax", 2e-3, (0.9, 0.999), 0.0, 1.0)
        assert (c.ema_decay, c.ema_warmup) == (0.9999, False)
    t = ELFConfig.from_preset("tiny")
    assert (t.optimizer, t.lr, t.betas, t.ema_decay, t.ema_warmup, t.warmup_steps) == (
        "adamw", 1e-3, (0.9, 0.95), 0.9999, True, 100)
