"""Leaderboard tables and plots, rendered from stored results only.

One section per (task, budget, text): the budget and evaluator are stated above the
tables, one table per metric with rows = model/sampler and columns = step budgets; models
that read the text through different tokenizers share a section, and the budget line and
training table say what each tokenizer makes of the budget. A cell shows
the mean over seeds, its spread (standard deviation over seeds, or the per-sample
standard error when there is a single seed), the samples it rests on when fewer than
were drawn, each undefined seed with its reason, the measured NFE and the wall time.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from tabulate import tabulate

from dlmbench.config import Budget
from dlmbench.protocol import PROTOCOLS
from dlmbench.records import CellRecord, ModelRecord


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}g}"


def _rows_of(model: ModelRecord, cells: list[CellRecord]) -> str:
    """The table rows sampled from this checkpoint (several when only the sampler differs)."""
    labels = sorted({c.label for c in cells if c.checkpoint_hash == model.checkpoint_hash})
    return "; ".join(labels)


def _prepared_notes(checkpoints: list[tuple[str, ModelRecord]]) -> list[str]:
    """One line per ``(label, model record)`` whose ``Model.prepare`` did work before
    training, with the training tokens it consumed outside the budget, so no table hides them."""
    lines = []
    for label, m in checkpoints:
        facts = m.prepared
        if not facts:
            continue
        tokens = f"; {facts['tokens']:,} training tokens outside the budget" if "tokens" in facts else ""
        seconds = f", {facts['seconds']:.0f}s" if "seconds" in facts else ""
        what = facts.get("what", "prepared before training")
        lines.append(f"- {label}: {what}{tokens}{seconds}.")
    return lines + [""] if lines else []


def _budget_line(b: Budget, tokenizers: int = 1) -> str:
    """The shared budget; with several tokenizers, what is matched (tokens of each model's
    own tokenizer, or bytes of text) and where each model's other count is."""
    if b.unit == "bytes":
        training = (f"training text {b.train_bytes:,} bytes per model (matched in bytes: each model trains the "
                    f"batches of {b.batch_size} x {b.seq_len} of its own tokens that hold them: below)")
    else:
        training = (f"training tokens {b.counted_train_tokens:,} "
                    f"(= batch {b.batch_size} x length {b.seq_len} x {b.train_steps} steps)")
        if tokenizers > 1:
            training += " per model, each in its own tokenizer (matched in tokens; the text each read is below)"
    length = f"sequence length {b.seq_len}" + (" tokens of each model's own tokenizer" if tokenizers > 1 else "")
    return (
        f"Budget: {length}; {training}; "
        f"{b.num_samples} samples per cell; seeds {', '.join(map(str, b.seeds))}; "
        f"evaluator: {_evaluator_text(b.evaluator)}."
    )


def _evaluator_text(evaluator: str) -> str:
    if evaluator == "oracle":  # LM-based metrics then use gpt2-large, or the proxy offline
        return "oracle (the task's exact judge; LM-based metrics name their evaluator below)"
    return f"`{evaluator}`"


def _groups(cells: list[CellRecord]) -> dict[tuple[str, str, str], list[CellRecord]]:
    """Cells that may share a section: same task, budget and text (the text fingerprint,
    the same through every tokenizer; records before it have only the data fingerprint)."""
    groups: dict[tuple[str, str, str], list[CellRecord]] = defaultdict(list)
    for c in cells:
        groups[(c.task, c.budget_hash, c.text_fingerprint or c.task_fingerprint)].append(c)
    return groups


def _tokenizer_count(group: list[CellRecord]) -> int:
    return len({c.tokenizer for c in group})  # requests are frozen, so hashable; None: the task's own


def _metric_names(cells: list[CellRecord]) -> list[str]:
    names: list[str] = []
    for c in cells:
        for name in c.metrics:
            if name not in names:
                names.append(name)
    return names


