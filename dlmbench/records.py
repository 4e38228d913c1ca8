"""The stored records, typed: what a run directory holds, validated when written and read.

Like lm-eval-harness's ``result_schema.py``, this module *is* the results schema: the
README's "Results schema" section is tested against these models. Every record carries
``schema`` (:data:`SCHEMA_VERSION`). The JSON on disk is strict (RFC 8259): an undefined
number is ``null``, and a metric whose value is undefined says why in ``undefined``.

Schema history: 1, cell ids hashed the metric names too (adding a metric re-sampled
every cell); 2, cell ids hash only what made the samples (:class:`CellIdentity`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dlmbench.config import Budget, stable_hash
from dlmbench.released import WeightsSource
from dlmbench.tokenizer import TokenizerRequest

SCHEMA_VERSION = 2


def now() -> str:
    """A UTC timestamp, as every record's ``created`` holds it."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class _Record(BaseModel):
    # ``model_config``/``model_*`` are field names here, not pydantic's namespace
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)

    def to_json(self) -> str:
        """Strict JSON (no NaN/Infinity), keys sorted, as stored on disk."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=False)
        return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False)


def _finite(value: Any) -> Any:
    """NaN and infinities become None (stored as ``null``), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class MetricResult(_Record):
    """One metric's result in one cell; ``config`` holds every setting that changes it."""

    value: float | None = Field(description="the headline number; null when undefined")
    stderr: float | None = Field(None, description="standard error over samples, when a mean")
    higher_is_better: bool = Field(description="the better direction (tables mark it with an arrow)")
    config: dict[str, Any] = Field(default_factory=dict, description="the metric's resolved settings")
    details: dict[str, Any] = Field(default_factory=dict, description="counts, signatures, protocol facts")
    undefined: str | None = Field(None, description="why value is null")
    n: int | None = Field(None, description="the number of samples the value rests on")
    protocol: str = Field("dlmbench", description="the evaluation protocol that chose its settings")

    @model_validator(mode="before")
    @classmethod
    def _undefined_values(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if data.get("n") is None and isinstance((data.get("details") or {}).get("n"), int):
                data = {**data, "n": data["details"]["n"]}  # records written before the field
            value = data.get("value")
            if isinstance(value, float) and not math.isfinite(value):
                n = (data.get("details") or {}).get("n")
                reason = "nothing to average (n=0)" if n == 0 else f"not a finite number ({value})"
                data = {**data, "value": None, "undefined": data.get("undefined") or reason}
            data = {**data, "stderr": _finite(data.get("stderr")), "details": _finite(data.get("details") or {})}
        return data


class CellIdentity(_Record):
    """Everything that made a cell's samples; its hash names the cell. Metric names are
    not part of it, so scoring stored samples with another metric never re-samples."""

    run: str
    model: str
    model_hash: str = Field(description="checkpoint hash (held-out data: the task fingerprint)")
    sampler: str
    sampler_settings: dict[str, Any]
    steps: int
    task: str
    seed: int
    budget_hash: str

    @property
    def cell_id(self) -> str:
        readable = f"{self.model}-{self.sampler}-steps{self.steps}-seed{self.seed}"
        return f"{readable}-{stable_hash(self.model_dump(mode='json'), n=10)}"


class CellRecord(_Record):
    """One ``model x sampler x steps x seed`` cell (or the held-out data row)."""

    schema_version: int = Field(SCHEMA_VERSION, alias="schema", description="record schema version")
    cell_id: str = Field(description="hash of the cell identity (see CellIdentity)")
    status: Literal["ok", "error"] = Field(description="'ok' or 'error'")
    error: str | None = Field(None, description="the exception text when status is 'error'")
    traceback: str | None = Field(None, description="the traceback when status is 'error'")
    run: str = Field(description="run name")
    model: str = Field(description="model name ('data' for the held-out data row)")
    label: str = Field(description="row name in tables")
    model_config_: dict[str, Any] | None = Field(None, alias="model_config", description="the model's resolved options")
    checkpoint_hash: str | None = Field(None, description="hash stamped into the checkpoint the samples came from")
    setup_hash: str | None = Field(
        None, description="the checkpoint hash of the same setup trained from seed 0: a row pools its training seeds")
    train_seed: int | None = Field(None, description="the training seed of its model (null: released weights or "
                                                     "a record from before the field)")
    sampler: str = Field(description="sampler name")
    sampler_settings: dict[str, Any] = Field(default_factory=dict, description="the sampler's resolved settings")
    steps: int = Field(description="sampling step budget")
    nfe: float | None = Field(None, description="measured function evaluations per sample (core-counted)")
    nfe_calls: int | None = Field(None, description="forward calls of the network in the cell")
    max_nfe: float | None = Field(None, description="the sampler's declared bound for these steps")
    task: str = Field(description="task name (with argument)")
    task_fingerprint: str = Field(description="hash of the tokenized data")
    text_fingerprint: str | None = Field(
        None, description="hash of the task's text, the same through every tokenizer (tables group by it)")
    tokenizer: TokenizerRequest | None = Field(
        None, description="the tokenizer the model asked for; null: the task's own")
    seed: int = Field(description="sampling seed")
    num_samples: int | None = Field(None, description="samples scored")
    metrics: dict[str, MetricResult] = Field(default_factory=dict, description="{name: MetricResult}")
    budget: Budget = Field(description="the run's shared budget")
    budget_hash: str = Field(description="hash of the budget (tables group by it)")
    train_tokens: int | None = Field(None, description="tokens the model was trained on (batch x seq_len x steps)")
    wall_time_s: float | None = Field(None, description="sampling wall time of the cell")
    score_time_s: float | None = Field(None, description="scoring wall time of the cell")
    device: str = Field(description="device the cell ran on")
    precision: Literal["fp32", "bf16"] | None = Field(None, description="'fp32' or 'bf16' (model cells)")
    compile: bool | None = Field(None, description="whether the network's blocks ran under torch.compile")
    versions: dict[str, str] = Field(description="python, torch, dlmbench and plugin versions")
    git_revision: str | None = Field(None, description="git revision of the working tree, if any")
    created: str = Field(default_factory=now, description="UTC timestamp")

    @field_validator("nfe", "wall_time_s", "score_time_s", mode="before")
    @classmethod
    def _finite_number(cls, value: Any) -> Any:
        return _finite(value)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def is_reference(self) -> bool:
        """The held-out data row every model is read against."""
        return self.model == "data"

    def metrics_summary(self) -> str:
        """``name=value, ...`` in one line, for logs and the run's summary table."""
        return ", ".join(f"{k}={v.value:.4g}" if v.value is not None else f"{k}=undefined"
                         for k, v in self.metrics.items())


class LikelihoodBound(_Record):
    nelbo_per_token: float | None
    ppl_bound: float | None
    rows: int
    nelbo_per_byte: float | None = None  # nats per UTF-8 byte of the scored text: tokenizer-neutral


class ModelRecord(_Record):
    """What training one checkpoint did, stored beside the checkpoint and in each run
    that samples from it."""

    schema_version: int = Field(SCHEMA_VERSION, alias="schema", description="record schema version")
    model: str = Field(description="model name")
    checkpoint_hash: str = Field(description="hash of the checkpoint key (model config, data spec, training)")
    model_config_: dict[str, Any] = Field(alias="model_config", description="the model's resolved options")
    train_steps: int = Field(description="optimiser steps")
    train_tokens: int = Field(description="tokens trained on (batch x seq_len x steps)")
    tokenizer: str | None = Field(None, description="the tokenizer it read the task through (null: the task's "
                                                    "fixed vocabulary)")
    vocab_size: int | None = Field(None, description="rows of its vocabulary")
    bytes_per_position: float | None = Field(
        None, description="UTF-8 bytes of text per training position through its tokenizer")
    train_bytes: int | None = Field(None, description="training text read: train_tokens x bytes_per_position")
    train_seconds: float = Field(description="training wall time")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="training precision")
    compile: bool = Field(False, description="whether training ran under torch.compile")
    first_step_seconds: float | None = Field(None, description="the first optimiser step's time")
    median_step_seconds: float | None = Field(None, description="the median optimiser step's time")
    compile_seconds: float | None = Field(None, description="first minus median step time, with --compile")
    first_loss: float | None = Field(None, description="the first training loss")
    final_loss: float | None = Field(None, description="mean training loss of the last 50 steps")
    parameters: int = Field(description="trainable parameters")
    likelihood_bound: LikelihoodBound | None = Field(
        None, description="validation NELBO per token and its perplexity bound, if the model has one")
    prepared: dict[str, Any] | None = Field(None, description="what Model.prepare did before training")
    task: str = Field(description="task of the run this record belongs to")
    budget_hash: str = Field(description="budget of the run this record belongs to")
    device: str = Field(description="device trained on")
    threads: int | None = Field(None, description="torch CPU threads during training (float rounding depends on it)")
    train_seed: int | None = Field(None, description="the seed of its initial weights and training noise")
    torch_version: str | None = Field(None, description="the torch that trained it")
    created: str = Field(default_factory=now, description="UTC timestamp")
    reused_checkpoint: str | None = Field(None, description="the cached checkpoint a later run reused")
    weights: WeightsSource | None = Field(
        None, description="released weights evaluated without training (train_* are then 0)")
    checkpoint_sha256: str | None = Field(None, description="sha256 of the checkpoint file, checked when reused")

    @field_validator("first_loss", "final_loss", mode="before")
    @classmethod
    def _finite_loss(cls, value: Any) -> Any:
        return _finite(value)

    @classmethod
    def of_released(cls, model: Any, weights: WeightsSource, data: Any, bound: LikelihoodBound | None,
                    **facts: Any) -> "ModelRecord":
        """The record of released weights a run evaluates untrained (``facts``: the run's
        task, budget hash and device)."""
        import torch

        return cls(model=model.name, checkpoint_hash=weights.sha256[:16],
                   model_config=model.config.model_dump(mode="json"), train_steps=0, train_tokens=0,
                   train_seconds=0.0, weights=weights, tokenizer=data.info.get("tokenizer"),
                   vocab_size=data.spec.vocab_size, parameters=sum(p.numel() for p in model.parameters()),
                   likelihood_bound=bound, threads=torch.get_num_threads(), torch_version=torch.__version__,
                   **facts)


class RunRecord(_Record):
    """``run.json``: the resolved run config."""

    schema_version: int = Field(SCHEMA_VERSION, alias="schema")
    config: dict[str, Any]
    created: str = Field(default_factory=now)


def schema_markdown() -> str:
    """The README's "Results schema" section body, generated from these models (a test
    keeps the README equal to it)."""
    lines = [f"Schema version {SCHEMA_VERSION}. Every record is validated when written and when read; "
             "the JSON is strict (an undefined number is `null`)."]
    for title, model in (("`cells/<cell_id>.json` (`CellRecord`)", CellRecord),
                         ("`metrics.<name>` (`MetricResult`)", MetricResult),
                         ("`models/<model>-<hash>.json` (`ModelRecord`)", ModelRecord)):
        lines += ["", f"{title}:", ""]
        for name, info in model.model_fields.items():
            key = info.alias or name
            lines.append(f"- `{key}`" + (f": {info.description}" if info.description else ""))
    return "\n".join(lines) + "\n"
