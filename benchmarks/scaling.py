"""Time and peak memory of one sampling forward and one training step, against sequence
length, batch size and model size.

Every configuration (model x size x length x batch x phase) runs in a fresh
subprocess, so one measurement's allocations never raise another's high-water mark:

* ``forward``: one forward of ``model.network`` on the inputs its sampler gives it
  (captured as in :mod:`dlmbench.flops`; for the AR baseline the full-length forward,
  its sampler instead decodes one cached token per call), under ``no_grad``;
* ``train``: one optimiser step as :func:`dlmbench.training.fit` takes it (``model.loss``,
  backward, gradient clipping, AdamW step, EMA update), optimiser and EMA state included.

One warm-up call runs first (library code paged in by a first call is not counted; the
training warm-up's optimiser and EMA are thrown away, so their state is counted), then one
call for memory alone, then ``--reps`` timed calls whose median is the time. Peak memory on CPU is the
process's peak RSS (``resource.getrusage``) after the call minus the same after model
construction and input preparation (the high-water mark is reset there through
``/proc/self/clear_refs`` so the task loading before it does not mask a smaller peak),
or the RSS sampled every 0.5 ms during the call minus the RSS before it, whichever is
larger (the kernel refreshes the high-water mark only on some paths, e.g. munmap, so
memory handed back through madvise can peak unseen); on CUDA ``torch.cuda.max_memory_allocated``
minus the allocation before. Sizes: ``tiny`` (the preset) and ``2x`` (layers, width and
heads doubled). The log-log slope of time vs length is fitted per model/size/phase
(1: linear in length, 2: attention-bound).

    python benchmarks/scaling.py --models elf,mdlm,duo,ar
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SCRIPT = "scaling"
DEPTH_KEYS = ("n_layer", "n_blocks", "depth")
WIDTH_KEYS = ("n_embd", "hidden_size", "hidden")
HEAD_KEYS = ("n_head", "n_heads", "heads")


def size_options(model_cls, size: str) -> dict:
    """Config overrides of ``size``: ``tiny`` none; ``2x`` doubles depth, width and heads
    (head size kept) of the model's ``tiny`` preset."""
    if size == "tiny":
        return {}
    if size != "2x":
        raise ValueError(f"unknown size {size!r}")
    preset = "tiny" if "tiny" in model_cls.Config.presets else None
    base = model_cls.Config.from_preset(preset).model_dump()
    out = {k: 2 * int(base[k]) for k in DEPTH_KEYS + WIDTH_KEYS + HEAD_KEYS if k in base}
    if not any(k in out for k in WIDTH_KEYS):
        raise ValueError(f"{model_cls.name}: no known width field to double")
    return out


