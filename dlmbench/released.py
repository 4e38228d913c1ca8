"""Released weights: the authors' checkpoints evaluated under the run's budget.

A model entry's ``weights`` names them, in one of three forms:

* ``released:NAME``: a checkpoint the model's plugin lists in ``Model.released_weights``
  (e.g. ``released:ELF-B-owt``), with the facts a table states about it;
  ``released:NAME@PATH`` reads it from a downloaded copy at PATH (an offline machine);
* ``hf:OWNER/REPO``: a Hugging Face repository the plugin's loader reads;
* a local path: a downloaded copy of either (what an offline machine passes).

Training is skipped; the sampling steps, the NFE count, the seeds, the tokenizer rule and
the evaluator stay the run's, so released rows compare with trained ones on everything
but training, and every table says who trained them on how much data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict, Field

from dlmbench.errors import ConfigError

if TYPE_CHECKING:
    from dlmbench.config import ModelEntry
    from dlmbench.data import DataSpec
    from dlmbench.model import Model

RELEASED, HUB = "released:", "hf:"


class ReleasedWeights(BaseModel):
    """What a plugin knows about one released checkpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hub: str = Field(description="Hugging Face repository")
    trained_on: str = Field(description="the authors' training data and amount, as their paper states it")
    distilled: bool = Field(False, description="a distilled (few-step) student")
    reference: str = Field("", description="where the facts come from (paper, section, table)")


class WeightsSource(BaseModel):
    """Which weights a row sampled from: stored in its model record."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: str = Field(description="the model entry's weights, as written")
    source: str = Field(description="the hub repository or local path the loader read")
    released: ReleasedWeights | None = Field(None, description="the plugin's facts about them, if it lists them")
    sha256: str = Field(description="sha256 of the loaded tensors (names, dtypes, shapes and values)")


def resolve_weights(weights: str, model: type[Model]) -> tuple[str, ReleasedWeights | None]:
    """The source ``model``'s loader reads for ``weights``, and what is known about it."""
    catalog = model.released_weights
    if weights.startswith(RELEASED):
        name, at, copy = weights[len(RELEASED):].partition("@")
        if name not in catalog:
            known = ", ".join(RELEASED + n for n in catalog) or "none"
            raise ConfigError(f"weights={weights!r}: model {model.name!r} lists no released checkpoint {name!r} "
                              f"(it lists: {known}); or give hf:OWNER/REPO or a local path")
        if at and not Path(copy).expanduser().exists():
            raise ConfigError(f"weights={weights!r}: {copy!r} does not exist; give the directory "
                              f"`hf download {catalog[name].hub} --local-dir DIR` wrote")
        return (str(Path(copy).expanduser()) if at else catalog[name].hub), catalog[name]
    facts = {c.hub: c for c in catalog.values()}
    if weights.startswith(HUB):
        repo = weights[len(HUB):]
        if repo.count("/") != 1:
            raise ConfigError(f"weights={weights!r}: write hf:OWNER/REPO, e.g. hf:kuleshov-group/mdlm-owt")
        return repo, facts.get(repo)
    path = Path(weights).expanduser()
    if not path.exists():
        raise ConfigError(f"weights={weights!r} is not a path that exists; give released:NAME, hf:OWNER/REPO "
                          f"or the path of a downloaded checkpoint")
    return str(path), None


def tensors_sha256(module: torch.nn.Module) -> str:
    """A digest of every tensor a model holds (what names its rows' cells)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def load_released(entry: ModelEntry, model: type[Model], spec: DataSpec, cache: Path) -> tuple[Model, WeightsSource]:
    """``entry``'s weights, loaded by its plugin for data laid out as ``spec`` (converted
    files kept under ``cache``), and where they came from."""
    source, facts = resolve_weights(str(entry.weights), model)
    loaded = model.load_weights(source, spec, dict(entry.options), cache, entry.preset)
    return loaded, WeightsSource(weights=str(entry.weights), source=source, released=facts,
                                 sha256=tensors_sha256(loaded))
