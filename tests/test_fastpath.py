"""The GPU fast path, checked on CPU where it can be: bf16 autocast, torch.compile of the
network's children, deferred loss read-back, the sampling micro-batch probe.

GPU tests (``@pytest.mark.gpu``) run with ``--run-gpu`` on a CUDA machine and skip
cleanly otherwise; the CPU inductor test is ``@pytest.mark.slow``.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch.overrides import TorchFunctionMode

from dlmbench.builtin.ar import AR, ARConfig
from dlmbench.data import DataSpec
from dlmbench.errors import ConfigError
from dlmbench.model import Model, ModelConfig
from dlmbench.probe import is_oom, largest_batch, probe_model
from dlmbench.runner import Runner
from dlmbench.sampling import generate
from dlmbench.training import autocast, compile_network, fit

CUDA = torch.device("cuda")


def counting_data(rows: int = 512, vocab: int = 20, seq_len: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, 15, (rows, 1), generator=g)
    return 5 + (start + torch.arange(seq_len)) % 15  # counting sequences: easy to learn


def ar_model(vocab: int = 20, seq_len: int = 32, **kw) -> AR:
    torch.manual_seed(0)
    spec = DataSpec(vocab, seq_len, 0, 2, 3, 4, 0)
    return AR(ARConfig.from_preset("tiny", lr=3e-3, warmup_steps=0, ema_decay=0.0, **kw), spec)


def registry_model(name: str, seq_len: int = 16, device="cpu"):
    """A plugin model built as the runner builds it (tiny preset, grammar task)."""
    from dlmbench.config import build_run_config
    from dlmbench.build import build_model, build_sampler, build_task
    from dlmbench.context import RunContext
    from dlmbench.plugins import load_registry

    registry = load_registry()
    if name not in registry.models:
        pytest.skip(f"plugin {name!r} is not installed")
    config = build_run_config(overrides={"models": [name], "budget": {"seq_len": seq_len}})
    data = build_task(config, registry, RunContext(offline=True))
    torch.manual_seed(0)
    model = build_model(config.models[0], config.preset, registry, data).to(device)
    return model, build_sampler(config.models[0], registry), data


class RandomDraws(TorchFunctionMode):
    """Records the dtype of every seeded random draw (torch.rand/randn/... with a generator)."""

    def __init__(self):
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if kwargs.get("generator") is not None and isinstance(out, torch.Tensor) and out.is_floating_point():
            self.dtypes.append(out.dtype)
        return out


# --- precision --------------------------------------------------------------------------------
def test_bf16_autocast_training_gives_a_finite_falling_loss_for_ar():
    model = ar_model()
    report = fit(model, counting_data(), batch_size=32, steps=20, seed=0, precision="bf16")
    assert len(report.losses) == 20 and all(math.isfinite(v) for v in report.losses)
    assert sum(report.losses[-5:]) / 5 < report.losses[0] - 1.0
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves weights fp32


def test_bf16_changes_the_matmuls_only():
    model = ar_model().eval()
    x = counting_data(4)
    with torch.no_grad(), autocast("cpu", "bf16"):
        assert model.net(x).dtype == torch.bfloat16  # the network really runs in bf16 ...
        assert model.logits(x).dtype == torch.float32  # ... the model hands fp32 logits on
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ConfigError, match="fp16"):
        autocast("cpu", "fp16")


def test_bf16_sampling_gives_valid_ids_and_float64_noise():
    model = ar_model()
    fit(model, counting_data(), batch_size=32, steps=5, seed=0)
    from dlmbench.builtin.ar_sampler import Ancestral

    draws = RandomDraws()
    with draws:
        run = generate(model, Ancestral(Ancestral.Config()), 8, 6, seed=0, batch_size=4, precision="bf16")
    assert run.ids.shape == (6, 32) and run.ids.dtype == torch.long
    assert 0 <= int(run.ids.min()) and int(run.ids.max()) < model.spec.vocab_size
    assert run.nfe == 32
    assert draws.dtypes and set(draws.dtypes) == {torch.float64}


@pytest.mark.parametrize("name", ["mdlm", "duo"])
def test_dit_models_train_and_sample_under_cpu_bf16(name):
    model, sampler, data = registry_model(name)
    report = fit(model, data.train, batch_size=8, steps=2, seed=0, precision="bf16")
    assert all(math.isfinite(v) for v in report.losses)
    draws = RandomDraws()
    with draws:
        run = generate(model, sampler, 4, 3, seed=0, precision="bf16")
    assert run.ids.shape == (3, 16) and int(run.ids.max()) < data.spec.vocab_size and int(run.ids.min()) >= 0
    assert draws.dtypes and set(draws.dtypes) == {torch.float64}


def test_elf_sampler_keeps_fp32_states_under_bf16(monkeypatch):
    model, sampler, data = registry_model("elf")
    path_cls = type(model.path)
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    euler = path_cls.euler

    def recording_euler(self, z, x_hat, t, t_next):
        out = euler(self, z, x_hat, t, t_next)
        seen.append((z.dtype, out.dtype))
        return out

    monkeypatch.setattr(path_cls, "euler", recording_euler)
    draws = RandomDraws()
    with draws:
        run = generate(model, sampler, 4, 3, seed=0, precision="bf16")
    assert run.ids.shape == (3, 16) and int(run.ids.max()) < data.spec.vocab_size
    assert len(seen) == 4 and set(seen) == {(torch.float32, torch.float32)}
    assert draws.dtypes and set(draws.dtypes) == {torch.float64}  # noise drawn in float64


def test_checkpoint_key_depends_on_precision(toy_config, toy_registry):
    from dlmbench.build import build_model, build_task

    keys = {}
    for precision in ("fp32", "bf16"):
        cfg = toy_config(precision=precision)
        runner = Runner(cfg, toy_registry, echo=lambda *_: None, progress=False)
        model = build_model(cfg.models[0], cfg.preset, toy_registry, build_task(cfg, toy_registry, runner.ctx))
        slot = runner.checkpoint_slot(model, build_task(cfg, toy_registry, runner.ctx))
        keys[precision] = (slot.path, slot.key)
    assert keys["fp32"][0] != keys["bf16"][0]
    assert keys["bf16"][1]["training"]["precision"] == "bf16"
    assert "precision" not in keys["fp32"][1]["training"]  # fp32 keys (and cached checkpoints) unchanged


def test_records_state_precision_and_compile(toy_config, toy_registry):
    cfg = toy_config(precision="bf16")
    records = Runner(cfg, toy_registry, echo=lambda *_: None, progress=False).run()
    cells = [r for r in records if r.model != "data"]
    assert cells and all(r.precision == "bf16" and r.compile is False for r in cells)
    assert all(r.status == "ok" for r in records)
    (model_record,) = [json.loads(p.read_text()) for p in (cfg.out_dir / "models").glob("*.json")]
    assert model_record["precision"] == "bf16" and model_record["compile"] is False
    assert model_record["compile_seconds"] is None  # no compile, no compile time
    assert model_record["first_step_seconds"] > 0 and model_record["median_step_seconds"] > 0


def test_precision_is_validated():
    from dlmbench.config import build_run_config

    with pytest.raises(ConfigError, match="precision"):
        build_run_config(overrides={"models": ["ar"], "precision": "fp16"})
    assert build_run_config(overrides={"models": ["ar"]}).precision == "fp32"


# --- host syncs -------------------------------------------------------------------------------
def test_deferred_read_back_keeps_losses_and_the_progress_contract():
    base = ar_model()
    calls = {1: [], 4: []}
    reports = {}
    for every in (1, 4):
        model = copy.deepcopy(base)
        reports[every] = fit(model, counting_data(), batch_size=16, steps=10, seed=0, sync_every=every,
                             progress=lambda step, loss, every=every: calls[every].append((step, loss)))
    assert reports[1].losses == reports[4].losses and len(reports[4].losses) == 10
    assert calls[4] == calls[1] == list(enumerate(reports[1].losses))  # once per step, in order
    for r in reports.values():
        assert r.first_step_seconds > 0 and r.median_step_seconds > 0


class _Clock:
    """A fake ``time`` module: ``perf_counter`` reads ``now``, which only the test moves."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _Timed(Model):
    """A one-parameter model whose ``i``-th training step takes ``durations[i]`` fake seconds."""

    name = "timed"

    def __init__(self, clock: _Clock, durations: list[float]):
        super().__init__(ModelConfig(), DataSpec(10, 4, 0, 1, 2, 3, 0))
        self.w = torch.nn.Parameter(torch.ones(1))
        self.clock, self.durations = clock, list(durations)

    def loss(self, batch):
        self.clock.now += self.durations.pop(0)
        return (self.w * batch.tokens.float().mean()).sum()


