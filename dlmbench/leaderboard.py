"""Leaderboard tables and plots, rendered from stored results only.

One section per (task, budget): the budget and evaluator are stated above the tables,
one table per metric with rows = model/sampler and columns = step budgets. A cell shows
the mean over seeds, its spread (standard deviation over seeds, or the per-sample
standard error when there is a single seed), the measured NFE and the wall time.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from tabulate import tabulate


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}g}"


def _rows_of(model: dict, cells: list[dict]) -> str:
    """The table rows sampled from this checkpoint (several when only the sampler differs)."""
    labels = sorted({c["label"] for c in cells if c.get("checkpoint_hash") == model.get("checkpoint_hash")})
    return "; ".join(labels)


def _prepared_notes(checkpoints: list[tuple[str, dict]]) -> list[str]:
    """One line per ``(label, model record)`` whose ``Model.prepare`` did work before
    training, with the training tokens it consumed outside the budget, so no table hides them."""
    lines = []
    for label, m in checkpoints:
        facts = m.get("prepared")
        if not facts:
            continue
        tokens = f"; {facts['tokens']:,} training tokens outside the budget" if "tokens" in facts else ""
        seconds = f", {facts['seconds']:.0f}s" if "seconds" in facts else ""
        what = facts.get("what", "prepared before training")
        lines.append(f"- {label}: {what}{tokens}{seconds}.")
    return lines + [""] if lines else []


def _budget_line(budget: dict[str, Any]) -> str:
    tokens = budget["train_tokens"]
    steps = math.ceil(tokens / (budget["batch_size"] * budget["seq_len"]))
    counted = steps * budget["batch_size"] * budget["seq_len"]
    return (
        f"Budget: sequence length {budget['seq_len']}; training tokens {counted:,} "
        f"(= batch {budget['batch_size']} x length {budget['seq_len']} x {steps} steps); "
        f"{budget['num_samples']} samples per cell; seeds {', '.join(map(str, budget['seeds']))}; "
        f"evaluator: {_evaluator_text(budget['evaluator'])}."
    )


def _evaluator_text(evaluator: str) -> str:
    if evaluator == "oracle":  # LM-based metrics then use gpt2-large, or the proxy offline
        return "oracle (the task's exact judge; LM-based metrics name their evaluator below)"
    return f"`{evaluator}`"


def _groups(cells: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for c in cells:
        groups[(c["task"], c["budget_hash"])].append(c)
    return groups


def _metric_names(cells: list[dict]) -> list[str]:
    names: list[str] = []
    for c in cells:
        for name in c.get("metrics", {}):
            if name not in names:
                names.append(name)
    return names


def _cell_text(entries: list[dict], metric: str, reference: bool) -> str:
    values = [e["metrics"][metric]["value"] for e in entries if metric in e.get("metrics", {})]
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) > 1:
        spread = statistics.stdev(values)
    else:
        spread = entries[0]["metrics"][metric].get("stderr")
    text = _fmt(mean) if spread is None else f"{_fmt(mean)} ± {_fmt(spread, 2)}"
    if reference:
        return text
    nfe = statistics.fmean(e["nfe"] for e in entries)
    secs = statistics.fmean(e["wall_time_s"] for e in entries)
    return f"{text} · NFE {nfe:.4g} · {secs:.3g}s"


def render_markdown(cells: list[dict], models: list[dict] | None = None, command: str | None = None) -> str:
    """The leaderboard as markdown; ``command`` is the command that made the results."""
    models = models or []
    out: list[str] = []
    if command:
        out += ["Produced by:", "", "```", command, "```", ""]
    ok = [c for c in cells if c.get("status") == "ok"]
    failed = [c for c in cells if c.get("status") != "ok"]
    for (task, bhash), group in sorted(_groups(ok).items()):
        budget = group[0]["budget"]
        seeds = budget["seeds"]
        out += [f"## Task `{task}` (budget `{bhash}`)", "", _budget_line(budget), ""]
        spread = "standard deviation over seeds" if len(seeds) > 1 else "standard error over samples"
        out += [f"Cells: mean ± {spread} · NFE per sample (counted by the core) · sampling wall time per cell.", ""]
        devices = sorted({c.get("device", "?") for c in group})
        out += [f"Device: {', '.join(devices)}.", ""]
        steps = sorted({c["steps"] for c in group if c["model"] != "data"})
        rows_by_label: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
        reference = [c for c in group if c["model"] == "data"]
        for c in group:
            if c["model"] != "data":
                rows_by_label[c["label"]][c["steps"]].append(c)
        for metric in _metric_names(group):
            info = next(c["metrics"][metric] for c in group if metric in c["metrics"])
            arrow = "↑" if info["higher_is_better"] else "↓"
            evaluator = (info.get("config") or {}).get("evaluator")
            note = info.get("details", {}).get("proxy_note")
            table = []
            if reference:
                ref = _cell_text(reference, metric, reference=True)
                table.append(["data (held-out)"] + [ref] * len(steps))
            for label in sorted(rows_by_label):
                by_steps = rows_by_label[label]
                table.append([label] + [_cell_text(by_steps[s], metric, False) if by_steps.get(s) else "" for s in steps])
            out += [f"### {metric} {arrow}", ""]
            if metric in ("gen-ppl", "mauve") and evaluator:
                out += [f"Evaluator: `{evaluator}`" + (f" ({note})." if note else "."), ""]
            out += [tabulate(table, headers=["model/sampler"] + [f"steps={s}" for s in steps], tablefmt="github"), ""]
        group_models = [m for m in models if m.get("task") == task and m.get("budget_hash") == bhash]
        if group_models:
            out += ["### Training and likelihood bounds", ""]
            ordered = sorted(group_models, key=lambda m: (m["model"], _rows_of(m, group)))
            checkpoints = [(_rows_of(m, group) or m["model"], m) for m in ordered]
            rows = []
            for label, m in checkpoints:
                bound = m.get("likelihood_bound") or {}
                rows.append([
                    label, f"{m['parameters']:,}", f"{m['train_tokens']:,}", f"{m['train_seconds']:.0f}s",
                    _fmt(m.get("final_loss")), _fmt(bound.get("nelbo_per_token")), _fmt(bound.get("ppl_bound")),
                ])
            headers = ["checkpoint (its rows)", "trainable params", "train tokens", "train time", "final loss",
                       "NELBO/token (nats) ↓", "PPL bound ↓"]
            out += [tabulate(rows, headers=headers, tablefmt="github"), ""]
            out += _prepared_notes(checkpoints)
    if failed:
        out += ["## Failed cells", ""]
        for c in failed:
            out.append(f"- {c.get('label', c['model'])} steps={c.get('steps')} seed={c.get('seed')}: {c.get('error')}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_plot(cells: list[dict], path: str | Path, metric: str | None = None) -> Path | None:
    """Quality against steps and against wall time per model (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [c for c in cells if c.get("status") == "ok" and c["model"] != "data"]
    if not ok:
        return None
    metric = metric or _metric_names(ok)[0]
    series: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for c in ok:
        if metric in c["metrics"]:
            series[c["label"]][c["steps"]].append(c)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, by_steps in sorted(series.items()):
        steps = sorted(by_steps)
        values = [statistics.fmean(e["metrics"][metric]["value"] for e in by_steps[s]) for s in steps]
        times = [statistics.fmean(e["wall_time_s"] for e in by_steps[s]) for s in steps]
        axes[0].plot(steps, values, marker="o", label=label)
        axes[1].plot(times, values, marker="o", label=label)
    higher = ok[0]["metrics"][metric]["higher_is_better"]
    for ax, xlabel in zip(axes, ("sampling steps", "sampling wall time per cell (s)")):
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric} ({'higher' if higher else 'lower'} is better)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
