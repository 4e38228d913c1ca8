"""The runner: train (or reuse) each model under the shared budget, then evaluate every
``model x steps x seed`` cell, writing each record the moment it is finished.

A failure inside one plugin (building, training, sampling or scoring) fails only that
plugin's cells, with the error recorded; the other cells still run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import ValidationError
from tqdm.auto import tqdm

from dlmbench import distributed
from dlmbench.atomic import write_text_atomic
from dlmbench.checkpoint import checkpoint_hash, checkpoint_key, load_checkpoint, save_checkpoint
from dlmbench.config import ModelEntry, RunConfig, explain, model_preset, stable_hash
from dlmbench.data import Batch
from dlmbench.environment import describe_device, git_revision, hub_offline, resolve_device, versions
from dlmbench.metrics.proxy import PROXY
from dlmbench.errors import CheckpointError, ConfigError
from dlmbench.metric import Metric, score_all
from dlmbench.model import Model, ModelConfig
from dlmbench.registry import Registry
from dlmbench.results import ResultStore, cell_id, cell_identity
from dlmbench.sampler import Sampler
from dlmbench.sampling import generate, to_generation
from dlmbench.task import TaskData
from dlmbench.training import compile_network, fit


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def build_task(config: RunConfig, registry: Registry) -> TaskData:
    task_cls, argument = registry.task(config.task)
    try:
        task_config = task_cls.Config(**config.task_options)
    except ValidationError as exc:
        raise explain(exc, f"task_options for {task_cls.name!r}") from None
    task = task_cls(task_config, argument)
    b = config.budget
    return task.load(seq_len=b.seq_len, num_eval=b.num_samples, seed=b.data_seed)


def build_metrics(config: RunConfig, registry: Registry, data: TaskData, task_defaults: tuple[str, ...]) -> list[Metric]:
    names = config.metrics if config.metrics is not None else list(task_defaults)
    metrics = []
    for name in names:
        cls = registry.metric(name)
        options = {}
        if "evaluator" in cls.Config.model_fields:
            evaluator = config.budget.evaluator
            if evaluator == "oracle":  # the task's exact judge; LM-based metrics need an LM
                evaluator = PROXY if hub_offline() else cls.Config.model_fields["evaluator"].default
            options["evaluator"] = evaluator
        metric = cls(cls.Config(**options))
        if metric.applies_to(data):
            metrics.append(metric)
    return metrics


def build_model_config(entry: ModelEntry, run_preset: str, registry: Registry) -> ModelConfig:
    """The entry's model config: its own preset (which must exist), else the run preset's
    choice for this model (skipped when the plugin lacks it), then the entry's options."""
    cls = registry.model(entry.name)
    preset = entry.preset
    if preset is None:
        preset = model_preset(run_preset, entry.name)
        if preset not in cls.Config.presets:
            preset = None  # a plugin without this preset keeps its defaults
    try:
        return cls.Config.from_preset(preset, **entry.options)
    except ValidationError as exc:
        raise explain(exc, f"options for model {entry.name!r}") from None


def build_model(entry: ModelEntry, run_preset: str, registry: Registry, data: TaskData) -> Model:
    return registry.model(entry.name)(build_model_config(entry, run_preset, registry), data.spec)


def build_sampler(entry: ModelEntry, registry: Registry, conditional: bool = False) -> Sampler:
    cls = registry.sampler(entry.name, entry.sampler, conditional)
    try:
        return cls(cls.Config(**entry.sampler_options))
    except ValidationError as exc:
        raise explain(exc, f"sampler options for {entry.name}/{cls.name}") from None


