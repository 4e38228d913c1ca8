"""Typed run configuration: one budget object shared by every model in a run.

A run is ``models x step budgets x seeds`` on one task. The :class:`Budget` fixes
everything that must be identical across models for the comparison to be fair: sequence
length, sampling steps, number of samples, training tokens (``batch_size x seq_len x
train_steps``), seeds and the evaluator. Configs load from YAML or TOML and take
``--set a.b=value`` overrides; unknown keys and wrong types raise :class:`ConfigError`
naming the field, the value and a fix.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from dlmbench.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic would read true as 1
        raise ValueError(f"expected an integer, got the boolean {value}")
    return value


Int = Annotated[int, BeforeValidator(_not_a_bool)]


class Budget(_Strict):
    """The budget every model in a run shares."""

    seq_len: Int = Field(gt=1, description="tokens per sequence (prefix included)")
    steps: list[Int] = Field(min_length=1, description="sampling step budgets to evaluate")
    num_samples: Int = Field(gt=0, description="samples (or eval prompts) per cell")
    batch_size: Int = Field(gt=0, description="training sequences per optimiser step")
    train_tokens: Int = Field(gt=0, description="training tokens, counted as batch x seq_len x steps")
    train_bytes: Int | None = Field(
        None, gt=0, description="training text in UTF-8 bytes, replacing train_tokens: each model trains "
                                "the steps whose rows hold this much text through its own tokenizer")
    seeds: list[Int] = Field(min_length=1, description="sampling seeds; spread is reported over them")
    train_seed: Int = 0
    train_seeds: list[Int] | None = Field(
        None, min_length=1, description="one model trained per seed, replacing train_seed; the spread in tables "
                                        "is then over trained models x sampling seeds")
    data_seed: Int = 0
    evaluator: str = Field("oracle", description="the judge: 'oracle' (exact) or an LM name/path")
    sample_batch_size: Int = Field(256, gt=0, description="sampling micro-batch; seeds are drawn per micro-batch")

    @field_validator("steps")
    @classmethod
    def _positive_steps(cls, steps: list[int]) -> list[int]:
        bad = [s for s in steps if s <= 0]
        if bad:
            raise ValueError(f"every step budget must be >= 1, got {bad}; e.g. --steps 32,1024")
        return sorted(set(steps))

    @field_validator("seeds", "train_seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is None:
            return seeds
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:  # a repeated seed would count the same samples twice in the spread
            raise ValueError(f"seed(s) {repeated} appear more than once; list each seed once, e.g. --seeds 0,1,2")
        return seeds

    @property
    def training_seeds(self) -> list[int]:
        """The seeds a model of this budget is trained with, one model each."""
        return list(self.train_seeds) if self.train_seeds else [self.train_seed]

    def for_training(self, seed: int) -> "Budget":
        """This budget as one of its trained models sees it."""
        return self.model_copy(update={"train_seed": seed, "train_seeds": None})

    @property
    def unit(self) -> Literal["tokens", "bytes"]:
        """The unit the training budget is matched in across models."""
        return "tokens" if self.train_bytes is None else "bytes"

    @property
    def train_steps(self) -> int:
        """Optimiser steps that spend ``train_tokens`` (rounded up to whole batches); a
        bytes budget has no single count (:meth:`steps_for`)."""
        return self.steps_for(None)

    @property
    def counted_train_tokens(self) -> int:
        return self.train_steps * self.batch_size * self.seq_len

    def steps_for(self, bytes_per_position: float | None) -> int:
        """Optimiser steps of a model whose training rows hold ``bytes_per_position``
        bytes of text per position: ``train_tokens``'s, or those that read ``train_bytes``."""
        if self.train_bytes is None:
            return math.ceil(self.train_tokens / (self.batch_size * self.seq_len))
        if not bytes_per_position:
            raise ValueError("a bytes budget needs the data's bytes per position")
        return math.ceil(self.train_bytes / (bytes_per_position * self.batch_size * self.seq_len))

    def training_key(self, train_steps: int | None = None) -> dict[str, Any]:
        """The fields a trained checkpoint depends on (``train_steps``: this model's, for a
        bytes budget)."""
        steps = self.train_steps if train_steps is None else train_steps
        return {
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "train_tokens": steps * self.batch_size * self.seq_len,
            "train_seed": self.train_seed,
            "data_seed": self.data_seed,
        }

    def hashed(self) -> dict[str, Any]:
        """What the budget hash covers: every field (``train_bytes`` and ``train_seeds``
        only when set, so budgets keep the hashes they had before those fields existed)."""
        return self.model_dump(exclude={k for k in ("train_bytes", "train_seeds") if getattr(self, k) is None})


