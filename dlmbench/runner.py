"""The runner: train (or reuse) each model under the shared budget, then evaluate every
``model x steps x seed`` cell, writing each record the moment it is finished.

A failure inside one plugin (building, training, sampling or scoring) fails only that
plugin's cells, with the error recorded; the other cells still run. A finished cell that
lacks a metric the run asks for is scored from its stored samples, never re-sampled.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from dlmbench import distributed
from dlmbench.atomic import remove_stale_temps, write_text_atomic
from dlmbench.build import TaskViews, build_metrics, build_model, build_model_config, build_sampler, metric_entries
from dlmbench.checkpoint import CheckpointSlot, checkpoint_slot, file_sha256, load_checkpoint, save_checkpoint
from dlmbench.config import ModelEntry, RunConfig, stable_hash
from dlmbench.context import RunContext
from dlmbench.environment import describe_device, git_revision, versions
from dlmbench.errors import CheckpointError, ConfigError, HubUnavailableError
from dlmbench.metric import Metric, score_all
from dlmbench.model import Model
from dlmbench.protocol import get_protocol
from dlmbench.bound import likelihood_bound
from dlmbench.records import CellIdentity, CellRecord, LikelihoodBound, ModelRecord, RunRecord
from dlmbench.released import WeightsSource, load_released, resolve_weights
from dlmbench.registry import Registry
from dlmbench.rescore import StoredSamplesError, score_missing, stored_generation
from dlmbench.results import ResultStore
from dlmbench.sampler import Sampler
from dlmbench.sampling import generate, to_generation
from dlmbench.task import TaskData
from dlmbench.tokenizer import TokenizerRequest
from dlmbench.training import compile_network, fit
from dlmbench.workers import Workers


def default_label(entry: ModelEntry, sampler: str) -> str:
    """``model/sampler``, followed by whatever the entry sets away from the defaults
    (its preset, weights, tokenizer, model options, sampler options), so differently set rows read apart."""
    changed = ([f"preset={entry.preset}"] if entry.preset else []) + \
        ([f"weights={entry.weights}"] if entry.weights else []) + \
        ([f"tokenizer={entry.tokenizer}"] if entry.tokenizer else []) + \
        [f"{k}={v}" for k, v in sorted(entry.options.items())] + \
        [f"{k}={v}" for k, v in sorted(entry.sampler_options.items())]
    return f"{entry.name}/{sampler}" + (f" ({', '.join(changed)})" if changed else "")


@dataclass
class Runner:
    """One run: ``config`` says what to evaluate, ``context`` where and on what. Without
    a context, one is built from the config's ``cache`` and ``device``, joining the
    ``torchrun`` world when there is one (a run trains and samples)."""

    config: RunConfig
    registry: Registry
    context: RunContext | None = None
    plugin_versions: dict[str, str] = field(default_factory=dict)
    echo: Callable[[str], None] = print
    progress: bool = True
    on_cell: Callable[[CellRecord], None] | None = None  # after each cell is written (rank 0)
    retrain: bool = False  # train every model again, replacing its cached checkpoint
    workers: Workers | None = None  # more than one: each model in a worker process (--jobs, dlmbench.workers)

    def __post_init__(self) -> None:
        if self.context is None:
            self.context = RunContext.create(cache=self.config.cache, device=self.config.device,
                                             world=distributed.setup())
        self.ctx: RunContext = self.context
        self.world = self.ctx.world
        self.device = self.ctx.device
        self.store = ResultStore(self.config.out_dir)
        self.trained: set[str] = set()  # checkpoints this run trained (--retrain trains each once)
        if not self.world.is_main:  # one voice and one writer: rank 0
            self.echo, self.progress = (lambda *_: None), False

    # -- training ---------------------------------------------------------------------------
    def train_steps(self, data: TaskData) -> int:
        """The budget's optimiser steps (a bytes budget's: for this view's bytes per row)."""
        b = self.config.budget
        return b.steps_for(data.bytes_per_position()[0] if b.unit == "bytes" else None)

    def checkpoint_slot(self, model: Model, data: TaskData, train_seed: int | None = None) -> CheckpointSlot:
        """Where the model trained with ``train_seed`` (default: the budget's) is cached."""
        budget = self.config.budget.for_training(self.config.budget.train_seed if train_seed is None else train_seed)
        return checkpoint_slot(model, budget, self.config.precision, self.ctx.checkpoints,
                               data.fingerprint(), self.train_steps(data))

    def obtain(self, model: Model, data: TaskData, train_seed: int | None = None) -> Model:
        """Load the cached checkpoint for this exact setup, or train and cache it.

        A checkpoint is usable only with its model record beside it (the record is written
        after the checkpoint, so a crash between the two means: train again), and only if
        its bytes still match the checksum the record holds."""
        seed = self.config.budget.train_seed if train_seed is None else train_seed
        slot = self.checkpoint_slot(model, data, seed)
        reuse = slot.path.exists() and slot.record_path.exists() and not (
            self.retrain and slot.digest not in self.trained)
        if reuse:
            record = ModelRecord.model_validate_json(slot.record_path.read_bytes())
            self.verify(slot, record)
            load_checkpoint(model, slot.path, slot.key)
            self.echo(f"[{model.name}] reusing checkpoint {slot.path}: its stamp {slot.digest} matches this "
                      f"model config, task data, training code and training budget (trained {record.created}; "
                      f"--retrain to redo)")
            self.record_reused_model(slot, record)
        model.to(self.device)
        if self.config.compile:
            compile_network(model)  # children of model.network only: NFE hooks stay eager
        if not reuse:
            self.train(model, data, slot, seed)
            self.trained.add(slot.digest)
        return model

    def train(self, model: Model, data: TaskData, slot: CheckpointSlot, train_seed: int) -> None:
        """Train ``model`` (already on the device, compiled if asked) from ``train_seed``
        and cache it in ``slot``."""
        b = self.config.budget
        steps = self.train_steps(data)
        per_position, _ = data.bytes_per_position()
        self.echo(
            f"[{model.name}] training {steps} steps x {b.batch_size} x {b.seq_len} = "
            f"{steps * b.batch_size * b.seq_len:,} tokens"
            + (f" (~{steps * b.batch_size * b.seq_len * per_position:,.0f} bytes of text)" if b.unit == "bytes" else "")
        )
        bars: list[tqdm] = []  # opened at the first step, so Model.prepare's time is not in it

        def tick(step: int, loss: float) -> None:
            if not bars:
                bars.append(tqdm(total=steps, desc=f"train {model.name}", disable=not self.progress, leave=False))
            bars[0].update(1)
            if step % 20 == 0:
                bars[0].set_postfix(loss=f"{loss:.3f}")

        report = fit(model, data.train, batch_size=b.batch_size, steps=steps, seed=train_seed, progress=tick,
                     precision=self.config.precision)
        for bar in bars:
            bar.close()
        if report.prepared:
            what = report.prepared.get("what", "Model.prepare")
            self.echo(f"[{model.name}] before training: {what} ({report.prepared.get('seconds', 0):.0f}s)")
        bound = self.likelihood_bound(model, data, train_seed)
        if not self.world.is_main:
            distributed.barrier()  # wait for rank 0's checkpoint
            return
        save_checkpoint(model, slot.path, slot.key, extra={"train_seconds": report.seconds})
        record = ModelRecord(
            checkpoint_sha256=file_sha256(slot.path),
            model=model.name, checkpoint_hash=slot.digest, model_config=model.config.model_dump(mode="json"),
            train_steps=report.steps, train_tokens=report.tokens, train_seconds=report.seconds,
            tokenizer=data.info.get("tokenizer"), vocab_size=data.spec.vocab_size,
            bytes_per_position=per_position, train_bytes=round(report.tokens * per_position),
            precision=self.config.precision, compile=self.config.compile,
            first_step_seconds=report.first_step_seconds, median_step_seconds=report.median_step_seconds,
            compile_seconds=report.compile_seconds if self.config.compile else None,
            first_loss=report.losses[0] if report.losses else None,
            final_loss=sum(report.losses[-50:]) / max(len(report.losses[-50:]), 1),
            parameters=sum(p.numel() for p in model.trainable_parameters()),
            likelihood_bound=bound, prepared=report.prepared or None,
            task=self.config.task, budget_hash=self.config.budget_hash(), device=describe_device(self.device),
            threads=torch.get_num_threads(), torch_version=torch.__version__, train_seed=train_seed,
        )
        write_text_atomic(slot.record_path, record.to_json())
        self.store.write_model(record)
        self.echo(f"[{model.name}] trained in {report.seconds:.0f}s, final loss {report.losses[-1]:.3f}")
        distributed.barrier()

    def evaluate_released(self, model: Model, data: TaskData, released: WeightsSource) -> Model:
        """Released weights go to the device untrained; their record says whose they are."""
        model.to(self.device).eval()
        if self.config.compile:
            compile_network(model)
        if not self.world.is_main:
            return model
        if not self.store.has_model(model.name, released.sha256[:16]):
            self.store.write_model(ModelRecord.of_released(
                model, released, data, self.likelihood_bound(model, data), task=self.config.task,
                budget_hash=self.config.budget_hash(), device=describe_device(self.device)))
        return model

    @staticmethod
    def verify(slot: CheckpointSlot, record: ModelRecord) -> None:
        """A checkpoint whose bytes changed since training is never silently used."""
        if record.checkpoint_sha256 is not None and file_sha256(slot.path) != record.checkpoint_sha256:
            raise CheckpointError(
                f"checkpoint {str(slot.path)!r} does not match the checksum in its record "
                f"{str(slot.record_path)!r} (changed or damaged since training); run again with --retrain")

    def record_reused_model(self, slot: CheckpointSlot, record: ModelRecord) -> None:
        """Give this run the model record of a cached checkpoint (its training facts are in
        the JSON beside it), so its tables show training and likelihood bounds too."""
        if not self.world.is_main or self.store.has_model(record.model, record.checkpoint_hash):
            return
        self.store.write_model(record.model_copy(update={
            "task": self.config.task, "budget_hash": self.config.budget_hash(), "reused_checkpoint": str(slot.path)}))

    def likelihood_bound(self, model: Model, data: TaskData, seed: int | None = None) -> LikelihoodBound | None:
        return likelihood_bound(model, data, self.device, self.config.budget.train_seed if seed is None else seed)

    # -- evaluation -------------------------------------------------------------------------
    def run(self) -> list[CellRecord]:
        cfg = self.config
        views = TaskViews(cfg, self.registry, self.ctx)
        data = views.default
        metrics = build_metrics(metric_entries(cfg, self.registry), self.registry, data, cfg.budget.evaluator,
                                self.ctx, get_protocol(cfg.protocol))
        requests = self.validate_entries(views)
        if self.world.is_main:
            stale = self.store.remove_stale_temps() + remove_stale_temps(self.ctx.checkpoints)
            if stale:
                self.echo(f"removed {len(stale)} temp file(s) left by a killed run")
            self.store.migrate()
            others = sorted({r.budget_hash for r in self.store.records()} - {cfg.budget_hash()})
            if others:
                self.echo(f"note: {self.store.root} also holds results of budget(s) {', '.join(others)}; they stay "
                          f"in their own sections and are never averaged with budget {cfg.budget_hash()}")
            self.store.write_run(RunRecord(config=cfg.model_dump(mode="json")))
        self.echo(
            f"task {cfg.task}: {data.train.shape[0]} train x {data.spec.seq_len} tokens, vocab {data.spec.vocab_size}; "
            f"metrics {', '.join(m.key for m in metrics)}"
        )
        for request, view in ((r, views.get(r)) for r in dict.fromkeys(requests) if not r.is_default):
            users = ", ".join(e.name for e, r in zip(cfg.models, requests) if r == request)
            self.echo(f"  {users} read it through {view.tokenizer_name}: vocab {view.spec.vocab_size}")
        records = []
        if self.world.is_main:  # a held-out row per view of the task, the task's own first
            records = [self.reference_cell(views.get(r), metrics, r)
                       for r in dict.fromkeys([TokenizerRequest(), *requests])]
        if self.workers is not None and self.workers.jobs > 1:  # the same records, units run side by side
            return records + self.workers.run(self, views, requests)
        for entry, request in zip(cfg.models, requests):
            records.extend(self.run_model(entry, views.get(request), metrics, request))
        return records if self.world.is_main else []

    def validate_entries(self, views: TaskViews) -> list[TokenizerRequest]:
        """Every model's options, sampler and view of the task resolve before any model
        trains, so a typo in the last entry, or a tokenizer that cannot load, is reported at
        once, not after the first model's training. Returns each entry's tokenizer request."""
        requests = []
        for entry in self.config.models:
            try:
                build_model_config(entry, self.config.preset, self.registry)
                build_sampler(entry, self.registry, views.default.spec.prefix_len > 0)
                if entry.weights is not None:  # a bad name: now (offline and not downloaded: TaskViews said)
                    resolve_weights(entry.weights, self.registry.model(entry.name))
                request = views.request(entry)
            except (ConfigError, HubUnavailableError):
                raise
            except Exception:  # noqa: BLE001 - a broken plugin fails its own cells later
                request = TokenizerRequest()
            views.get(request, f"model {entry.name!r}")  # loaded now: a hub failure stops the run here
            requests.append(request)
        return requests

    def identity(self, model: str, model_hash: str, sampler: str, settings: dict, steps: int, seed: int) -> CellIdentity:
        return CellIdentity(run=self.config.name, model=model, model_hash=model_hash, sampler=sampler,
                            sampler_settings=settings, steps=steps, task=self.config.task, seed=seed,
                            budget_hash=self.config.budget_hash())

    def base_fields(self, data: TaskData, request: TokenizerRequest) -> dict:
        """The fields every cell record of this run shares (those of one view of the task)."""
        return {
            "run": self.config.name, "task": self.config.task, "task_fingerprint": data.fingerprint(),
            "text_fingerprint": data.text_identity(), "tokenizer": None if request.is_default else request,
            "budget": self.config.budget, "budget_hash": self.config.budget_hash(),
            "device": describe_device(self.device), "versions": versions(self.plugin_versions),
            "git_revision": git_revision(),
        }

    def finished(self, cid: str, metrics: list[Metric], data: TaskData) -> CellRecord | None:
        """The finished record of ``cid``, scored for any metric it lacks; None if not done."""
        record = self.store.read(cid)
        if record is None or not record.ok:
            return None
        try:
            return score_missing(self.store, record, metrics, data)
        except StoredSamplesError as exc:  # damaged samples: sample the cell again
            self.echo(f"{exc}; sampling it again")
            return None
        except Exception as exc:  # noqa: BLE001 - a raising new metric leaves the finished cell as it was
            self.echo(f"cell {cid}: {exc}; the cell keeps its earlier scores")
            return record

    def reference_cell(self, data: TaskData, metrics: list[Metric], request: TokenizerRequest) -> CellRecord:
        """Score held-out data with the same metrics: the row every model is read against
        (one per tokenizer the run's models read the task through). A raising metric fails
        this row, recorded, and the run goes on."""
        b = self.config.budget
        cid = self.identity("data", data.fingerprint(), "held-out", {}, 0, b.data_seed).cell_id
        label = "data (held-out)" if request.is_default else f"data (held-out, {data.tokenizer_name})"
        common = {**self.base_fields(data, request), "model": "data", "label": label, "sampler": "held-out"}
        try:
            if (done := self.finished(cid, metrics, data)) is not None:
                return done
            record = CellRecord(**common, cell_id=cid, status="ok", steps=0, nfe=0.0, seed=b.data_seed,
                                num_samples=int(data.valid[: b.num_samples].shape[0]), wall_time_s=0.0)
            scores = score_all(metrics, stored_generation(self.store, record, data), data)
            return self.written(record.model_copy(update={"metrics": scores}))
        except Exception as exc:  # noqa: BLE001 - a plugin's metric fails only its own cells
            return self.fail(common, 0, b.data_seed, cid, exc)

    def run_model(self, entry: ModelEntry, data: TaskData, metrics: list[Metric],
                  request: TokenizerRequest) -> list[CellRecord]:
        """Every cell of ``entry``: for each training seed of the budget, one trained model
        (released weights: the one model they are)."""
        seeds = [None] if entry.weights is not None else self.config.budget.training_seeds
        return [r for seed in seeds for r in self.run_trained(entry, data, metrics, request, seed)]

    def run_trained(self, entry: ModelEntry, data: TaskData, metrics: list[Metric], request: TokenizerRequest,
                    train_seed: int | None) -> list[CellRecord]:
        """The cells of one model: ``entry`` trained from ``train_seed``, or its released weights."""
        cfg, b = self.config, self.config.budget
        released: WeightsSource | None = None
        try:
            torch.manual_seed(b.train_seed if train_seed is None else train_seed)  # not what ran before
            if entry.weights is not None:
                self.echo(f"[{entry.name}] loading weights {entry.weights}; not training")
                model, released = load_released(entry, self.registry.model(entry.name), data.spec, self.ctx.cache)
            else:
                model = build_model(entry, cfg.preset, self.registry, data)
            sampler = build_sampler(entry, self.registry, data.spec.prefix_len > 0)
        except (ConfigError, HubUnavailableError):
            raise  # a configuration error stops the run: nothing would be comparable
        except Exception as exc:  # noqa: BLE001 - a plugin that cannot even build fails its cells
            return self.fail_unbuildable(entry, data, request, exc)
        if released:
            digest = setup = released.sha256[:16]
        else:  # the setup: the same model trained from seed 0 (a row pools its training seeds)
            digest, setup = (self.checkpoint_slot(model, data, s).digest for s in (train_seed, 0))
        label = entry.label or default_label(entry, sampler.name)
        settings = sampler.config.model_dump(mode="json")
        cells = [(steps, seed, self.identity(entry.name, digest, sampler.name, settings, steps, seed).cell_id)
                 for steps in b.steps for seed in b.seeds]
        done = {c: self.finished(c[2], metrics, data) for c in cells} if self.world.is_main else {}
        todo = distributed.gather_objects([c for c in cells if done.get(c) is None])[0]
        records = [r for r in done.values() if r is not None]
        trained = "" if train_seed is None or len(b.training_seeds) == 1 else f" (training seed {train_seed})"
        if not todo:
            self.echo(f"[{entry.name}]{trained} all {len(cells)} cells finished already; skipping")
            return records
        common = {
            **self.base_fields(data, request), "precision": cfg.precision, "compile": cfg.compile, "model": entry.name,
            "label": label, "model_config": model.config.model_dump(mode="json"), "checkpoint_hash": digest,
            "setup_hash": setup, "train_seed": train_seed, "sampler": sampler.name, "sampler_settings": settings,
            "train_tokens": None if released else self.train_steps(data) * b.batch_size * b.seq_len,
        }
        try:
            model = (self.evaluate_released(model, data, released) if released
                     else self.obtain(model, data, train_seed))
        except Exception as exc:  # noqa: BLE001 - a broken plugin fails only its own cells
            return records + [self.fail(common, steps, seed, cid, exc) for steps, seed, cid in todo]
        for steps, seed, cid in todo:
            try:
                cell = self.run_cell(common, model, sampler, data, metrics, steps, seed, cid)
            except Exception as exc:  # noqa: BLE001
                cell = self.fail(common, steps, seed, cid, exc)
            if cell is not None:
                records.append(cell)
        return records

    def fail_unbuildable(self, entry: ModelEntry, data: TaskData, request: TokenizerRequest,
                         exc: BaseException) -> list[CellRecord]:
        sampler = entry.sampler or "default"
        common = {**self.base_fields(data, request), "precision": self.config.precision, "compile": self.config.compile,
                  "model": entry.name, "label": entry.label or entry.name, "sampler": sampler,
                  "sampler_settings": entry.sampler_options}
        entry_hash = stable_hash(entry.model_dump(mode="json"))
        return [self.fail(common, steps, seed,
                          self.identity(entry.name, entry_hash, sampler, entry.sampler_options, steps, seed).cell_id, exc)
                for steps in self.config.budget.steps for seed in self.config.budget.seeds]

    def written(self, record: CellRecord) -> CellRecord:
        """Store ``record`` (rank 0) and tell ``on_cell``."""
        if self.world.is_main:
            self.store.write_cell(record)
            if self.on_cell is not None:
                self.on_cell(record)
        return record

    def fail(self, common: dict, steps: int, seed: int, cid: str, exc: BaseException) -> CellRecord:
        text = str(exc) if isinstance(exc, CheckpointError) else \
            "".join(traceback.format_exception_only(type(exc), exc)).strip()
        self.echo(f"[{common['model']}] cell steps={steps} seed={seed} FAILED: {text}")
        return self.written(CellRecord(**common, cell_id=cid, status="error", error=text,
                                       traceback=traceback.format_exc(), steps=steps, seed=seed))

    def run_cell(self, common: dict, model: Model, sampler: Sampler, data: TaskData, metrics: list[Metric],
                 steps: int, seed: int, cid: str) -> CellRecord | None:
        b = self.config.budget
        prefixes = data.eval_prefixes[: b.num_samples] if data.eval_prefixes is not None else None
        bar = tqdm(total=b.num_samples, desc=f"{common['label']} steps={steps} seed={seed}",
                   disable=not self.progress, leave=False)
        run = generate(model, sampler, steps, b.num_samples, seed, prefixes, b.sample_batch_size, bar.update,
                       precision=self.config.precision)
        bar.close()
        if not self.world.is_main:
            return None
        generation = to_generation(run.ids, data.tokenizer, data.spec.prefix_len, data)
        t0 = time.perf_counter()
        scores = score_all(metrics, generation, data)
        score_time = time.perf_counter() - t0
        self.store.write_samples(cid, [
            {"i": i, "text": text, "ids": row.tolist()} for i, (text, row) in enumerate(zip(generation.texts, run.ids))
        ])
        record = CellRecord(
            **common, cell_id=cid, status="ok", steps=steps, seed=seed, nfe=run.nfe, nfe_calls=run.calls,
            max_nfe=sampler.max_nfe(steps, model.spec), num_samples=b.num_samples, metrics=scores,
            wall_time_s=run.seconds, score_time_s=score_time,
        )
        self.written(record)
        self.echo(f"[{common['label']}] steps={steps} seed={seed} nfe={run.nfe:g} {run.seconds:.1f}s: "
                  f"{record.metrics_summary()}")
        return record
