"""Wall time and NFE each model/sampler needs to reach a given oracle quality.

Reads a finished results directory (``dlmbench run --models elf,mdlm,duo,ar --steps ...``:
records under ``<run>/cells/*.json``, each with ``nfe``, ``wall_time_s``,
``metrics[name]["value"]``, ``label`` and ``steps``), averages each ``label x steps``
over its seeds, and reports per model/sampler the smallest NFE (and its sampling wall
time) at which ``--metric`` reaches ``--target``, or the best value it reached and
where. The AR baseline (KV cache: one NFE per generated token, whatever ``steps`` says)
and the held-out data are listed as references.

``--target`` is a number, ``ar`` (the AR baseline's mean value: "as good as the
left-to-right model with the same training budget"; the default) or ``data`` (the
held-out data's value). ``--run`` produces the results directory first by calling the
CLI (models that do not build are dropped with a note).

    python benchmarks/quality_per_compute.py --run --models elf,mdlm,duo,ar \\
        --steps 4,8,16,32,64,128,256,1024
    python benchmarks/quality_per_compute.py runs/qpc --metric oracle-nll --target 3.5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SCRIPT = "quality_per_compute"
DEFAULT_STEPS = "4,8,16,32,64,128,256,1024"


def load_cells(dirs: list[Path]) -> list[dict]:
    """Cell records, read (and validated) through ``dlmbench.records``, as plain dicts."""
    from dlmbench.results import load_records

    cells = []
    for d in dirs:
        records = load_records([d])[0]
        if not records:
            raise SystemExit(f"no cell records under {d} (expected {d}/cells/*.json)")
        cells.extend(c.model_dump(mode="json", by_alias=True) for c in records)
    return cells


def _run_config(d: Path) -> dict | None:
    from dlmbench.results import ResultStore

    run = ResultStore(d).read_run()
    return run.config if run is not None else None


def aggregate(cells: list[dict], metric: str) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """``{label: [point per steps, sorted by NFE]}`` with seed means; and each label's model."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    models: dict[str, str] = {}
    for c in cells:
        if c.get("status") != "ok" or metric not in (c.get("metrics") or {}):
            continue
        groups[(c["label"], int(c["steps"]))].append(c)
        models[c["label"]] = c["model"]
    curves: dict[str, list[dict]] = defaultdict(list)
    for (label, steps), cs in groups.items():
        n = len(cs)
        values = [float(c["metrics"][metric]["value"]) for c in cs]
        samples = [int(c.get("num_samples") or 0) for c in cs]
        wall = sum(float(c.get("wall_time_s") or 0.0) for c in cs) / n
        curves[label].append({
            "steps": steps,
            "nfe": sum(float(c.get("nfe") or 0.0) for c in cs) / n,
            "wall_time_s": wall,
            "wall_ms_per_sample": 1e3 * wall / max(1, sum(samples) / n),
            "value": sum(values) / n,
            "value_min": min(values), "value_max": max(values),
            "seeds": sorted(int(c.get("seed", 0)) for c in cs),
            "higher_is_better": bool(cs[0]["metrics"][metric].get("higher_is_better", True)),
            "device": cs[0].get("device"),
        })
    for pts in curves.values():
        pts.sort(key=lambda p: (p["nfe"], p["steps"]))
    return dict(curves), models


def better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def reaches(value: float, target: float, higher: bool) -> bool:
    return value >= target if higher else value <= target


def summarise(label: str, points: list[dict], target: float | None) -> dict:
    higher = points[0]["higher_is_better"]
    best = points[0]
    for p in points[1:]:
        if better(p["value"], best["value"], higher):
            best = p
    hit = None
    if target is not None:
        hit = next((p for p in points if reaches(p["value"], target, higher)), None)
    fastest = None
    if hit is not None:  # wall time can disagree with NFE (cache, per-step sampler cost)
        fastest = min((p for p in points if reaches(p["value"], target, higher)), key=lambda p: p["wall_time_s"])
    return {"label": label, "reached": hit is not None, "at": hit, "fastest_at": fastest, "best": best}


