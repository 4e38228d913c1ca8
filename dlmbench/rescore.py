"""Scoring stored samples with (other) metrics, without sampling again.

``dlmbench eval`` and a re-run that asks for one more metric both come here: the cell's
samples are read back from ``samples/<cell_id>.jsonl`` (the held-out data row is rebuilt
from the task), scored, and the record rewritten with the new results beside the old.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dlmbench.build import TaskViews, build_metrics, metric_entries
from dlmbench.config import MetricEntry, RunConfig
from dlmbench.context import RunContext
from dlmbench.data import Generation
from dlmbench.errors import ConfigError, DLMBenchError
from dlmbench.metric import Metric, score_all, scored_alike
from dlmbench.protocol import DEFAULT, get_protocol
from dlmbench.records import CellRecord
from dlmbench.registry import Registry
from dlmbench.results import ResultStore
from dlmbench.sampling import to_generation
from dlmbench.task import TaskData


class StoredSamplesError(ValueError):
    """A finished cell's samples file is missing or damaged: the cell must be sampled again."""


def stored_generation(store: ResultStore, record: CellRecord, data: TaskData) -> Generation:
    """The generation a finished cell scored: its stored samples, or for the held-out data
    row the task's validation rows, whose targets are also the references."""
    if record.is_reference:
        ids = data.valid[: record.num_samples]
    else:
        ids = torch.tensor([r["ids"] for r in store.read_samples(record.cell_id)], dtype=torch.long)
    generation = to_generation(ids, data.tokenizer, data.spec.prefix_len, data)
    if record.is_reference and data.references is not None:
        generation.references = [data.tokenizer.decode(t) for t in generation.tokens]
    return generation


def score_missing(store: ResultStore, record: CellRecord, metrics: list[Metric], data: TaskData,
                  replace: bool = False) -> CellRecord:
    """``record`` with every metric it lacks (or holds with other settings) scored from its
    stored samples; ``replace`` rescores all of ``metrics``. Rewrites the record if it changed."""
    todo = [m for m in metrics
            if replace or m.key not in record.metrics or not scored_alike(record.metrics[m.key], m)]
    if not todo:
        return record
    try:
        generation = stored_generation(store, record, data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoredSamplesError(f"samples of cell {record.cell_id} cannot be read: {type(exc).__name__}: {exc}") from exc
    scores = score_all(todo, generation, data)
    record = record.model_copy(update={"metrics": {**record.metrics, **scores}})
    store.write_cell(record)
    return record


def rescore(run_dir: str | Path, entries: list[MetricEntry] | None, registry: Registry,
            context: RunContext, protocol: str = DEFAULT) -> tuple[int, dict[str, str]]:
    """Score every finished cell of ``run_dir`` with ``entries`` (None: the run's own
    metrics) under ``protocol``, replacing results of the same keys (another protocol's
    results have other keys: ``NAME@PROTOCOL``). Returns how many cells were scored, and
    the cells that could not be (a damaged samples file, a raising metric) with why:
    those are left as they were."""
    store = ResultStore(Path(run_dir))
    run = store.read_run()
    if run is None:
        raise ConfigError(f"{run_dir}: no valid run.json; is it a `dlmbench run` results directory?")
    store.migrate()
    config = RunConfig.model_validate(run.config)
    views = TaskViews(config, registry, context, weights=False)  # stored samples: no weights read
    if entries is None:
        entries = metric_entries(config, registry)
    metrics = build_metrics(entries, registry, views.default, config.budget.evaluator, context,
                            get_protocol(protocol))
    count, failed = 0, {}
    for record in store.records():
        if not record.ok:
            continue
        try:  # each cell decoded and scored through the view of the task its model read
            score_missing(store, record, metrics, views.get(record.tokenizer, f"model {record.model!r}"),
                          replace=True)
        except (DLMBenchError, OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            failed[record.cell_id] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            continue
        count += 1
    return count, failed
