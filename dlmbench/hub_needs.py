"""Everything a run needs from the Hugging Face hub, listed before any work.

A paper-scale config reads a dataset, one or two tokenizers, a pretrained encoder,
released weights and an evaluator LM. Offline, loading them in turn would stop at the
first missing one, after the others were built, and the user would fetch one id per
attempt. :func:`check_hub_needs` instead lists every repository the config names that the
local cache lacks, each with the command that fetches it once, and raises before the
task is built. Each part names its own needs: the task (:meth:`dlmbench.Task.hub_needs`),
each model (:meth:`dlmbench.Model.hub_needs`, plus its tokenizer and ``weights``), and
the evaluator of every LM-judged metric.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from dlmbench.errors import ConfigError, HubUnavailableError

if TYPE_CHECKING:
    from dlmbench.config import RunConfig
    from dlmbench.context import RunContext
    from dlmbench.registry import Registry

#: what a Hugging Face repository id looks like: ``name`` or ``owner/name``
HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[\w.-]+)?")
_NOT_HUB = {"bpe", "oracle", "proxy"}


class HubNeed(BaseModel):
    """One hub repository a run reads, and what reads it (shown in the listing)."""

    model_config = ConfigDict(frozen=True)

    repo: str
    what: str
    kind: Literal["model", "dataset"] = "model"
    instead: str = ""  # another way to provide it, e.g. a local copy

    def fetch(self) -> str:
        """The command that puts it in the local cache."""
        return f"hf download {self.repo}" + (" --repo-type dataset" if self.kind == "dataset" else "")

    def cached(self) -> bool:
        """In the local Hugging Face cache (a hub snapshot, or a prepared ``datasets`` copy)."""
        try:
            import huggingface_hub

            huggingface_hub.snapshot_download(self.repo, repo_type=self.kind, local_files_only=True)
            return True
        except Exception:  # noqa: BLE001 - not cached (the exception type varies by version)
            pass
        if self.kind == "dataset":
            try:
                import datasets

                return (Path(datasets.config.HF_DATASETS_CACHE) / self.repo.replace("/", "___")).is_dir()
            except ImportError:
                return False
        return False


def hub_id(name: str | None) -> str | None:
    """``name`` when it names a hub repository, not a local path or a built-in choice."""
    if not name or name in _NOT_HUB or Path(name).expanduser().exists() or not HUB_ID.fullmatch(name):
        return None
    return name


def hub_needs(config: RunConfig, registry: Registry, weights: bool = True) -> list[HubNeed]:
    """Every hub repository ``config`` reads, once each (``weights``: with the models' weights)."""
    from dlmbench.build import build_model_config, metric_entries, tokenizer_request
    from dlmbench.released import RELEASED, resolve_weights

    task_cls, argument = registry.task(config.task)
    try:
        task = task_cls(task_cls.Config(**config.task_options), argument)
    except Exception:  # noqa: BLE001 - building the task reports a bad option, with its fix
        return []
    needs = list(task.hub_needs())
    for entry in config.models:
        cls = registry.model(entry.name)
        model_config = build_model_config(entry, config.preset, registry)
        request = tokenizer_request(entry, config.preset, registry)  # a fixed vocabulary refuses it
        if task_cls.reads_text and (repo := hub_id(request.name)):
            needs.append(HubNeed(repo=repo, what=f"model {entry.name}: tokenizer"))
        needs.extend(cls.hub_needs(model_config))
        if weights and entry.weights is not None:
            source, _ = resolve_weights(entry.weights, cls)
            if repo := hub_id(source):
                local = (f"released:{entry.weights[len(RELEASED):]}@DIR" if entry.weights.startswith(RELEASED)
                         else "DIR")
                needs.append(HubNeed(repo=repo, what=f"model {entry.name}: weights {entry.weights}",
                                     instead=f"`hf download {repo} --local-dir DIR` and give weights: {local}"))
    for metric in metric_entries(config, registry):
        cls = registry.metric(metric.name)
        if "evaluator" in cls.Config.model_fields:
            if repo := hub_id(metric.options.get("evaluator", config.budget.evaluator)):
                needs.append(HubNeed(repo=repo, what=f"metric {metric.name}: evaluator"))
    merged: dict[tuple[str, str], HubNeed] = {}
    for need in needs:  # one line per repository, naming everything that reads it
        key = (need.repo, need.kind)
        seen = merged.get(key)
        merged[key] = need if seen is None else seen.model_copy(update={"what": f"{seen.what}; {need.what}"})
    return list(merged.values())


def check_hub_needs(config: RunConfig, registry: Registry, context: RunContext, weights: bool = True) -> None:
    """Offline, raise :class:`HubUnavailableError` listing every needed repository the
    local cache lacks, with the commands that fetch them; online, do nothing (the loaders
    download what they need)."""
    if not context.offline:
        return
    try:
        missing = [n for n in hub_needs(config, registry, weights) if not n.cached()]
    except ConfigError:
        return  # a bad name or option: the part that reads it reports it, with its fix
    if not missing:
        return
    why = f"the hub is offline ({context.offline_reason or 'offline'})"
    if len(missing) == 1:  # one line
        n = missing[0]
        raise HubUnavailableError(
            f"{n.what}: hub repository {n.repo!r} is not in the local Hugging Face cache and {why}; fetch it once "
            f"while online: `{n.fetch()}`" + (f" (or {n.instead})" if n.instead else ""))
    width = max(len(n.fetch()) for n in missing)
    lines = "\n".join(f"  {n.fetch():<{width}}  # {n.what}" for n in missing)
    raise HubUnavailableError(
        f"this run needs {len(missing)} Hugging Face repositories that the local cache lacks, and {why}; fetch "
        f"them once while online, then run again:\n{lines}")