def _cell_text(entries: list[CellRecord], metric: str, reference: bool) -> str:
    """Mean ± spread over the seeds whose value is defined; the samples it rests on when
    fewer than were drawn (``n=used/drawn``); every undefined seed named with its reason."""
    results = [(e, e.metrics[metric]) for e in entries if metric in e.metrics]
    values = [r.value for _, r in results if r.value is not None]
    notes = [f"seed {e.seed} undefined: {r.undefined or 'no value'}" for e, r in results if r.value is None]
    if any(r.n is not None and e.num_samples and r.n < e.num_samples for e, r in results):
        used = sum(r.n or 0 for _, r in results)
        notes.insert(0, f"n={used}/{sum(e.num_samples or 0 for e, _ in results)}")
    if not values:
        text = "undefined"
    else:
        spread = None
        if len(values) > 1:
            spread = statistics.stdev(values)
        elif len(results) == 1:
            spread = results[0][1].stderr  # a single seed: its per-sample standard error
        mean = statistics.fmean(values)
        text = _fmt(mean) if spread is None else f"{_fmt(mean)} ± {_fmt(spread, 2)}"
    if notes:
        text += f" ({'; '.join(notes)})"
    if reference:
        return text
    nfe = statistics.fmean(e.nfe or 0.0 for e in entries)
    secs = statistics.fmean(e.wall_time_s or 0.0 for e in entries)
    return f"{text} · NFE {nfe:.4g} · {secs:.3g}s"


def _spread(b: Budget) -> str:
    """What the ± is over, and whether training variance is in it."""
    models = len(b.training_seeds)
    if models > 1:
        return (f"standard deviation over {models} trained models (training seeds "
                f"{', '.join(map(str, b.training_seeds))}) x {len(b.seeds)} sampling seed(s): training variance "
                f"included")
    over = "sampling seeds" if len(b.seeds) > 1 else "samples"
    kind = "standard deviation" if len(b.seeds) > 1 else "standard error"
    return (f"{kind} over {over} of one trained model (training seed {b.training_seeds[0]}): training variance not "
            f"included (`--train-seeds` adds it)")


def _section(task: str, bhash: str, group: list[CellRecord], models: list[ModelRecord]) -> list[str]:
    """One task/budget/data section: the budget, one table per metric (one per distinct
    settings of it, stated), and the training table of its checkpoints."""
    budget = group[0].budget
    tokenizers = _tokenizer_count(group)
    per_tokenizer = tokenizers > 1 or budget.unit == "bytes"
    group_models = [m for m in models if m.task == task and m.budget_hash == bhash]
    ordered = sorted(group_models, key=lambda m: (m.model, _rows_of(m, group)))
    several = len(budget.training_seeds) > 1
    checkpoints = [((_rows_of(m, group) or m.model) + (f" [training seed {m.train_seed}]" if several else ""), m)
                   for m in ordered]
    out = [_budget_line(budget, tokenizers), ""]
    if per_tokenizer:
        out += _per_model_budget(checkpoints, budget)
    out += [
           f"Cells: mean ± {_spread(budget)} · NFE per sample (counted by the core) · sampling wall time per cell. "
           "A value resting on fewer samples than were drawn (e.g. `oracle-nll`: the grammatical ones) "
           "shows n=used/drawn; a seed whose value is undefined is named with its reason, never averaged.", "",
           f"Device: {', '.join(sorted({c.device for c in group}))}.", ""]
    steps = sorted({c.steps for c in group if not c.is_reference})
    for metric in _metric_names(group):
        by_settings: dict[str, list[CellRecord]] = defaultdict(list)
        for c in group:
            if metric in c.metrics:
                by_settings[json.dumps(c.metrics[metric].config, sort_keys=True)].append(c)
        for settings, cells in by_settings.items():
            out += _metric_table(metric, cells, steps, settings if len(by_settings) > 1 else None)
    if group_models:
        out += ["### Training and likelihood bounds", ""]
        out += [_training_table(checkpoints, per_tokenizer), ""]
        out += _prepared_notes(checkpoints)
        out += _released_notes(checkpoints)
    return out


def _released_notes(checkpoints: list[tuple[str, ModelRecord]]) -> list[str]:
    """Rows whose weights were not trained here say whose they are and on how much data:
    the budget's training tokens do not apply to them."""
    lines = []
    for label, m in checkpoints:
        if m.weights is None:
            continue
        w, facts = m.weights, m.weights.released
        trained = f", trained by the authors on {facts.trained_on}" if facts else ", trained elsewhere"
        kind = "; distilled" if facts and facts.distilled else ""
        lines.append(f"- {label}: released weights `{w.weights}` ({w.source}){trained}{kind}; not trained "
                     f"here, so the budget's training tokens do not apply (tensors sha256 {w.sha256[:12]}).")
    return lines + [""] if lines else []


