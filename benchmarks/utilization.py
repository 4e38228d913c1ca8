"""How much of the machine's matmul peak does each model's network use?

For each model and sequence length: the FLOPs of one forward of ``model.network`` as its
sampler calls it (counted analytically by :mod:`dlmbench.flops`, one real call under
``FlopCounterMode``), times the forwards per second measured on those same inputs,
divided by the fp32 matmul peak measured in the same run (an ``N x N`` matmul, best of
several, before and after the models; the higher is used). The fraction is the share
of peak the network reaches; 1 - fraction is what small matrices, attention, norms,
activations and Python dispatch cost.

A second column does the same for a whole ``sampler.sample`` call at ``--sample-steps``
(every NFE plus the sampler's own work): the share of peak a user actually gets when
sampling. For the AR baseline this is the KV-cached decode (one token per call), whose
per-call work is tiny, while its network forward is the full-length one (see
:mod:`dlmbench.flops`).

    python benchmarks/utilization.py --models elf,mdlm,duo,ar --lengths 32,64,128

``--before REV`` first runs this same measurement with the code of git revision ``REV``
(checked out in a temporary worktree, its own copy of this script, same settings), then
the current code, and writes both with the ratio of their times per model and length:
a before/after taken in one run, on one machine in one state.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SCRIPT = "utilization"


def matmul_peak(device, n: int = 2048, reps: int = 5) -> dict:
    """Best-of-``reps`` fp32 ``n x n @ n x n`` throughput (FLOP/s)."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    best = min(C.timed(lambda: a @ b, device) for _ in range(reps))
    return {"n": n, "reps": reps, "best_s": best, "flops": 2 * n**3, "flop_per_s": 2 * n**3 / best}


def time_calls(fn, device, min_seconds: float, reps: int) -> dict:
    """Calls per second of ``fn``: ``reps`` timed blocks of ``k`` calls (k fills ``min_seconds``)."""
    fn()
    one = C.timed(fn, device)
    k = max(1, int(min_seconds / max(one, 1e-6)))
    per_call = [C.timed(lambda: [fn() for _ in range(k)], device) / k for _ in range(reps)]
    return {"calls_per_block": k, "seconds_per_call": per_call,
            "median_s": C.median(per_call), "best_s": min(per_call)}


def measure(b, batch: int, sample_steps: int, device, min_seconds: float, reps: int) -> dict:
    import torch

    from dlmbench.data import SampleRequest
    from dlmbench.flops import flops_by_op, forward_flops, network_inputs, sample_flops

    model, sampler = b.model.eval(), b.sampler
    inputs = network_inputs(model, sampler, batch)
    args, kwargs = inputs
    flops = forward_flops(model, batch, inputs=inputs)
    by_op = flops_by_op(model.network, *args, **kwargs)
    with torch.no_grad():
        fwd = time_calls(lambda: model.network(*args, **kwargs), device, min_seconds, reps)

    s_flops = sample_flops(model, sampler, sample_steps, batch)

    def sample():
        gen = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():
            sampler.sample(model, SampleRequest(steps=sample_steps, num_samples=batch, generator=gen))

    smp = time_calls(sample, device, 0.0, reps)
    return {
        "input_shapes": [list(a.shape) if isinstance(a, torch.Tensor) else repr(a) for a in args],
        "forward_flops": flops, "flops_by_op": by_op, "forward": fwd,
        "forward_flop_per_s": flops / fwd["median_s"],
        "sample_steps": sample_steps, "sample_flops": s_flops, "sample": smp,
        "sample_flop_per_s": s_flops / smp["median_s"],
    }


PLUGINS = ("plugins/elf", "plugins/mdlm", "plugins/duo")


def measure_revision(revision: str, argv: list[str]) -> dict:
    """This script's payload at git ``revision`` with the settings ``argv``: the revision's
    own code, imported from a temporary worktree ahead of the installed packages."""
    root = C.HERE.parent
    with tempfile.TemporaryDirectory() as tmp:
        tree, out = Path(tmp) / "tree", Path(tmp) / "before.json"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(tree), revision],
                       check=True, capture_output=True)
        try:
            path = os.pathsep.join(str(tree / p) for p in ("", *PLUGINS))
            script = tree / "benchmarks" / f"{SCRIPT}.py"
            subprocess.run([sys.executable, str(script), *argv, "--json", str(out)], cwd=tree, check=True,
                           env={**os.environ, "PYTHONPATH": path})
            return json.loads(out.read_text())
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)], check=False)