#: a slow first step (what compilation costs), then steady ones; whole seconds: exact sums
STEP_TIMES = [7.0, 1.0, 4.0, 2.0, 5.0, 1.0]


@pytest.mark.parametrize("every, median", [
    (1, 2.0),  # each step timed alone: steps 2..6 sorted are [1, 1, 2, 4, 5]
    (2, 3.0),  # read back after step 1, then after 2, 4 and 6: windows [1], [4, 2], [5, 1] give
               # each of their steps the window's mean: [1, 3, 3, 3, 3]
])
def test_step_times_and_compile_time_come_from_a_known_clock(monkeypatch, every, median):
    """First step 7 s, compile time = 7 - median by hand. The progress callback takes 100 s
    a call: it must not count as step time. Catches a mean for the median, a median that
    includes the first step, a window not split across its steps, callbacks timed as steps."""
    import dlmbench.training

    clock = _Clock()
    monkeypatch.setattr(dlmbench.training, "time", clock)

    def slow_progress(step, loss):
        clock.now += 100.0

    report = fit(_Timed(clock, STEP_TIMES), torch.ones(16, 4, dtype=torch.long), batch_size=4,
                 steps=len(STEP_TIMES), sync_every=every, progress=slow_progress)
    assert report.first_step_seconds == 7.0 and report.median_step_seconds == median
    assert report.compile_seconds == 7.0 - median
    one = fit(_Timed(clock, STEP_TIMES[:1]), torch.ones(16, 4, dtype=torch.long), batch_size=4, steps=1)
    assert one.first_step_seconds == 7.0 and one.median_step_seconds is None and one.compile_seconds is None