def _per_model_budget(checkpoints: list[tuple[str, ModelRecord]], budget: Budget) -> list[str]:
    """What the shared budget is in each model's own tokenizer: its tokens, the bytes of
    text one row holds, and the text it read."""
    lines = []
    for label, m in checkpoints:
        if m.bytes_per_position is None:
            continue
        vocab = f", {m.vocab_size:,} ids" if m.vocab_size else ""
        lines.append(f"- {label}: {m.train_tokens:,} tokens of `{m.tokenizer or 'the task vocabulary'}`{vocab}; "
                     f"a row of {budget.seq_len} tokens holds {m.bytes_per_position * budget.seq_len:.4g} bytes "
                     f"of text on average; {m.train_bytes:,} bytes of text read.")
    return ["Per model:", ""] + lines + [""] if lines else []


def _training_table(checkpoints: list[tuple[str, ModelRecord]], per_tokenizer: bool) -> str:
    """One row per checkpoint; ``per_tokenizer`` adds what each tokenizer makes of the
    budget (vocabulary, text bytes per position and read, steps) and the bound per byte,
    the one that compares across tokenizers."""
    rows = []
    for label, m in checkpoints:
        bound = m.likelihood_bound
        row = [label, f"{m.parameters:,}", "released" if m.weights else f"{m.train_tokens:,}"]
        if per_tokenizer:
            row[1:1] = [f"{m.tokenizer or 'task vocabulary'} ({m.vocab_size:,})" if m.vocab_size else
                        (m.tokenizer or "n/a")]
            row += [f"{m.train_steps:,}", _fmt(m.bytes_per_position),
                    f"{m.train_bytes:,}" if m.train_bytes is not None else "n/a"]
        row += ["-" if m.weights else f"{m.train_seconds:.0f}s", _fmt(m.final_loss), _fmt(bound.nelbo_per_token if bound else None),
                _fmt(bound.ppl_bound if bound else None)]
        if per_tokenizer:
            row.append(_fmt(bound.nelbo_per_byte if bound else None))
        rows.append(row)
    headers = ["checkpoint (its rows)", "trainable params", "train tokens"]
    if per_tokenizer:
        headers[1:1] = ["tokenizer (vocab)"]
        headers += ["steps", "bytes/position", "train text (bytes)"]
    headers += ["train time", "final loss", "NELBO/token (nats) ↓", "PPL bound ↓"]
    if per_tokenizer:
        headers.append("NELBO/byte (nats) ↓")
    return tabulate(rows, headers=headers, tablefmt="github")


def _metric_table(metric: str, cells: list[CellRecord], steps: list[int], settings: str | None) -> list[str]:
    """One metric's table over ``cells``, which all scored it with the same settings
    (``settings`` is stated when the section holds several)."""
    info = cells[0].metrics[metric]
    arrow = "↑" if info.higher_is_better else "↓"
    evaluator = info.details.get("evaluator")  # set by the metrics an LM judged
    note = info.details.get("proxy_note")
    rows_by_label = _rows(c for c in cells if not c.is_reference)
    references: dict[str, list[CellRecord]] = defaultdict(list)  # one row per view of the task
    for c in cells:
        if c.is_reference:
            references[c.label].append(c)
    table = []
    for label, reference in references.items():
        table.append([label] + [_cell_text(reference, metric, reference=True)] * len(steps))
    for label in sorted(rows_by_label):
        by_steps = rows_by_label[label]
        table.append([label] + [_cell_text(by_steps[s], metric, False) if by_steps.get(s) else "" for s in steps])
    known = PROTOCOLS.get(info.protocol)
    out = [f"### {metric} {arrow}", "",
           f"Protocol: `{info.protocol}`" + (f": {known.description}." if known else "."), ""]
    if settings is not None:
        out += [f"Settings: `{settings}` (cells scored with other settings are in their own table).", ""]
    if evaluator:
        out += [f"Evaluator: `{evaluator}`" + (f" ({note})." if note else "."), ""]
    if info.config.get("ids") == "model" and _tokenizer_count(cells) > 1:
        out += [f"Counted on each model's own token ids: rows of different tokenizers are not comparable "
                f"(`{metric.split('@')[0]}:ids=evaluator` counts on the evaluator's ids).", ""]
    out += [tabulate(table, headers=["model/sampler"] + [f"steps={s}" for s in steps], tablefmt="github"), ""]
    return out