def reset_peak_rss() -> bool:
    """Start the peak-RSS high-water mark afresh at the current RSS (Linux >= 4.0), after
    collecting garbage and handing freed heap back, so the next peak is this phase's own."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class RSSPoller:
    """Samples the current RSS every ``interval`` s on a thread (torch ops release the
    GIL). The kernel's high-water mark is only refreshed on some paths (munmap, exit),
    so memory freed back through ``madvise`` can peak unseen by ``getrusage``; the
    sampled maximum catches it."""

    def __init__(self, interval: float = 0.0005):
        import threading

        self.interval, self.peak = interval, current_rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "RSSPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())


def peak_rss_bytes() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


# -- the worker: one configuration in this process -----------------------------------------
def worker(spec: dict) -> dict:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from dlmbench.data import Batch
    from dlmbench.ema import EMA
    from dlmbench.environment import resolve_device
    from dlmbench.flops import network_inputs
    from dlmbench.training import build_optimizer

    device = resolve_device(spec["device"])
    registry = C.load_registry([spec["model"]])
    entry = {"name": spec["model"], **({"sampler": spec["sampler"]} if spec.get("sampler") else {})}
    options = size_options(registry.model(spec["model"]), spec["size"])
    L, B = spec["seq_len"], spec["batch_size"]
    skipped: dict[str, str] = {}
    built = C.build_all([entry], device, registry=registry, skipped=skipped, options=options, seq_len=L,
                        task_options={"train_sentences": max(256, B), "valid_sentences": 16})
    if not built:
        raise RuntimeError(next(iter(skipped.values())))
    b = built[0]
    model = b.model
    params = sum(p.numel() for p in model.parameters())
    cuda = device.type == "cuda"
    if spec["phase"] == "forward":
        model.eval()
        args, kwargs = network_inputs(model, b.sampler, B)

        def step():
            with torch.no_grad():
                model.network(*args, **kwargs)
    else:
        rows = b.data.train[torch.arange(B) % b.data.train.shape[0]].to(device)
        batch = Batch(rows)
        cfg = model.config
        if callable(getattr(model, "on_fit_start", None)):
            model.on_fit_start(1000)
        model.train()
        state: dict = {}

        def step():
            if "opt" not in state:  # inside the measurement: optimiser/EMA state is training memory
                state["opt"] = build_optimizer(model)
                state["ema"] = EMA(model.trainable_parameters(), cfg.ema_decay) if cfg.ema_decay > 0 else None
            loss = model.loss(batch)
            state["opt"].zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip and cfg.grad_clip > 0 and not math.isinf(cfg.grad_clip):
                torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), cfg.grad_clip)
            state["opt"].step()
            if state["ema"] is not None:
                state["ema"].update()

    # Warm-up outside the measurement: the first call pages in library code (tens of MiB of
    # RSS that are not the model's) and sets up lazy kernels; then start the training state afresh.
    step()
    if spec["phase"] == "train":
        state.clear()
        model.zero_grad(set_to_none=True)
    # memory: one call from the fresh state (optimiser/EMA created inside it), alone
    C.sync(device)
    hwm_reset = reset_peak_rss()
    base_peak, base_rss = peak_rss_bytes(), current_rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    with RSSPoller() as poller:
        first = C.timed(step, device)
    rusage_delta = peak_rss_bytes() - base_peak
    polled_delta = poller.peak - base_rss
    if cuda:
        cuda_delta = torch.cuda.max_memory_allocated(device) - base_cuda
    # time: the median of further calls, without the poller
    times = [C.timed(step, device) for _ in range(spec["reps"])]
    out = {
        **spec, "label": b.label, "size_options": options, "params": params,
        "first_s": first, "times_s": times, "median_s": C.median(times),
        "peak_rss_delta_bytes": max(rusage_delta, polled_delta),
        "rusage_peak_delta_bytes": rusage_delta, "polled_peak_delta_bytes": polled_delta,
        "baseline_rss_bytes": base_rss, "torch_threads": torch.get_num_threads(), "peak_rss_reset": hwm_reset,
    }
    if cuda:
        out["peak_cuda_delta_bytes"] = cuda_delta
    out["peak_delta_bytes"] = out["peak_cuda_delta_bytes"] if cuda else out["peak_rss_delta_bytes"]
    return out


# -- the parent: spawn, collect, fit ----------------------------------------------------------
def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else None


def spawn(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {**spec, "error": f"exit {proc.returncode}: {tail[0][:300]}"}
    out = json.loads(lines[-1])
    out["process_s"] = time.perf_counter() - t0
    return out


def configs(models: list[dict], sizes: list[str], lengths: list[int], batch: int, batches: list[int],
            batch_len: int, phases: list[str]) -> list[dict]:
    out, seen = [], set()
    for m in models:
        grid = [(s, L, batch) for s in sizes for L in lengths]
        grid += [("tiny", batch_len, bb) for bb in batches]
        for size, L, bb in grid:
            for phase in phases:
                key = (m["name"], m.get("sampler"), size, L, bb, phase)
                if key in seen:
                    continue
                seen.add(key)
                out.append({"model": m["name"], "sampler": m.get("sampler"), "size": size, "seq_len": L,
                            "batch_size": bb, "phase": phase})
    return out


def main(argv: list[str] | None = None) -> dict:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
        return {}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, SCRIPT)
    parser.add_argument("--lengths", default="128,256,512,1024", help="sequence lengths (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch of the length sweep (default: %(default)s)")
    parser.add_argument("--batches", default="1,4,16", help="batch sweep at --batch-length, tiny size (default: %(default)s)")
    parser.add_argument("--batch-length", type=int, default=256, help="length of the batch sweep (default: %(default)s)")
    parser.add_argument("--sizes", default="tiny,2x", help="model sizes (default: %(default)s)")
    parser.add_argument("--phases", default="forward,train", help="default: %(default)s")
    parser.add_argument("--reps", type=int, default=3, help="timed calls per configuration after one warm-up")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per configuration")
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.batch_size, args.batches, args.sizes, args.reps = "16,32", 2, "", "tiny", 1
    started = C.now()
    device = C.setup_torch(args)
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    batches = [int(x) for x in args.batches.split(",") if x.strip()]
    sizes = [s for s in args.sizes.split(",") if s.strip()]
    phases = [p for p in args.phases.split(",") if p.strip()]
    registry = C.load_registry()
    skipped: dict[str, str] = {}
    models = []
    probe_budget = {"task_options": {"train_sentences": 256, "valid_sentences": 16}}
    for e in C.parse_models(args.models):  # drop models that do not build, with a note
        if C.build_all([e], device, registry=registry, skipped=skipped, **probe_budget):
            models.append(e)
    todo = configs(models, sizes, lengths, args.batch_size, batches, args.batch_length, phases)
    results = []
    for i, spec in enumerate(todo, 1):
        spec = {**spec, "reps": args.reps, "device": args.device, "threads": args.threads}
        r = spawn(spec, args.timeout)
        status = r.get("error") or f"{r['median_s'] * 1e3:.1f} ms, +{r['peak_delta_bytes'] / 2**20:.1f} MiB"
        print(f"[{i}/{len(todo)}] {spec['model']} {spec['size']} L={spec['seq_len']} B={spec['batch_size']} "
              f"{spec['phase']}: {status}", flush=True)
        results.append(r)

    ok = [r for r in results if "error" not in r]
    slopes = []
    for m in models:
        for size in sizes:
            for phase in phases:
                pts = sorted((r["seq_len"], r["median_s"], r["peak_delta_bytes"]) for r in ok
                             if r["model"] == m["name"] and r["size"] == size and r["phase"] == phase
                             and r["batch_size"] == args.batch_size and r["seq_len"] in lengths)
                if len(pts) < 2:
                    continue
                xs = [p[0] for p in pts]
                slopes.append({
                    "model": m["name"], "size": size, "phase": phase, "batch_size": args.batch_size,
                    "lengths": xs, "time_slope": loglog_slope(xs, [p[1] for p in pts]),
                    "time_slope_last_pair": loglog_slope(xs[-2:], [p[1] for p in pts[-2:]]),
                    "memory_slope": loglog_slope(xs, [max(p[2], 1) for p in pts]),
                })
    rows = [{"model": r.get("label", r["model"]), "size": r["size"], "phase": r["phase"], "L": r["seq_len"],
             "B": r["batch_size"], "ms": r.get("median_s", float("nan")) * 1e3,
             "peak MiB": r["peak_delta_bytes"] / 2**20 if "peak_delta_bytes" in r else None,
             "params M": r.get("params", 0) / 1e6, "error": r.get("error", "")} for r in results]
    print()
    print(C.table(rows, floatfmt=".4g"))
    print("\nlog-log slope of time (and peak memory) vs length, batch", args.batch_size)
    print(C.table([{k: s[k] for k in ("model", "size", "phase", "time_slope", "time_slope_last_pair", "memory_slope")}
                   for s in slopes], floatfmt=".2f"))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    payload = {**C.envelope(SCRIPT, args, device, started), "memory_measure":
               "torch.cuda.max_memory_allocated delta" if device.type == "cuda" else "peak RSS delta (getrusage)",
               "results": results, "slopes": slopes, "table": rows, "skipped": skipped}
    C.write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