class _NaNAt(Model):
    """A one-parameter model whose loss turns NaN at a given step."""

    name = "nan-at"

    def __init__(self, bad_step: int):
        super().__init__(ModelConfig(), DataSpec(10, 4, 0, 1, 2, 3, 0))
        self.w = torch.nn.Parameter(torch.ones(1))
        self.bad_step, self.calls = bad_step, 0

    def loss(self, batch):
        self.calls += 1
        value = (self.w * batch.tokens.float().mean()).sum()
        return value * float("nan") if self.calls - 1 == self.bad_step else value


@pytest.mark.parametrize("every", [1, 5])
def test_non_finite_loss_raises_naming_the_first_bad_step(every):
    seen = []
    with pytest.raises(FloatingPointError, match="at step 3"):
        fit(_NaNAt(3), torch.ones(16, 4, dtype=torch.long), batch_size=4, steps=8, sync_every=every,
            progress=lambda step, loss: seen.append(step))
    assert seen == [0, 1, 2]


# --- torch.compile ------------------------------------------------------------------------------
def test_compile_network_compiles_children_not_the_network():
    model = ar_model()
    names = compile_network(model)
    assert "head" in names and "blocks.0" in names and "blocks" not in names
    assert model.network._compiled_call_impl is None  # the NFE pre-hook's module stays eager
    assert all(dict(model.network.named_modules())[n]._compiled_call_impl is not None for n in names)
    assert set(model.state_dict()) == set(ar_model().state_dict())  # checkpoint keys unchanged


@pytest.mark.slow
def test_compiled_ar_trains_and_counts_the_same_nfe():
    from dlmbench.builtin.ar_sampler import Ancestral

    eager = ar_model(seq_len=8)
    compiled = copy.deepcopy(eager)
    compile_network(compiled)
    data = counting_data(seq_len=8)
    r_eager = fit(eager, data, batch_size=16, steps=6, seed=0)
    r_comp = fit(compiled, data, batch_size=16, steps=6, seed=0)
    assert all(math.isfinite(v) for v in r_comp.losses)
    assert r_comp.losses == pytest.approx(r_eager.losses, rel=1e-3, abs=1e-3)
    assert r_comp.compile_seconds > 0  # the first step paid for compilation
    sampler = Ancestral(Ancestral.Config())
    a = generate(eager, sampler, 8, 4, seed=0)
    b = generate(compiled, sampler, 8, 4, seed=0)
    assert (a.nfe, a.calls) == (b.nfe, b.calls) and b.nfe == 8
    assert b.ids.shape == (4, 8) and int(b.ids.max()) < eager.spec.vocab_size