class ModelEntry(_Strict):
    """One model in a run, with its own options and sampler settings."""

    name: str
    preset: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    sampler: str | None = None
    sampler_options: dict[str, Any] = Field(default_factory=dict)
    label: str | None = Field(None, description="row name in tables (default: name/sampler)")
    tokenizer: str | None = Field(
        None, description="the tokenizer this model reads the task through: hub id, local directory or 'bpe' "
                          "(default: the model's own, else the task's)")
    weights: str | None = Field(
        None, description="evaluate these weights instead of training: released:NAME (see the plugin), "
                          "hf:OWNER/REPO or a local path")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class MetricEntry(_Strict):
    """One metric of a run with its options: ``bleu`` or ``{name: bleu, lowercase: true}``
    in YAML, ``bleu:lowercase=true`` on the command line. Options are the metric's
    ``Config`` fields, validated when the metric is built and recorded in every cell."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_short_forms(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_metric(value)
        if isinstance(value, dict) and "options" not in value:  # {name: bleu, lowercase: true}
            return {"name": value.get("name"), "options": {k: v for k, v in value.items() if k != "name"}}
        return value


def parse_metric(text: str) -> dict[str, Any]:
    """``bleu:lowercase=true:tokenize=13a`` -> ``{"name": "bleu", "options": {...}}``;
    option values are parsed as YAML scalars."""
    import yaml

    name, *items = text.strip().split(":")
    options: dict[str, Any] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"metric option {item!r} of {text!r}: write NAME:KEY=VALUE, e.g. bleu:lowercase=true")
        options[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return {"name": name.strip(), "options": options}


class RunConfig(_Strict):
    """Everything ``dlmbench run`` needs; ``preset`` fills what is left unset."""

    name: str = "default"
    preset: str = "tiny"
    models: list[ModelEntry] = Field(min_length=1)
    task: str = "grammar"
    task_options: dict[str, Any] = Field(default_factory=dict)
    metrics: list[MetricEntry] | None = Field(None, description="metrics with options (default: the task's)")
    protocol: str = Field("dlmbench", description="named metric settings: dlmbench, mdlm-duo or elf "
                                                  "(see dlmbench.protocol); the metrics' own options win")
    budget: Budget
    out: str | None = Field(None, description="results directory (default runs/<name>)")
    cache: str = Field(".dlmbench-cache", description="trained checkpoints are cached here")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: bfloat16 autocast for training and sampling (part of the checkpoint key)")
    compile: bool = Field(False, description="torch.compile the children of model.network (NFE still counted)")
    threads: int = Field(
        1, ge=1, description="torch's intra- and inter-op CPU threads; 1 by default: float reductions, "
                             "hence trained models and tables, follow the thread count")

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        import re

        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
            raise ValueError("use auto, cpu, cuda, cuda:N or mps, e.g. --device cpu")
        return device

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, name: str) -> str:
        from dlmbench.protocol import PROTOCOLS

        if name not in PROTOCOLS:
            raise ValueError(f"unknown protocol; use one of {', '.join(PROTOCOLS)}, e.g. --protocol elf")
        return name

    @field_validator("name")
    @classmethod
    def _safe_run_name(cls, name: str) -> str:
        from dlmbench.names import RULE, is_safe_name

        if not is_safe_name(name):  # it names runs/<name>/: never a path
            raise ValueError(f"the run name becomes a directory name: use {RULE}, e.g. --name my-run")
        return name

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.name}")

    def budget_hash(self) -> str:
        return stable_hash(self.budget.hashed())


def stable_hash(obj: Any, n: int = 12) -> str:
    """A short sha256 of canonical JSON (sorted keys) of ``obj``."""
    data = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()[:n]


# --- presets -------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    # The embedded default: offline, CPU, minutes. See README "Budgets".
    "tiny": {
        "task": "grammar",
        "budget": {
            "seq_len": 32,
            "steps": [32, 1024],
            "num_samples": 128,
            "batch_size": 64,
            "train_tokens": 64 * 32 * 1200,
            "seeds": [0, 1],
            "evaluator": "oracle",
        },
    },
    # Paper scale (MDLM, Sahoo et al. 2024, section 4.1 and Duo's OWT setup; ELF section 4). Not run in CI.
    "owt-small": {
        "task": "owt",
        "budget": {
            "seq_len": 1024,
            "steps": [32, 1024],
            "num_samples": 800,
            "batch_size": 512,
            "train_tokens": 512 * 1024 * 1_000_000,
            "seeds": [1],
            "evaluator": "gpt2-large",
            "sample_batch_size": 8,
        },
    },
    "wmt14-de-en": {
        "task": "wmt14-de-en",
        "budget": {
            "seq_len": 128,
            "steps": [64],
            "num_samples": 3003,
            "batch_size": 512,
            "train_tokens": 512 * 128 * 880_000,
            "seeds": [0],
            "evaluator": "sacrebleu",
            "sample_batch_size": 128,
        },
    },
    "xsum": {
        "task": "xsum",
        "budget": {
            "seq_len": 1088,
            "steps": [64],
            "num_samples": 11334,
            "batch_size": 512,
            "train_tokens": 512 * 1088 * 40_000,
            "seeds": [0],
            "evaluator": "rouge",
            "sample_batch_size": 32,
        },
    },
}

# Model presets each paper-scale run preset uses (the model plugin defines the sizes).
MODEL_PRESETS: dict[str, dict[str, str]] = {
    "tiny": {"*": "tiny"},
    "owt-small": {"elf": "B", "*": "small"},
    "wmt14-de-en": {"elf": "B", "*": "small"},
    "xsum": {"elf": "B", "*": "small"},
}


def model_preset(run_preset: str, model: str) -> str | None:
    table = MODEL_PRESETS.get(run_preset, {})
    return table.get(model, table.get("*"))


# --- loading and overrides ------------------------------------------------------------------


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) run config."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} does not exist; check the path")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    else:
        raise ConfigError(f"config file {str(path)!r}: use a .yaml, .yml or .toml file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields, got {type(data).__name__}")
    return data


def parse_override(text: str) -> dict[str, Any]:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}``; the value is parsed as YAML."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"--set {text!r}: write KEY=VALUE, e.g. --set budget.seq_len=64")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", "") or exc).splitlines()[0]
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({problem}); quote it or fix it, "
                          f"e.g. --set 'budget.steps=[8, 32]'") from None
    out: dict[str, Any] = value
    for part in reversed(key.strip().split(".")):
        out = {part: out}
    return out


def explain(exc: ValidationError, what: str = "config") -> ConfigError:
    """Turn a pydantic error into lines naming field, value and fix."""
    lines = [f"invalid {what}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            fix = "remove it or check its spelling (see `dlmbench validate-config --help`)"
        elif err["type"] == "missing":
            fix = "add it"
        else:
            fix = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc} = {value!r}: {fix}")
    return ConfigError("\n".join(lines))


def build_run_config(
    preset: str = "tiny",
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Preset <- config file <- CLI overrides, validated."""
    data: dict[str, Any] = {}
    if file is not None:
        data = read_config_file(file)
    preset = (overrides or {}).get("preset", data.get("preset", preset))
    if preset not in PRESETS:
        from dlmbench.registry import did_you_mean

        raise ConfigError(f"preset={preset!r} is unknown.{did_you_mean(preset, list(PRESETS))}")
    merged = deep_merge(PRESETS[preset], data)
    merged = deep_merge(merged, overrides or {})
    merged["preset"] = preset
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as exc:
        raise explain(exc) from None
