"""Running a run's independent work units in a process pool (``dlmbench run --jobs N``,
``--devices cuda:0,cuda:1``).

A work unit is one model to train and score: the entries of the run that share a
checkpoint (same model, resolved options, tokenizer and weights; only their samplers
differ) under one training seed, trained (or loaded) once and then sampled, cell by cell.
The main process validates every entry and scores the held-out rows first, exactly as a
one-process run does, then hands the units to a
:class:`concurrent.futures.ProcessPoolExecutor`, cheapest first. Each worker process holds
one :class:`Slot` for its life (its CPU thread count, or its device) and writes its own
cells: the results store's files are written atomically under names unique to the writing
process (:mod:`dlmbench.atomic`), so concurrent writers are safe. A unit's records equal
those of a one-process run with the same seeds but for timings and timestamps.

How a worker gets its state: pickled, the same under every start method: the config, the
context, the registry (its plugin classes pickle by reference, so a spawned worker imports
their modules again; a class must live in an importable module) and the callbacks when
they pickle. Never through environment variables. The start method is ``fork`` on CPU
where the platform has it (a worker starts at once, with the parent's modules loaded) and
``spawn`` for CUDA devices, which a forked child cannot use once the parent initialised
CUDA. Scaling past one machine stays with ``torchrun``: a run uses workers or a torchrun
world, never both.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
import re
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from dlmbench.config import ModelEntry, RunConfig, stable_hash
from dlmbench.context import RunContext
from dlmbench.errors import ConfigError, HubUnavailableError
from dlmbench.records import CellRecord
from dlmbench.registry import Registry
from dlmbench.tokenizer import TokenizerRequest

if TYPE_CHECKING:
    from dlmbench.build import TaskViews
    from dlmbench.runner import Runner

Results = dict[tuple[int, "int | None"], list[CellRecord]]  # (entry index, training seed) -> its cells


@dataclass(frozen=True)
class Slot:
    """What one worker process runs on for its whole life."""

    device: str  # "cpu" or "cuda:N"
    threads: int


@dataclass(frozen=True)
class Unit:
    """One model to train (or load) and score: ``members`` index the run's entries that
    share its checkpoint, in config order (the first trains, the others reuse it)."""

    members: tuple[int, ...]
    train_seed: int | None
    cost: float
    label: str


@dataclass(frozen=True)
class Job:
    """What a worker receives for one unit (pickled)."""

    config: RunConfig
    registry: Registry
    context: RunContext
    plugin_versions: dict[str, str]
    retrain: bool
    echo: Callable[[str], None] | None
    on_cell: Callable[[CellRecord], None] | None
    members: tuple[tuple[int, ModelEntry, TokenizerRequest], ...]
    train_seed: int | None


def parse_jobs(value: Any) -> int | None:
    """``--jobs``: a whole number >= 1, or ``auto`` (None)."""
    text = "auto" if value is None else str(value).strip().lower()
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--jobs {value!r}: expected a whole number >= 1 or auto, e.g. --jobs 2")
    return int(text)


def parse_devices(value: str | None) -> list[str]:
    """``--devices cuda:0,cuda:1``: each must be a CUDA device this machine has."""
    if value is None:
        return []
    names = [d.strip() for d in value.split(",") if d.strip()]
    if not names or any(not re.fullmatch(r"cuda:\d+", d) for d in names):
        raise ConfigError(f"--devices {value!r}: list CUDA devices as cuda:N, e.g. --devices cuda:0,cuda:1")
    if not torch.cuda.is_available():
        raise ConfigError(f"--devices {value!r}: CUDA is not available here; drop --devices (CPU workers: --jobs N)")
    count = torch.cuda.device_count()
    if any(int(d.partition(":")[2]) >= count for d in names):
        raise ConfigError(f"--devices {value!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}; "
                          f"list only those")
    return names


def cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def shared_checkpoint(entry: ModelEntry, config: RunConfig, registry: Registry) -> str:
    """Entries with equal keys train (or load) the same checkpoint: they differ only in
    sampler, sampler options or label, so they belong to one unit."""
    from dlmbench.build import build_model_config

    try:
        model = build_model_config(entry, config.preset, registry).model_dump(mode="json")
    except Exception:  # noqa: BLE001 - the entry's own fields then; the runner reports the error
        model = entry.model_dump(mode="json", include={"preset", "options"})
    return stable_hash([entry.name, model, entry.tokenizer, entry.weights])


def unit_groups(config: RunConfig, registry: Registry) -> list[list[int]]:
    """The run's entries grouped by :func:`shared_checkpoint`, each group in config order."""
    groups: dict[str, list[int]] = {}
    for i, entry in enumerate(config.models):
        groups.setdefault(shared_checkpoint(entry, config, registry), []).append(i)
    return list(groups.values())