def _row_identity(cell: CellRecord) -> str:
    """What makes a row: the setup of its checkpoints (model and its options; the models
    trained from each training seed of one setup pool), the sampler and its settings.
    Cells that differ in any of them are never averaged as if they were seeds."""
    return json.dumps([cell.model, cell.setup_hash or cell.checkpoint_hash, cell.sampler, cell.sampler_settings],
                      sort_keys=True)


def _rows(cells) -> dict[str, dict[int, list[CellRecord]]]:
    """``{row name: {steps: cells}}``; a label that names several row identities (two
    entries given one label, or a sampler setting added since) is split, each row named
    with what tells it apart."""
    by_identity: dict[tuple[str, str], dict[int, list[CellRecord]]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        by_identity[(c.label, _row_identity(c))][c.steps].append(c)
    labels = defaultdict(list)
    for label, identity in by_identity:
        labels[label].append(identity)
    out = {}
    for (label, identity), by_steps in by_identity.items():
        if len(labels[label]) > 1:
            cell = next(iter(by_steps.values()))[0]
            label = f"{label} [checkpoint {str(cell.checkpoint_hash)[:8]}, settings {json.dumps(cell.sampler_settings)}]"
        out[label] = by_steps
    return out


def produced_by(command: str) -> list[str]:
    """The lines stating the command that made a table (the audit's too)."""
    return ["Produced by:", "", "```", command, "```", ""]


def render_markdown(cells: list[CellRecord], models: list[ModelRecord] | None = None,
                    command: str | None = None, command_budget: str | None = None) -> str:
    """The leaderboard as markdown; ``command`` is the command that made the results:
    stated at the top, or with ``command_budget`` above only the sections of that budget
    (a run directory reused with another budget keeps its older sections, without it).

    Cells share a section only when task, budget and data agree, and a table only when
    the metric's settings (evaluator, protocol, ...) agree too: nothing incomparable is
    averaged."""
    models = models or []
    out: list[str] = []
    if command and command_budget is None:
        out += produced_by(command)
    ok = [c for c in cells if c.ok]
    failed = [c for c in cells if not c.ok]
    groups = _groups(ok)
    fingerprints: dict[tuple[str, str], set[str]] = defaultdict(set)
    for task, bhash, fingerprint in groups:
        fingerprints[(task, bhash)].add(fingerprint)
    for (task, bhash, fingerprint), group in sorted(groups.items()):
        data = f", data `{fingerprint}`" if len(fingerprints[(task, bhash)]) > 1 else ""
        out += [f"## Task `{task}` (budget `{bhash}`{data})", ""]
        if command and command_budget == bhash:
            out += produced_by(command)
        out += _section(task, bhash, group, models)
    if failed:
        out += ["## Failed cells", ""]
        for c in failed:
            out.append(f"- {c.label} steps={c.steps} seed={c.seed}: {c.error}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_plot(cells: list[CellRecord], path: str | Path, metric: str | None = None) -> Path | None:
    """Quality against steps and against wall time per model (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [c for c in cells if c.ok and not c.is_reference]
    if not ok:
        return None
    metric = metric or _metric_names(ok)[0]
    series: dict[str, dict[int, list[CellRecord]]] = defaultdict(lambda: defaultdict(list))
    for c in ok:
        if metric in c.metrics:
            series[c.label][c.steps].append(c)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, by_steps in sorted(series.items()):
        steps = sorted(by_steps)
        values = [statistics.fmean(v for e in by_steps[s] if (v := e.metrics[metric].value) is not None)
                  for s in steps]
        times = [statistics.fmean(e.wall_time_s or 0.0 for e in by_steps[s]) for s in steps]
        axes[0].plot(steps, values, marker="o", label=label)
        axes[1].plot(times, values, marker="o", label=label)
    higher = next(c.metrics[metric] for c in ok if metric in c.metrics).higher_is_better
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