# --- the micro-batch probe ----------------------------------------------------------------------
def fake_sampler(threshold: int, error=None):
    tried = []

    def try_fn(n):
        tried.append(n)
        if n > threshold:
            raise (error or torch.cuda.OutOfMemoryError)(f"CUDA out of memory. Tried to allocate {n} GiB")

    return try_fn, tried


def test_largest_batch_stops_at_the_first_out_of_memory():
    try_fn, tried = fake_sampler(300)
    assert largest_batch(try_fn, 1, 4096) == 256
    assert tried == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


def test_largest_batch_caps_at_the_limit_and_handles_edge_cases():
    try_fn, tried = fake_sampler(10_000)
    assert largest_batch(try_fn, 1, 100) == 100 and tried[-2:] == [64, 100]
    assert largest_batch(fake_sampler(0)[0], 1, 64) == 0  # even one sample does not fit
    assert largest_batch(fake_sampler(40, RuntimeError)[0], 4, 4096) == 32  # old-style OOM message
    with pytest.raises(ValueError, match="Tried to allocate 4"):
        largest_batch(fake_sampler(2, ValueError)[0], 1, 64)  # other errors are not "too big"
    assert is_oom(torch.cuda.OutOfMemoryError("x")) and not is_oom(RuntimeError("shape mismatch"))


def test_probe_runs_up_to_max_on_cpu():
    from dlmbench.builtin.ar_sampler import Ancestral

    model = ar_model(seq_len=8).eval()
    result = probe_model(model, Ancestral(Ancestral.Config()), None, torch.device("cpu"), limit=6)
    assert result.largest == 6 and result.hit_limit
    assert [t["n"] for t in result.tries] == [1, 2, 4, 6] and all(t["fits"] for t in result.tries)


def test_probe_batch_command_on_cpu():
    from dlmbench.cli import cli

    out = CliRunner().invoke(cli, ["probe-batch", "--models", "ar", "--seq-len", "16", "--max", "4",
                                   "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "budget.sample_batch_size to 4" in out.output and "not changed automatically" in out.output


def test_run_help_documents_the_fast_path():
    from dlmbench.cli import cli

    text = CliRunner().invoke(cli, ["run", "--help"]).output
    for flag in ("--precision", "--compile", "probe-batch", "sample_batch_size"):
        assert flag in text


# --- on CUDA ------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ar", "mdlm"])
def test_bf16_training_and_sampling_on_cuda(name):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model, sampler, data = registry_model(name, seq_len=32, device=CUDA)
    report = fit(model, data.train, batch_size=32, steps=60, seed=0, precision="bf16")
    assert len(report.losses) == 60 and all(math.isfinite(v) for v in report.losses)
    assert sum(report.losses[-10:]) / 10 < sum(report.losses[:10]) / 10
    run = generate(model, sampler, 8, 16, seed=0, batch_size=8, precision="bf16")
    assert run.ids.shape == (16, 32) and run.ids.dtype == torch.long
    assert 0 <= int(run.ids.min()) and int(run.ids.max()) < data.spec.vocab_size


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ar", "mdlm"])
def test_compiled_sampling_counts_the_same_nfe_on_cuda(name):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model, sampler, data = registry_model(name, seq_len=32, device=CUDA)
    model.eval()
    eager = generate(model, sampler, 8, 8, seed=0)
    compile_network(model)
    compiled = generate(model, sampler, 8, 8, seed=0)
    assert (compiled.nfe, compiled.calls) == (eager.nfe, eager.calls)
    assert compiled.ids.shape == eager.ids.shape and int(compiled.ids.max()) < data.spec.vocab_size


@pytest.mark.gpu
def test_probe_finds_at_least_one_sample_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model, sampler, data = registry_model("ar", seq_len=64, device=CUDA)
    result = probe_model(model.eval(), sampler, data, CUDA, limit=64, precision="bf16")
    assert result.largest >= 1 and result.error is None
    assert all("peak_mib" in t for t in result.tries)
