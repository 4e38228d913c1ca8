"""Shared plumbing of the benchmark scripts: machine facts, model building, timing, JSON.

Not a test helper: the scripts print a table and write JSON with the machine stated, so
a number is never separated from where it was measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_MODELS = "elf,mdlm,duo,ar"


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


# Read when a script starts (it imports this module first): by the time the JSON is
# written, the script's own work has raised the load average to its thread count.
LOAD_AT_START = load_average()

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a script entry point: the tiny presets never need the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def add_common_args(parser: argparse.ArgumentParser, script: str) -> None:
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help="comma-separated models, NAME or NAME/SAMPLER (default: %(default)s); "
                             "a model that fails to build is skipped with a note")
    parser.add_argument("--json", default=str(RESULTS / f"{script}.json"),
                        help="where to write the JSON results (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared CPU, oversubscribed OpenMP "
                             "threads make small ops 10-200x slower and the timings meaningless; 0 keeps "
                             "torch's default)")
    parser.add_argument("--quick", action="store_true", help="smallest settings (smoke test)")


def setup_torch(args: argparse.Namespace):
    import torch

    if args.threads and args.threads > 0:
        torch.set_num_threads(args.threads)
    from dlmbench.environment import keep_freed_memory, resolve_device

    keep_freed_memory()  # as every dlmbench run does

    return resolve_device(args.device)


def parse_models(text: str) -> list[dict[str, Any]]:
    """``elf,mdlm/ddpm`` -> model entries (``{"name": ..., "sampler": ...}``)."""
    entries = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, sampler = item.partition("/")
        entry: dict[str, Any] = {"name": name}
        if sampler:
            entry["sampler"] = sampler
        entries.append(entry)
    return entries


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device) -> dict[str, Any]:
    import torch

    from dlmbench.environment import describe_device, git_revision, versions

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    info = {
        "device": describe_device(device),
        "cpu_model": cpu_model(),
        "cpu_cores_available": cores,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": LOAD_AT_START,
        "load_average_at_end": load_average(),
        "platform": platform.platform(),
        "versions": versions(),
        "git_revision": git_revision(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")
    return path


def envelope(script: str, args: argparse.Namespace, device, started: str) -> dict[str, Any]:
    return {
        "benchmark": script,
        "date": started,
        "finished": now(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(device),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
    }


# -- building models as the runner does ------------------------------------------------------
@dataclass
class Built:
    name: str
    label: str
    model: Any
    sampler: Any
    data: Any
    config: Any


def load_registry(names: list[str] | None = None):
    """The plugin registry; with ``names``, first try loading only those entry points
    (faster start-up), falling back to every plugin when a name is not an entry point."""
    from dlmbench.plugins import load_registry as load

    if names:
        try:
            registry = load(only=names)
            if all(n in registry.models for n in names):
                return registry
        except Exception:  # noqa: BLE001 - fall back to the full registry
            pass
    return load()


def run_config(entries: list[dict[str, Any]], **budget: Any):
    from dlmbench.config import build_run_config

    over: dict[str, Any] = {"models": entries, "task": "grammar"}
    task_options = budget.pop("task_options", None)
    if task_options:
        over["task_options"] = task_options
    if budget:
        over["budget"] = budget
    return build_run_config(overrides=over)


def build_all(
    entries: list[dict[str, Any]],
    device,
    registry=None,
    skipped: dict[str, str] | None = None,
    data=None,
    options: dict[str, Any] | None = None,
    **budget: Any,
) -> list[Built]:
    """Build every entry's model and sampler as the runner does (tiny preset, grammar).

    A model that fails to build (plugin missing or broken) is skipped with a printed note
    and recorded in ``skipped``.
    """
    from dlmbench.build import build_model, build_sampler, build_task
    from dlmbench.context import RunContext

    registry = registry or load_registry()
    skipped = skipped if skipped is not None else {}
    out = []
    for raw in entries:
        entry = dict(raw)
        if options:
            entry["options"] = {**entry.get("options", {}), **options}
        label = entry["name"] + (f"/{entry['sampler']}" if entry.get("sampler") else "")
        try:
            config = run_config([entry], **budget)
            if data is None:
                data = build_task(config, registry, RunContext(cache=Path(config.cache), offline=True))
            me = config.models[0]
            model = build_model(me, config.preset, registry, data).to(device)
            sampler = build_sampler(me, registry)
            out.append(Built(me.name, f"{me.name}/{sampler.name}", model, sampler, data, config))
        except Exception as exc:  # noqa: BLE001 - a broken plugin is skipped, not fatal
            text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            print(f"NOTE: skipping {label}: it does not build ({text})")
            skipped[label] = text
    return out


# -- timing -------------------------------------------------------------------------------
def sync(device) -> None:
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device=None) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(arms: dict[str, Callable[[], Any]], reps: int, device=None, warmup: int = 1,
                before: Callable[[], Any] | None = None) -> dict[str, list[float]]:
    """Run the arms A B A B ... (order alternating per round), ``reps`` times each.

    ``before()`` runs untimed ahead of every call (e.g. restore the initial weights).
    Returns the seconds of each repetition per arm, warm-ups excluded.
    """
    names = list(arms)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + reps):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            if before is not None:
                before()
            t = timed(arms[name], device)
            if r >= warmup:
                times[name].append(t)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def table(rows: list[dict[str, Any]], headers: list[str] | None = None, floatfmt: str = ".4g") -> str:
    from tabulate import tabulate

    if not rows:
        return "(no rows)"
    headers = headers or list(rows[0])
    return tabulate([[r.get(h) for h in headers] for r in rows], headers=headers, floatfmt=floatfmt)