def compare(before: dict, after: dict) -> list[dict]:
    """Per model and length: the forward and whole-sample times of both, and after / before."""
    old = {(r["label"], r["seq_len"]): r for r in before["results"]}
    rows = []
    for r in after["results"]:
        b = old.get((r["label"], r["seq_len"]))
        if b is None:
            continue
        rows.append({
            "model": r["label"], "L": r["seq_len"],
            "fwd s before": b["forward"]["median_s"], "fwd s after": r["forward"]["median_s"],
            "fwd after/before": r["forward"]["median_s"] / b["forward"]["median_s"],
            "sample s before": b["sample"]["median_s"], "sample s after": r["sample"]["median_s"],
            "sample after/before": r["sample"]["median_s"] / b["sample"]["median_s"],
            "sample frac before": b["sample_fraction_of_peak"], "sample frac after": r["sample_fraction_of_peak"],
        })
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, SCRIPT)
    parser.add_argument("--lengths", default="32,64,128", help="sequence lengths (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per forward (default: %(default)s)")
    parser.add_argument("--sample-steps", type=int, default=32, help="steps of the timed sample call")
    parser.add_argument("--peak-n", type=int, default=2048, help="matmul size of the peak measurement")
    parser.add_argument("--reps", type=int, default=5, help="timed blocks per measurement")
    parser.add_argument("--min-seconds", type=float, default=0.3, help="length of one timed forward block")
    parser.add_argument("--before", metavar="REV", help="also measure git revision REV first, same settings, "
                                                        "and write both side by side")
    args = parser.parse_args(argv)
    before = None
    if args.before:
        settings = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                    if k not in ("before", "json", "quick") and v is not None]
        before = measure_revision(args.before, settings + (["--quick"] if args.quick else []))
    if args.quick:
        args.lengths, args.batch_size, args.sample_steps = "16", 2, 2
        args.peak_n, args.reps, args.min_seconds = 256, 2, 0.0
    started = C.now()
    device = C.setup_torch(args)
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    entries = C.parse_models(args.models)
    registry = C.load_registry()

    peak_before = matmul_peak(device, args.peak_n, max(2, args.reps))
    print(f"matmul peak ({args.peak_n}^3 fp32): {peak_before['flop_per_s'] / 1e9:.1f} GFLOP/s")
    skipped: dict[str, str] = {}
    results = []
    for L in lengths:
        budget = {"seq_len": L, "task_options": {"train_sentences": 256, "valid_sentences": 16}}
        for b in C.build_all(entries, device, registry=registry, skipped=skipped, **budget):
            print(f"[{b.label}] L={L} batch={args.batch_size}")
            try:
                m = measure(b, args.batch_size, args.sample_steps, device, args.min_seconds, args.reps)
            except Exception as exc:  # noqa: BLE001
                text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                print(f"NOTE: {b.label} L={L} failed ({text})")
                skipped[f"{b.label}@{L}"] = text
                continue
            params = sum(p.numel() for p in b.model.network.parameters())
            results.append({"model": b.name, "label": b.label, "seq_len": L, "batch_size": args.batch_size,
                            "network_params": params, **m})
    peak_after = matmul_peak(device, args.peak_n, max(2, args.reps))
    peak = max(peak_before["flop_per_s"], peak_after["flop_per_s"])
    rows = []
    for r in results:
        r["forward_fraction_of_peak"] = r["forward_flop_per_s"] / peak
        r["sample_fraction_of_peak"] = r["sample_flop_per_s"] / peak
        rows.append({
            "model": r["label"], "L": r["seq_len"], "B": r["batch_size"],
            "GFLOP/fwd": r["forward_flops"] / 1e9, "fwd/s": 1 / r["forward"]["median_s"],
            "GFLOP/s": r["forward_flop_per_s"] / 1e9, "fwd frac": r["forward_fraction_of_peak"],
            "sample GFLOP": r["sample_flops"] / 1e9, "sample s": r["sample"]["median_s"],
            "sample frac": r["sample_fraction_of_peak"],
        })
    print(f"\nfp32 matmul peak: {peak / 1e9:.1f} GFLOP/s (before {peak_before['flop_per_s'] / 1e9:.1f}, "
          f"after {peak_after['flop_per_s'] / 1e9:.1f})")
    print(C.table(rows, floatfmt=".3g"))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    payload = {**C.envelope(SCRIPT, args, device, started),
               "peak": {"flop_per_s": peak, "before": peak_before, "after": peak_after},
               "results": results, "table": rows, "skipped": skipped}
    if before is not None:
        payload["comparison"] = compare(before, payload)
        payload["before_revision"] = {"revision": args.before, **before}
        print(f"\nthe same at {args.before} (run first) and now:")
        print(C.table(payload["comparison"], floatfmt=".3g"))
    C.write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
