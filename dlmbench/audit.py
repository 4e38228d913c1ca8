"""Sensitivity audit: how far does each incidental factor move a finished run's numbers?

``dlmbench audit RUN`` re-runs chosen cells of RUN with one factor changed at a time and
puts each factor's effect on every metric beside the run's own seed-to-seed spread, so a
reader can tell a factor that matters from noise. Fast-dLLM users report scores moving
with the CUDA version or the batch size by up to 2 points; this measures such factors
here instead of hoping they do not matter.

The run itself is never modified: each variant is its own run in ``RUN/audit/<factor>/``
with the run's checkpoint cache, so factors that change only sampling reuse the trained
models. Factors that change training train their own and are opt-in (``--factors``):

========================  ==========================================  ===========
factor                    what changes                                retrains
========================  ==========================================  ===========
``sample-batch``          ``budget.sample_batch_size``, a quarter of  no
                          the run's (and with it the generator seeds)
``threads``               torch's CPU threads while sampling          no
``world``                 2 processes under torchrun (sharded         no
                          micro-batches; should change nothing)
``precision``             bf16 autocast for training and sampling     yes
``source-truncation``     a conditional task's source cut to 3/4 of   yes
                          its positions
========================  ==========================================  ===========
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from dlmbench.config import RunConfig
from dlmbench.errors import ConfigError
from dlmbench.leaderboard import produced_by
from dlmbench.records import CellRecord
from dlmbench.results import ResultStore


@dataclass(frozen=True)
class Factor:
    """One thing the audit changes: ``setting`` describes the change for a config,
    ``apply`` makes it (None when it does not apply to that run; ``conditional`` says
    whether the run's task is)."""

    name: str
    retrains: bool
    setting: Callable[[RunConfig], str]
    apply: Callable[[RunConfig, bool], RunConfig | None]


def _budget(config: RunConfig, **update) -> RunConfig:
    return config.model_copy(update={"budget": config.budget.model_copy(update=update)})


def _quarter_batch(config: RunConfig) -> int:
    """A micro-batch a quarter of the one the run drew its samples in."""
    return max(min(config.budget.sample_batch_size, config.budget.num_samples) // 4, 1)


def _source_truncation(config: RunConfig, conditional: bool) -> RunConfig | None:
    if not conditional or "target_len" in config.task_options:
        return None
    fraction = config.task_options.get("source_fraction", 0.5)
    return config.model_copy(update={"task_options": {**config.task_options, "source_fraction": fraction * 0.75}})


FACTORS: dict[str, Factor] = {f.name: f for f in (
    Factor("sample-batch", False, lambda c: f"sample_batch_size {c.budget.sample_batch_size} -> "
                                            f"{_quarter_batch(c)} (other micro-batches, other generator seeds)",
           lambda c, _: _budget(c, sample_batch_size=_quarter_batch(c))),
    Factor("threads", False, lambda c: f"threads {c.threads} -> {c.threads * 2} (sampling: a checkpoint's key "
                                       f"leaves threads out, so the models are the run's)",
           lambda c, _: c.model_copy(update={"threads": c.threads * 2})),
    Factor("world", False, lambda c: "1 -> 2 processes under torchrun (gloo on CPU)", lambda c, _: c),
    Factor("precision", True, lambda c: "fp32 -> bf16 autocast (trains bf16 models)",
           lambda c, _: c.model_copy(update={"precision": "bf16"}) if c.precision == "fp32" else None),
    Factor("source-truncation", True, lambda c: "source_fraction x 0.75 (trains on the shorter sources)",
           _source_truncation),
)}
DEFAULT_FACTORS = tuple(name for name, f in FACTORS.items() if not f.retrains)  # they reuse the run's models


@dataclass(frozen=True)
class Effect:
    """One factor's effect on one metric of one row at one step budget."""

    factor: str
    label: str
    steps: int
    metric: str
    before: float
    after: float
    spread: float | None  # the run's own spread of the row (over its seeds, or per-sample stderr)
    cells: int

    @property
    def delta(self) -> float:
        return self.after - self.before

    @property
    def in_spreads(self) -> float | None:
        return abs(self.delta) / self.spread if self.spread else None


def variant_config(config: RunConfig, run_dir: Path, factor: Factor, conditional: bool,
                   chosen: dict[str, list[int] | None]) -> RunConfig | None:
    """The run of ``factor`` on the chosen cells (``chosen``: budget ``steps``, ``seeds``,
    ``train_seeds``; None keeps the run's), under ``run_dir/audit/<factor>``."""
    changed = factor.apply(config, conditional)
    if changed is None:
        return None
    budget = changed.budget.model_copy(update={k: v for k, v in chosen.items() if v})
    return changed.model_copy(update={"budget": budget, "out": str(run_dir / "audit" / factor.name)})


def run_variant(config: RunConfig, factor: Factor) -> list[CellRecord]:
    """Run one variant as its own ``dlmbench run`` process (under torchrun for ``world``),
    so its thread pools and process group are its own from the start."""
    import yaml

    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "audit-config.yaml"
    spec.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"] if factor.name == "world" else []
    cmd = [sys.executable, *launcher, "-m", "dlmbench", "run", "--config", str(spec), "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True)  # its threads: the config's, set by the run
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"audit factor {factor.name!r}: its run failed ({last}); see {out}")
    return ResultStore(out).records()


def _key(c: CellRecord) -> tuple[str, int, int, int | None]:
    return c.label, c.steps, c.seed, c.train_seed


def effects(factor: str, original: list[CellRecord], variant: list[CellRecord]) -> list[Effect]:
    """Mean change of each metric over the cells both runs have, per row and step budget,
    beside the original row's spread over all its seeds (training and sampling)."""
    before = {_key(c): c for c in original if c.ok and not c.is_reference}
    pairs: dict[tuple[str, int, str], list[tuple[float, float]]] = defaultdict(list)
    for c in variant:
        o = before.get(_key(c))
        if o is None or not c.ok:
            continue
        for metric, result in c.metrics.items():
            if metric in o.metrics and result.value is not None and o.metrics[metric].value is not None:
                pairs[(c.label, c.steps, metric)].append((o.metrics[metric].value, result.value))
    out = []
    for (label, steps, metric), values in sorted(pairs.items()):
        row = [c.metrics[metric] for c in original if c.ok and c.label == label and c.steps == steps
               and metric in c.metrics and c.metrics[metric].value is not None]
        spread = statistics.stdev(r.value for r in row) if len(row) > 1 else (row[0].stderr if row else None)
        out.append(Effect(factor, label, steps, metric, statistics.fmean(v for v, _ in values),
                          statistics.fmean(v for _, v in values), spread, len(values)))
    return out


def render(run_dir: Path, settings: dict[str, str], found: list[Effect], skipped: dict[str, str],
           command: str | None = None) -> str:
    """The audit as markdown: one table per factor, rows x metrics, each cell the mean
    change and how many of the run's own spreads it is."""
    out = produced_by(command) if command else []
    out += [f"# Sensitivity audit of `{run_dir}`", "",
            "Each cell: the factor's mean change of the metric over the re-run cells (after - before), and in "
            "brackets that change in units of the run's own spread of the row (standard deviation over its "
            "trained models and sampling seeds, or the per-sample standard error with one seed). Below 1: "
            "inside the noise the table's ± already shows.", ""]
    for factor, setting in settings.items():
        rows = [e for e in found if e.factor == factor]
        out += [f"## `{factor}`: {setting}", ""]
        if not rows:
            out += ["No cell to compare.", ""]
            continue
        metrics = sorted({e.metric for e in rows})
        table = []
        for label, steps in sorted({(e.label, e.steps) for e in rows}):
            cells = {e.metric: e for e in rows if e.label == label and e.steps == steps}
            table.append([label, steps, max(e.cells for e in cells.values())] + [
                _effect_text(cells.get(m)) for m in metrics])
        out += [tabulate(table, headers=["model/sampler", "steps", "cells"] + metrics, tablefmt="github"), ""]
    for factor, why in skipped.items():
        out += [f"## `{factor}`: not run", "", why, ""]
    return "\n".join(out).rstrip() + "\n"


def _effect_text(e: Effect | None) -> str:
    if e is None:
        return ""
    ratio = e.in_spreads
    return f"{e.delta:+.3g}" + (f" ({ratio:.2g} sd)" if ratio is not None and math.isfinite(ratio) else "")


def audit(run_dir: str | Path, registry, factors: list[str], chosen: dict[str, list[int] | None] | None = None,
          echo: Callable[[str], None] = print, command: str | None = None) -> str:
    """Run each factor's variant of ``run_dir``'s chosen cells (see :func:`variant_config`)
    and return the markdown."""
    run_dir = Path(run_dir)
    unknown = [f for f in factors if f not in FACTORS]
    if unknown:
        raise ConfigError(f"--factors: unknown factor(s) {', '.join(unknown)}; use {', '.join(FACTORS)}")
    store = ResultStore(run_dir)
    run = store.read_run()
    if run is None:
        raise ConfigError(f"{run_dir}: no valid run.json; is it a `dlmbench run` results directory?")
    config = RunConfig.model_validate(run.config)
    conditional = registry.task(config.task)[0].conditional
    original = store.records()
    found, settings, skipped = [], {}, {}
    for name in factors:
        factor = FACTORS[name]
        variant = variant_config(config, run_dir, factor, conditional, chosen or {})
        if variant is None:
            skipped[name] = f"It does not apply to this run ({factor.setting(config)})."
            continue
        echo(f"audit {name}: {factor.setting(config)}")
        settings[name] = factor.setting(config)
        found += effects(name, original, run_variant(variant, factor))
    return render(run_dir, settings, found, skipped, command)