def resolve_target(text: str | None, curves: dict[str, list[dict]], models: dict[str, str],
                   reference: dict | None) -> tuple[float | None, str]:
    if text is None or text == "ar":
        ar = [p for label, pts in curves.items() if models.get(label) == "ar" for p in pts]
        if ar:
            return sum(p["value"] for p in ar) / len(ar), "ar (mean over its cells)"
        if text == "ar":
            print("NOTE: --target ar but no AR cells; falling back to the held-out data")
        text = "data"
    if text == "data":
        if reference is not None:
            return reference["value"], "held-out data"
        print("NOTE: no held-out reference cell; reporting the best reached only")
        return None, "none"
    return float(text), "given"


def run_cli(args: argparse.Namespace, out: Path, device) -> list[str]:
    """``dlmbench run`` for the models that build; returns the models actually run."""
    skipped: dict[str, str] = {}
    budget = {"task_options": {"train_sentences": 256, "valid_sentences": 16}} if args.quick else {}
    built = C.build_all(C.parse_models(args.models), device, skipped=skipped, **budget)
    names = []
    for b in built:
        raw = next(e for e in C.parse_models(args.models) if e["name"] == b.name)
        names.append(raw["name"])
    if not names:
        raise SystemExit("no model builds; nothing to run")
    cmd = [sys.executable, "-m", "dlmbench", "run", "--models", ",".join(dict.fromkeys(names)),
           "--steps", args.steps, "--out", str(out), "--no-progress", "--device", args.device]
    for flag, value in (("--seeds", args.seeds), ("--num-samples", args.num_samples),
                        ("--train-tokens", args.train_tokens), ("--cache", args.cache)):
        if value is not None:
            cmd += [flag, str(value)]
    for extra in args.set or []:
        cmd += ["--set", extra]
    env = dict(os.environ)
    if args.threads and args.threads > 0:
        env["OMP_NUM_THREADS"] = str(args.threads)  # torch reads it at start-up
    print("$ " + " ".join(cmd[1:]).replace("-m dlmbench", "dlmbench"), flush=True)
    proc = subprocess.run(cmd, env=env)
    if proc.returncode not in (0, 1):  # 1: some cells failed; the others are still read
        raise SystemExit(f"dlmbench run exited {proc.returncode}")
    return names


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, SCRIPT)
    parser.add_argument("results", nargs="*", help="results directories (runs/NAME); with --run: --out")
    parser.add_argument("--metric", default="grammar-accept", help="metric to reach (default: %(default)s)")
    parser.add_argument("--target", default="ar", help="a number, 'ar' or 'data' (default: %(default)s)")
    parser.add_argument("--thresholds", default="",
                        help="also tabulate the NFE and wall time to reach each of these values (comma-separated)")
    parser.add_argument("--run", action="store_true", help="produce the results first with `dlmbench run`")
    parser.add_argument("--steps", default=DEFAULT_STEPS, help="with --run: step budgets (default: %(default)s)")
    parser.add_argument("--seeds", help="with --run: sampling seeds (default: the preset's)")
    parser.add_argument("--num-samples", type=int, help="with --run: samples per cell")
    parser.add_argument("--train-tokens", type=int, help="with --run: training tokens per model")
    parser.add_argument("--cache", help="with --run: checkpoint cache (default: the CLI's)")
    parser.add_argument("--set", action="append", help="with --run: passed on as --set KEY=VALUE")
    parser.add_argument("--out", default="runs/quality-per-compute", help="with --run: results directory")
    args = parser.parse_args(argv)
    if args.quick and args.run:
        args.steps = "2,4"
        args.seeds = args.seeds or "0"
        args.num_samples = args.num_samples or 8
        args.train_tokens = args.train_tokens or 64 * 32 * 2
        args.set = (args.set or []) + ["task_options.train_sentences=256", "task_options.valid_sentences=16"]
    started = C.now()
    device = C.setup_torch(args)
    ran = None
    if args.run:
        out = Path(args.results[0]) if args.results else Path(args.out)
        ran = run_cli(args, out, device)
        dirs = [out]
    else:
        if not args.results:
            parser.error("give a results directory, or --run")
        dirs = [Path(d) for d in args.results]

    cells = load_cells(dirs)
    failed = [c for c in cells if c.get("status") != "ok"]
    wanted = {e["name"] for e in C.parse_models(args.models)}
    cells = [c for c in cells if c.get("model") in wanted or c.get("model") == "data"]
    curves, models = aggregate(cells, args.metric)
    if not curves:
        raise SystemExit(f"no finished cell has metric {args.metric!r}")
    reference = curves.pop("data (held-out)", [None])[0]
    target, source = resolve_target(args.target, curves, models, reference)
    budgets = sorted({c.get("budget_hash") for c in cells if c.get("status") == "ok"})
    if len(budgets) > 1:
        print(f"NOTE: the cells come from {len(budgets)} different budgets {budgets}; compare with care")

    summaries, rows = [], []
    for label in sorted(curves, key=lambda l: (models.get(l) == "ar", l)):
        s = summarise(label, curves[label], target)
        s["model"] = models.get(label)
        s["kv_cache"] = models.get(label) == "ar"
        summaries.append(s)
        point = s["at"] if s["reached"] else s["best"]
        rows.append({
            "model/sampler": label + (" (KV cache)" if s["kv_cache"] else ""),
            "reached": "yes" if s["reached"] else "no",
            "steps": point["steps"], "NFE": point["nfe"],
            "wall s": point["wall_time_s"], "ms/sample": point["wall_ms_per_sample"],
            args.metric: point["value"],
            "fastest wall s": s["fastest_at"]["wall_time_s"] if s["fastest_at"] else None,
            "best": s["best"]["value"], "best @NFE": s["best"]["nfe"],
        })
    if reference is not None:
        rows.append({"model/sampler": "data (held-out)", "reached": "-", args.metric: reference["value"]})

    curve_rows = []
    all_steps = sorted({p["steps"] for pts in curves.values() for p in pts})
    for label in sorted(curves, key=lambda l: (models.get(l) == "ar", l)):
        by = {p["steps"]: p for p in curves[label]}
        curve_rows.append({"model/sampler": label, **{f"{s}": (f"{by[s]['value']:.3f} ({by[s]['nfe']:.4g})"
                                                             if s in by else "") for s in all_steps}})
    thresholds = [float(x) for x in args.thresholds.split(",") if x.strip()]
    reach_rows, reach = [], {}
    for label in sorted(curves, key=lambda l: (models.get(l) == "ar", l)):
        row = {"model/sampler": label}
        for t in thresholds:
            hit = summarise(label, curves[label], t)["at"]
            reach.setdefault(label, {})[str(t)] = hit
            row[f">= {t:g}" if curves[label][0]["higher_is_better"] else f"<= {t:g}"] = (
                f"{hit['nfe']:.3g} NFE, {hit['wall_time_s']:.3g} s" if hit else "not reached")
        reach_rows.append(row)
    tgt = "-" if target is None else f"{target:.4g}"
    print(f"\nmetric {args.metric}, target {tgt} ({source}); NFE and wall time are seed means")
    print(C.table(rows, floatfmt=".4g"))
    print(f"\n{args.metric} (NFE) per step budget:")
    print(C.table(curve_rows))
    if thresholds:
        print(f"\nsmallest NFE (and its wall time) reaching each {args.metric} threshold:")
        print(C.table(reach_rows))
    if failed:
        print(f"\n{len(failed)} failed cell(s): " + ", ".join(sorted({c.get('label', c.get('model')) for c in failed})))
    payload = {
        **C.envelope(SCRIPT, args, device, started),
        "results_dirs": [str(d) for d in dirs], "ran_models": ran,
        "metric": args.metric, "target": target, "target_source": source,
        "run_device": sorted({p["device"] for pts in curves.values() for p in pts if p.get("device")}),
        "summary": summaries, "curves": curves, "reference": reference, "thresholds": reach,
        "run_configs": {str(d): _run_config(d) for d in dirs},
        "failed_cells": [{"label": c.get("label"), "steps": c.get("steps"), "error": c.get("error")} for c in failed],
        "table": rows,
    }
    C.write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