def seeds_of(entry: ModelEntry, config: RunConfig) -> list[int | None]:
    """The training seeds of ``entry``, as :meth:`Runner.run_model` walks them."""
    return [None] if entry.weights is not None else list(config.budget.training_seeds)


def plan_workers(jobs: Any, devices: str | None, config: RunConfig, registry: Registry,
                 context: RunContext) -> "Workers":
    """The workers of ``dlmbench run --jobs/--devices``. ``auto``: one per device with
    ``--devices``; one on a GPU (or MPS) without it; on CPU as many as the cores give
    ``config.threads`` threads each, at most one per unit. Under ``torchrun`` (world > 1)
    only one."""
    count, names = parse_jobs(jobs), parse_devices(devices)
    if context.world.size > 1:
        if (count or 1) > 1 or names:
            flags = " ".join(f"--{k} {v}" for k, v in (("jobs", jobs), ("devices", devices)) if v not in (None, "auto"))
            raise ConfigError(f"{flags} under torchrun (world size {context.world.size}): a run uses worker "
                              f"processes or a torchrun world, not both; drop --jobs/--devices")
        return Workers((Slot(str(context.device), config.threads),), "torchrun")
    units = sum(len(seeds_of(config.models[g[0]], config)) for g in unit_groups(config, registry))
    if count is not None:
        reason = f"--jobs {count}"
    elif names:
        count, reason = len(names), f"--devices {devices}: one worker per device"
    elif context.device.type != "cpu":
        count, reason = 1, f"one {context.device.type} device; --devices cuda:0,cuda:1 runs one worker per GPU"
    else:
        count = max(1, cores() // config.threads)
        reason = f"--jobs auto: {cores()} cores / --threads {config.threads}"
    count = max(1, min(count, units))
    where = names or [str(context.device)]
    return Workers(tuple(Slot(where[i % len(where)], config.threads) for i in range(count)), reason)


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:  # noqa: BLE001 - closures, lambdas, open handles
        return False
    return True


class WorkerDied(RuntimeError):
    """The process running a unit ended without a result (killed, out of memory, crashed)."""


@dataclass(frozen=True)
class Workers:
    """The pool of one run: ``slots`` (one per worker process) and ``reason`` (how their
    number was chosen, printed once). ``start_method`` None: ``fork`` on CPU where there is
    one, else ``spawn``."""

    slots: tuple[Slot, ...]
    reason: str
    start_method: str | None = None

    @property
    def jobs(self) -> int:
        return len(self.slots)

    def units(self, runner: "Runner", views: "TaskViews", requests: list[TokenizerRequest]) -> list[Unit]:
        """The run's units in dispatch order (see :func:`dispatch_order`)."""
        cfg, units = runner.config, []
        for members in unit_groups(cfg, runner.registry):
            entry = cfg.models[members[0]]
            weight = cost(runner, entry, views.get(requests[members[0]]))
            names = " + ".join(row_label(runner, cfg.models[i], views) for i in members)
            seeds = seeds_of(entry, cfg)
            units += [Unit(tuple(members), s, weight, names + ("" if len(seeds) == 1 else f", training seed {s}"))
                      for s in seeds]
        return dispatch_order(units, self.jobs)

    def run(self, runner: "Runner", views: "TaskViews", requests: list[TokenizerRequest]) -> list[CellRecord]:
        """Every unit's cells, returned in the order a one-process run returns them."""
        units = self.units(runner, views, requests)
        width, threads = min(self.jobs, len(units)), self.slots[0].threads
        where = f"{threads} thread{'s' if threads > 1 else ''} each" if self.slots[0].device == "cpu" else \
            ", ".join(s.device for s in self.slots[:width])
        runner.echo(f"running {len(units)} models on {width} workers, {where} ({self.reason}); "
                    f"in this order: {', '.join(u.label for u in units)}")
        results: Results = {}
        for unit in self.dispatch(runner, units, width, requests, views, results):
            # alone, each: a unit that takes its own worker down fails only its own cells
            if self.dispatch(runner, [unit], 1, requests, views, results):
                results.update(self.failed(runner, unit, requests, views, WorkerDied(
                    "the worker process running this model died; run it with --jobs 1 to see why")))
        cfg = runner.config
        return [r for i, e in enumerate(cfg.models) for s in seeds_of(e, cfg) for r in results.get((i, s), [])]

    def dispatch(self, runner: "Runner", units: list[Unit], width: int, requests: list[TokenizerRequest],
                 views: "TaskViews", results: Results) -> list[Unit]:
        """Run ``units`` on ``width`` workers into ``results``; returns the units a dying
        worker took down with the pool (the pool cannot tell whose worker died)."""
        devices = {s.device for s in self.slots[:width]}
        method = self.start_method or ("fork" if devices == {"cpu"} and "fork" in multiprocessing.get_all_start_methods()
                                       and not torch.cuda.is_initialized() else "spawn")
        mp = multiprocessing.get_context(method)
        slots = mp.SimpleQueue()  # no feeder thread: nothing but this thread runs when the workers fork
        for slot in self.slots[:width]:
            slots.put(slot)
        echo = runner.echo if _picklable(runner.echo) else None
        on_cell = runner.on_cell if _picklable(runner.on_cell) else None
        lost: list[Unit] = []
        with ProcessPoolExecutor(width, mp_context=mp, initializer=_take_slot, initargs=(slots,)) as pool:
            futures = {pool.submit(_run_unit, Job(
                runner.config, runner.registry, runner.ctx, runner.plugin_versions, runner.retrain, echo, on_cell,
                tuple((i, runner.config.models[i], requests[i]) for i in unit.members), unit.train_seed)): unit
                for unit in units}
            try:
                for future in as_completed(futures):
                    unit = futures[future]
                    try:
                        done = future.result()
                    except BrokenProcessPool:
                        lost.append(unit)
                        continue
                    except (ConfigError, HubUnavailableError):
                        raise  # stops the run, as in one process; the running units finish first
                    except Exception as exc:  # noqa: BLE001 - the unit's own cells fail, recorded
                        done = self.failed(runner, unit, requests, views, exc)
                    else:
                        if on_cell is None and runner.on_cell is not None:  # not picklable: told here
                            for record in (r for rs in done.values() for r in rs):
                                runner.on_cell(record)
                    results.update(done)
                    cells = [r for rs in done.values() for r in rs]
                    failed = sum(not r.ok for r in cells)
                    runner.echo(f"[{unit.label}] done: {len(cells)} cells" + (f", {failed} FAILED" if failed else ""))
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return sorted(lost, key=units.index)

    @staticmethod
    def failed(runner: "Runner", unit: Unit, requests: list[TokenizerRequest], views: "TaskViews",
               exc: BaseException) -> Results:
        """Failed records of every cell of ``unit``, written here (named as the cells of a
        model that cannot be built: the checkpoint that names them was never made)."""
        return {(i, unit.train_seed): runner.fail_unbuildable(runner.config.models[i], views.get(requests[i]),
                                                               requests[i], exc) for i in unit.members}


def row_label(runner: "Runner", entry: ModelEntry, views: "TaskViews") -> str:
    """The entry's row name in tables, as its cells will carry it."""
    from dlmbench.runner import default_label

    try:
        sampler = runner.registry.sampler(entry.name, entry.sampler, views.default.spec.prefix_len > 0).name
    except Exception:  # noqa: BLE001 - the unit fails with the error; its row still needs a name
        sampler = entry.sampler or "default"
    return entry.label or default_label(entry, sampler)


def dispatch_order(units: list[Unit], jobs: int) -> list[Unit]:
    """The ``jobs`` cheapest units first, one per worker, so the first rows of the table
    come early; then the rest longest first, so that no long unit starts last (the
    longest-processing-time rule, Graham 1969, keeps the run within 4/3 of the shortest
    possible). Equal costs keep config order."""
    cheapest = sorted(units, key=lambda u: u.cost)[:jobs]
    return cheapest + sorted((u for u in units if u not in cheapest), key=lambda u: -u.cost)


def cost(runner: "Runner", entry: ModelEntry, data) -> float:
    """A unit's compute, in units of parameter x tokens: training at 6 per parameter per
    token (forward and backward, Kaplan et al. 2020, section 2.1), sampling at 2 per
    parameter per token per function evaluation (the sampler's NFE bound at each step
    budget, for every sample of every seed). Work outside the budget (ELF's encoder
    pretraining) is not counted. The model is built on the meta device where its code
    allows (no memory, no initialisation), else on the CPU. Released weights train nothing:
    their sampling only; a model that cannot be built: 0, so its error comes first."""
    from dlmbench.build import build_model, build_sampler

    b = runner.config.budget
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = build_model(entry, runner.config.preset, runner.registry, data)
            sampler = build_sampler(entry, runner.registry, data.spec.prefix_len > 0)
            break
        except Exception:  # noqa: BLE001 - e.g. a constructor that reads a tensor's value
            continue
    else:
        return 0.0
    params = sum(p.numel() for p in model.parameters())
    tokens = data.spec.seq_len
    train = 0 if entry.weights is not None else 6 * runner.train_steps(data) * b.batch_size * tokens
    sample = 2 * sum(sampler.max_nfe(s, data.spec) for s in b.steps) * b.num_samples * len(b.seeds) * tokens
    return float(params * (train + sample))


# -- inside a worker process -----------------------------------------------------------------
_SLOT = Slot("cpu", 1)
_PREPARED: dict[str, tuple[Any, list]] = {}  # this process's task views and metrics, per run
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>: the signal a process gets when its parent dies


def _take_slot(slots) -> None:
    """Pool initializer: this process's slot for its life (its threads, its device). On
    Linux it also dies with the main process: a worker holds its own end of the task queue,
    so it would otherwise wait forever after a ``kill -9`` of the run."""
    global _SLOT
    _SLOT = slots.get()
    from dlmbench.environment import keep_freed_memory, use_threads

    use_threads(_SLOT.threads)
    keep_freed_memory()
    if _SLOT.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(_SLOT.device))
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _prepared(runner: "Runner") -> tuple[Any, list]:
    """The task views and metrics of the run, built once per worker process, as
    :meth:`Runner.run` builds them."""
    from dlmbench.build import TaskViews, build_metrics, metric_entries
    from dlmbench.protocol import get_protocol

    cfg = runner.config
    key = cfg.model_dump_json()
    if key not in _PREPARED:
        _PREPARED.clear()
        views = TaskViews(cfg, runner.registry, runner.ctx)
        _PREPARED[key] = views, build_metrics(metric_entries(cfg, runner.registry), runner.registry, views.default,
                                              cfg.budget.evaluator, runner.ctx, get_protocol(cfg.protocol))
    return _PREPARED[key]


def _quiet(*_: Any) -> None:
    pass


def _run_unit(job: Job) -> Results:
    """One unit in this worker: ``Runner.run_trained`` for each member entry, on this
    process's slot."""
    from dlmbench.runner import Runner

    context = dataclasses.replace(job.context, device=torch.device(_SLOT.device), threads=_SLOT.threads)
    runner = Runner(job.config, job.registry, context, job.plugin_versions, echo=job.echo or _quiet,
                    progress=False, on_cell=job.on_cell, retrain=job.retrain)
    views, metrics = _prepared(runner)
    return {(i, job.train_seed): runner.run_trained(entry, views.get(request), metrics, request, job.train_seed)
            for i, entry, request in job.members}