@dataclass
class Runner:
    config: RunConfig
    registry: Registry
    plugin_versions: dict[str, str] = field(default_factory=dict)
    echo: Callable[[str], None] = print
    progress: bool = True

    def __post_init__(self) -> None:
        self.world = distributed.setup()
        self.store = ResultStore(self.config.out_dir)
        self.device = resolve_device(self.config.device)
        if self.device.type == "cuda" and self.world.size > 1:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.cache = Path(self.config.cache)
        os.environ.setdefault("DLMBENCH_CACHE", str(self.cache))  # tasks cache built data there too
        if not self.world.is_main:  # one voice and one writer: rank 0
            self.echo, self.progress = (lambda *_: None), False

    # -- training ---------------------------------------------------------------------------
    def checkpoint_path(self, model: Model) -> tuple[Path, dict]:
        training = self.config.budget.training_key()
        if self.config.precision != "fp32":  # bf16 trains other weights; fp32 keys stay as before
            training = {**training, "precision": self.config.precision}
        key = checkpoint_key(model.name, model.config, model.spec, training)
        return self.cache / "checkpoints" / f"{model.name}-{checkpoint_hash(key)}.safetensors", key

    def obtain(self, model: Model, data: TaskData) -> tuple[Model, str]:
        """Load the cached checkpoint for this exact setup, or train and cache it."""
        path, key = self.checkpoint_path(model)
        digest = checkpoint_hash(key)
        if path.exists():
            load_checkpoint(model, path, key)
            self.echo(f"[{model.name}] reusing checkpoint {path}")
            self.record_reused_model(model, path, digest)
            model.to(self.device)
            if self.config.compile:
                compile_network(model)
            return model, digest
        model.to(self.device)
        if self.config.compile:
            compile_network(model)  # children of model.network only: NFE hooks stay eager
        b = self.config.budget
        steps = b.train_steps
        self.echo(
            f"[{model.name}] training {steps} steps x {b.batch_size} x {b.seq_len} = "
            f"{b.counted_train_tokens:,} tokens"
        )
        bars: list[tqdm] = []  # opened at the first step, so Model.prepare's time is not in it

        def tick(step: int, loss: float) -> None:
            if not bars:
                bars.append(tqdm(total=steps, desc=f"train {model.name}", disable=not self.progress, leave=False))
            bars[0].update(1)
            if step % 20 == 0:
                bars[0].set_postfix(loss=f"{loss:.3f}")

        report = fit(model, data.train, batch_size=b.batch_size, steps=steps, seed=b.train_seed, progress=tick,
                     precision=self.config.precision)
        for bar in bars:
            bar.close()
        if report.prepared:
            what = report.prepared.get("what", "Model.prepare")
            self.echo(f"[{model.name}] before training: {what} ({report.prepared.get('seconds', 0):.0f}s)")
        bound = self.likelihood_bound(model, data)
        if not self.world.is_main:
            distributed.barrier()  # wait for rank 0's checkpoint
            return model, digest
        save_checkpoint(model, path, key, extra={"train_seconds": report.seconds})
        record = {
            "model": model.name,
            "checkpoint_hash": digest,
            "model_config": model.config.model_dump(mode="json"),
            "train_steps": report.steps,
            "train_tokens": report.tokens,
            "train_seconds": report.seconds,
            "precision": self.config.precision,
            "compile": self.config.compile,
            "first_step_seconds": report.first_step_seconds,
            "median_step_seconds": report.median_step_seconds,
            **({"compile_seconds": report.compile_seconds} if self.config.compile else {}),
            "first_loss": report.losses[0] if report.losses else None,
            "final_loss": sum(report.losses[-50:]) / max(len(report.losses[-50:]), 1),
            "parameters": sum(p.numel() for p in model.trainable_parameters()),
            "likelihood_bound": bound,
            **({"prepared": report.prepared} if report.prepared else {}),
            "task": self.config.task,
            "budget_hash": self.config.budget_hash(),
            "device": describe_device(self.device),
            "created": now(),
        }
        write_text_atomic(path.with_suffix(".json"), json.dumps(record, indent=1, sort_keys=True))
        self.store.write_json(f"models/{model.name}-{digest}.json", record)
        self.echo(f"[{model.name}] trained in {report.seconds:.0f}s, final loss {report.losses[-1]:.3f}")
        distributed.barrier()
        return model, digest

    def record_reused_model(self, model: Model, path: Path, digest: str) -> None:
        """Give this run the model record of a cached checkpoint (its training facts are in
        the JSON beside it), so its tables show training and likelihood bounds too."""
        sidecar, target = path.with_suffix(".json"), f"models/{model.name}-{digest}.json"
        if not self.world.is_main or not sidecar.exists() or (self.store.root / target).exists():
            return
        record = json.loads(sidecar.read_text())
        record.update(task=self.config.task, budget_hash=self.config.budget_hash(), reused_checkpoint=str(path))
        self.store.write_json(target, record)

    @torch.no_grad()
    def likelihood_bound(self, model: Model, data: TaskData, max_rows: int = 512) -> dict[str, Any] | None:
        """Validation NELBO per token and its perplexity bound, for models that have one."""
        rows = data.valid[:max_rows].to(self.device)
        torch.manual_seed(self.config.budget.train_seed)
        total, count = 0.0, 0
        for lo in range(0, rows.shape[0], 128):
            nelbo = model.nelbo(Batch(rows[lo : lo + 128]))
            if nelbo is None:
                return None
            total += float(nelbo.sum())
            count += nelbo.numel() * (data.spec.seq_len - data.spec.prefix_len)
        per_token = total / count
        return {"nelbo_per_token": per_token, "ppl_bound": float(torch.tensor(per_token).exp()), "rows": int(rows.shape[0])}

    # -- evaluation -------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        cfg = self.config
        data = build_task(cfg, self.registry)
        task_cls, _ = self.registry.task(cfg.task)
        metrics = build_metrics(cfg, self.registry, data, task_cls.default_metrics)
        if self.world.is_main:
            self.store.write_json("run.json", {"config": cfg.model_dump(mode="json"), "created": now()})
        self.echo(
            f"task {cfg.task}: {data.train.shape[0]} train x {data.spec.seq_len} tokens, vocab {data.spec.vocab_size}; "
            f"metrics {', '.join(m.name for m in metrics)}"
        )
        records = [self.reference_cell(data, metrics)] if self.world.is_main else []
        for entry in cfg.models:
            records.extend(self.run_model(entry, data, metrics))
        return [r for r in records if r] if self.world.is_main else []

    def base_record(self, data: TaskData) -> dict[str, Any]:
        return {
            "run": self.config.name,
            "task": self.config.task,
            "task_fingerprint": data.fingerprint(),
            "budget": self.config.budget.model_dump(mode="json"),
            "budget_hash": self.config.budget_hash(),
            "device": describe_device(self.device),
            "versions": versions(self.plugin_versions),
            "git_revision": git_revision(),
        }

    def fast_path(self) -> dict[str, Any]:
        """How a model's cells were computed (the held-out data cell has none)."""
        return {"precision": self.config.precision, "compile": self.config.compile}

    def reference_cell(self, data: TaskData, metrics: list[Metric]) -> dict[str, Any] | None:
        """Score held-out data with the same metrics: the row every model is read against."""
        b = self.config.budget
        identity = cell_identity(self.config.name, "data", data.fingerprint(), "held-out", {}, 0,
                                 self.config.task, b.data_seed, self.config.budget_hash(), [m.name for m in metrics])
        cid = cell_id(identity)
        if self.store.is_done(cid):
            return self.store.read(cid)
        ids = data.valid[: b.num_samples]
        generation = to_generation(ids, data.tokenizer, data.spec.prefix_len, data)
        if data.references is not None:  # conditional: held-out targets are the references
            generation.references = [data.tokenizer.decode(t) for t in generation.tokens]
        record = {
            **self.base_record(data), "cell_id": cid, "status": "ok", "model": "data", "label": "data (held-out)",
            "sampler": "held-out", "sampler_settings": {}, "steps": 0, "nfe": 0.0, "seed": b.data_seed,
            "num_samples": int(ids.shape[0]), "wall_time_s": 0.0,
            "metrics": score_all(metrics, generation, data), "created": now(),
        }
        self.store.write_cell(record)
        return record

    def run_model(self, entry: ModelEntry, data: TaskData, metrics: list[Metric]) -> list[dict[str, Any]]:
        cfg, b = self.config, self.config.budget
        records: list[dict[str, Any]] = []
        try:
            torch.manual_seed(b.train_seed)  # the initial weights must not depend on what ran before
            model = build_model(entry, cfg.preset, self.registry, data)
            sampler = build_sampler(entry, self.registry, data.spec.prefix_len > 0)
        except ConfigError:
            raise  # a configuration error stops the run: nothing would be comparable
        except Exception as exc:  # noqa: BLE001 - a plugin that cannot even build fails its cells
            return self.fail_unbuildable(entry, data, metrics, exc)
        ckpt_hash = checkpoint_hash(self.checkpoint_path(model)[1])
        label = entry.label or f"{entry.name}/{sampler.name}"
        settings = sampler.config.model_dump(mode="json")
        cells = []
        for steps in b.steps:
            for seed in b.seeds:
                identity = cell_identity(cfg.name, entry.name, ckpt_hash, sampler.name, settings, steps,
                                         cfg.task, seed, cfg.budget_hash(), [m.name for m in metrics])
                cells.append((steps, seed, cell_id(identity)))
        todo = distributed.gather_objects([c for c in cells if not self.store.is_done(c[2])])[0]
        records.extend(self.store.read(c[2]) for c in cells if c not in todo)
        if not todo:
            self.echo(f"[{entry.name}] all {len(cells)} cells finished already; skipping")
            return records
        common = {
            **self.base_record(data), **self.fast_path(), "model": entry.name, "label": label,
            "model_config": model.config.model_dump(mode="json"), "checkpoint_hash": ckpt_hash,
            "sampler": sampler.name, "sampler_settings": settings, "train_tokens": b.counted_train_tokens,
        }
        try:
            model, _ = self.obtain(model, data)
        except Exception as exc:  # noqa: BLE001 - a broken plugin fails only its own cells
            return records + [self.fail(common, steps, seed, cid, exc) for steps, seed, cid in todo]
        for steps, seed, cid in todo:
            try:
                records.append(self.run_cell(common, model, sampler, data, metrics, steps, seed, cid))
            except Exception as exc:  # noqa: BLE001
                records.append(self.fail(common, steps, seed, cid, exc))
        return records

    def fail_unbuildable(self, entry: ModelEntry, data: TaskData, metrics: list[Metric], exc: BaseException) -> list[dict]:
        cfg = self.config
        common = {**self.base_record(data), **self.fast_path(), "model": entry.name, "label": entry.label or entry.name,
                  "sampler": entry.sampler or "default", "sampler_settings": entry.sampler_options}
        out = []
        for steps in cfg.budget.steps:
            for seed in cfg.budget.seeds:
                identity = cell_identity(cfg.name, entry.name, stable_hash(entry.model_dump(mode="json")),
                                         common["sampler"], entry.sampler_options, steps, cfg.task, seed,
                                         cfg.budget_hash(), [m.name for m in metrics])
                out.append(self.fail(common, steps, seed, cell_id(identity), exc))
        return out

    def fail(self, common: dict, steps: int, seed: int, cid: str, exc: BaseException) -> dict[str, Any]:
        if isinstance(exc, CheckpointError):
            text = str(exc)
        else:
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        self.echo(f"[{common['model']}] cell steps={steps} seed={seed} FAILED: {text}")
        record = {**common, "cell_id": cid, "status": "error", "error": text,
                  "traceback": traceback.format_exc(), "steps": steps, "seed": seed, "created": now()}
        if self.world.is_main:
            self.store.write_cell(record)
        return record

    def run_cell(self, common: dict, model: Model, sampler: Sampler, data: TaskData, metrics: list[Metric],
                 steps: int, seed: int, cid: str) -> dict[str, Any]:
        b = self.config.budget
        prefixes = data.eval_prefixes[: b.num_samples] if data.eval_prefixes is not None else None
        bar = tqdm(total=b.num_samples, desc=f"{common['label']} steps={steps} seed={seed}",
                   disable=not self.progress, leave=False)
        run = generate(model, sampler, steps, b.num_samples, seed, prefixes, b.sample_batch_size, bar.update,
                       precision=self.config.precision)
        bar.close()
        if not self.world.is_main:
            return {}
        generation = to_generation(run.ids, data.tokenizer, data.spec.prefix_len, data)
        t0 = time.perf_counter()
        scores = score_all(metrics, generation, data)
        score_time = time.perf_counter() - t0
        self.store.write_samples(cid, [
            {"i": i, "text": text, "ids": row.tolist()} for i, (text, row) in enumerate(zip(generation.texts, run.ids))
        ])
        record = {
            **common, "cell_id": cid, "status": "ok", "steps": steps, "seed": seed,
            "nfe": run.nfe, "nfe_calls": run.calls, "max_nfe": sampler.max_nfe(steps, model.spec),
            "num_samples": b.num_samples, "metrics": scores, "wall_time_s": run.seconds,
            "score_time_s": score_time, "created": now(),
        }
        self.store.write_cell(record)
        summary = ", ".join(f"{k}={v['value']:.4g}" for k, v in scores.items())
        self.echo(f"[{common['label']}] steps={steps} seed={seed} nfe={run.nfe:g} {run.seconds:.1f}s: {summary}")
        return record
