"""The largest sampling micro-batch that fits: ``dlmbench probe-batch``.

Each model is built as the runner builds it (same RunConfig, task, preset, precision,
compile setting) and :func:`dlmbench.sampling.generate` is called with one micro-batch
of ``n`` samples, ``n`` doubling from ``start`` until CUDA runs out of memory or ``limit``
is reached. On CPU there is no out-of-memory to find, so it simply runs up to ``limit``.

The result is advice, never applied: ``budget.sample_batch_size`` is a budget field
because each micro-batch draws from its own seeded generator
(:func:`dlmbench.sampling.seed_for`), so another micro-batch size gives other samples.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from dlmbench.config import ModelEntry, RunConfig
from dlmbench.context import RunContext


def is_oom(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or an allocator's "out of memory" RuntimeError."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def largest_batch(
    try_fn: Callable[[int], Any],
    start: int = 1,
    limit: int = 4096,
    on_try: Callable[[int, bool], None] | None = None,
) -> int:
    """The largest ``n`` in ``start, 2 start, 4 start, ..., limit`` for which ``try_fn(n)``
    does not run out of memory (0 when even ``start`` does not fit).

    An out-of-memory exception (:func:`is_oom`) means "too big" and ends the search; any
    other exception propagates. The last candidate is ``limit`` itself when doubling would
    step over it. ``on_try(n, fits)`` is told each attempt.
    """
    if start < 1 or limit < start:
        raise ValueError(f"need 1 <= start <= limit, got start={start}, limit={limit}")
    best, n = 0, start
    while True:
        try:
            try_fn(n)
        except Exception as exc:  # noqa: BLE001 - only OOM is an answer; the rest re-raises
            if not is_oom(exc):
                raise
            fits = False
        else:
            fits = True
        if not fits:
            release_memory()  # outside the except block: the traceback no longer pins tensors
        if on_try is not None:
            on_try(n, fits)
        if not fits:
            return best
        best = n
        if n >= limit:
            return best
        n = min(2 * n, limit)


@dataclass
class ProbeResult:
    label: str
    largest: int = 0
    limit: int = 0
    tries: list[dict[str, Any]] = field(default_factory=list)  # n, fits, seconds, peak_mib
    error: str | None = None

    @property
    def hit_limit(self) -> bool:
        return self.error is None and self.largest >= self.limit


def probe_model(model, sampler, data, device: torch.device, *, steps: int = 2, start: int = 1,
                limit: int = 4096, precision: str = "fp32", label: str = "") -> ProbeResult:
    """Double one sampling micro-batch of ``model`` until it runs out of memory."""
    from dlmbench.sampling import generate

    result = ProbeResult(label=label or model.name, limit=limit)
    cuda = device.type == "cuda"
    last: dict[str, Any] = {}

    def attempt(n: int) -> None:
        prefixes = None
        if data is not None and data.eval_prefixes is not None:
            pool = data.eval_prefixes
            prefixes = pool[torch.arange(n) % pool.shape[0]]
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        last.clear()
        try:
            generate(model, sampler, steps, n, seed=0, prefixes=prefixes, batch_size=n, precision=precision)
        finally:
            last["seconds"] = time.perf_counter() - t0
            if cuda:
                last["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20

    def on_try(n: int, fits: bool) -> None:
        result.tries.append({"n": n, "fits": fits, **last})

    result.largest = largest_batch(attempt, start, limit, on_try)
    return result


def probe(config: RunConfig, registry, context: RunContext, *, steps: int = 2, start: int = 1,
          limit: int = 4096, echo: Callable[[str], None] = print) -> list[ProbeResult]:
    """Probe every model of ``config``, built as the runner builds it (untrained weights:
    memory does not depend on their values)."""
    from dlmbench.build import TaskViews, build_model, build_sampler
    from dlmbench.runner import default_label
    from dlmbench.errors import ConfigError
    from dlmbench.training import compile_network

    device = context.device
    views = TaskViews(config, registry, context)
    results = []
    for entry in config.models:
        label = _label(entry)
        try:
            data = views.of(entry)  # the view of the task this model reads: its vocabulary sizes it
            model = build_model(entry, config.preset, registry, data).to(device)
            sampler = build_sampler(entry, registry, data.spec.prefix_len > 0)  # as the runner does
            label = entry.label or default_label(entry, sampler.name)
            if config.compile:
                compile_network(model)
            echo(f"[{label}] probing micro-batches {start}..{limit} on {device} "
                 f"(seq_len {data.spec.seq_len}, {steps} steps, {config.precision})")
            res = probe_model(model, sampler, data, device, steps=steps, start=start, limit=limit,
                              precision=config.precision, label=label)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken plugin does not stop the others
            text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            echo(f"[{label}] FAILED: {text}")
            res = ProbeResult(label=label, limit=limit, error=text)
        finally:
            model = sampler = None  # noqa: F841 - free the model before the next one
            release_memory()
        results.append(res)
    return results


def _label(entry: ModelEntry) -> str:
    return entry.label or (f"{entry.name}/{entry.sampler}" if entry.sampler else entry.name)


def report(results: list[ProbeResult], device: torch.device | str) -> str:
    """A table and the advice: which ``budget.sample_batch_size`` to set, and why it is
    not set automatically."""
    from tabulate import tabulate

    rows = []
    for r in results:
        best = next((t for t in r.tries if t["n"] == r.largest), {})
        note = r.error or ("reached --max; may fit more" if r.hit_limit else
                           ("even the first micro-batch ran out of memory" if r.largest == 0 else "next size ran out of memory"))
        peak = best.get("peak_mib")
        rows.append([r.label, r.largest if r.error is None else "-",
                     f"{peak:.0f}" if peak is not None else "-",
                     f"{best['seconds']:.2f}" if "seconds" in best else "-", note])
    lines = [tabulate(rows, headers=["model/sampler", "largest micro-batch", "peak MiB", "seconds", "note"])]
    ok = [r.largest for r in results if r.error is None and r.largest > 0]
    if ok:
        n = min(ok)
        lines.append("")
        lines.append(
            f"Set budget.sample_batch_size to {n} (the smallest over these models, as the budget is shared), "
            f"e.g. --set budget.sample_batch_size={n} or `sample_batch_size: {n}` under budget in the config."
        )
        lines.append(
            "It is not changed automatically: each micro-batch draws from its own seeded generator, so another "
            "micro-batch size gives other samples and new cell results."
        )
    if torch.device(device).type != "cuda":
        lines.append("(not on CUDA: there is no out-of-memory to find, the probe stops at --max)")
    return "\n".join(lines)
