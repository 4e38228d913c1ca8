"""Re-scoring stored samples with (new) metrics, without sampling again."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dlmbench.config import RunConfig
from dlmbench.metric import score_all
from dlmbench.registry import Registry
from dlmbench.results import ResultStore
from dlmbench.runner import build_task
from dlmbench.sampling import to_generation


def rescore(run_dir: str | Path, metric_names: list[str], registry: Registry) -> int:
    """Add or replace ``metric_names`` in every finished cell of ``run_dir``."""
    store = ResultStore(Path(run_dir))
    config = RunConfig.model_validate(json.loads((store.root / "run.json").read_text())["config"])
    data = build_task(config, registry)
    metrics = [registry.metric(n)() for n in metric_names]
    metrics = [m for m in metrics if m.applies_to(data)]
    count = 0
    for record in store.records():
        if record.get("status") != "ok" or record["model"] == "data":
            continue
        rows = store.read_samples(record["cell_id"])
        ids = torch.tensor([r["ids"] for r in rows], dtype=torch.long)
        generation = to_generation(ids, data.tokenizer, data.spec.prefix_len, data)
        record["metrics"].update(score_all(metrics, generation, data))
        store.write_cell(record)
        count += 1
    return count
