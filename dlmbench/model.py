"""The model interface: what every diffusion LM needs, and no more.

A model is a ``torch.nn.Module`` built from ``(config, spec)``. It provides a training
loss, optionally a likelihood bound, and names its ``network``: the module whose
forward call is one function evaluation (NFE). Sampling lives in separate
:class:`dlmbench.Sampler` classes; training, EMA, checkpoints and NFE counting live in
the core so that they are identical for every model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from dlmbench.data import Batch, DataSpec
from dlmbench.hub_needs import HubNeed
from dlmbench.released import ReleasedWeights
from dlmbench.tokenizer import TokenizerRequest


class ModelConfig(BaseModel):
    """Base options every model shares: the optimiser recipe of its reference.

    Subclasses add architecture fields and set their reference defaults. ``presets``
    maps a preset name (``tiny``, ``small``...) to field overrides; unknown keys are
    errors (``extra="forbid"``) so a typo never silently falls back to a default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    optimizer: str = "adamw"
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    ema_warmup: bool = Field(True, description=(
        "warm the decay up as min(decay, (1+n)/(10+n)), MDLM/Duo's rule; "
        "False: the fixed decay from the first update, ELF's"))

    @classmethod
    def from_preset(cls, preset: str | None = None, **overrides: Any) -> "ModelConfig":
        """Build a config from a named preset plus explicit overrides."""
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in cls.presets:
                from dlmbench.errors import ConfigError

                known = ", ".join(sorted(cls.presets)) or "none"
                raise ConfigError(
                    f"preset={preset!r} is not defined for {cls.__name__}; known presets: {known}"
                )
            values.update(cls.presets[preset])
        values.update(overrides)
        return cls(**values)


class Model(torch.nn.Module):
    """Base class of every dlmbench model plugin.

    Class attributes a plugin sets:
      ``name``: the id used on the command line (``--models NAME``).
      ``Config``: its :class:`ModelConfig` subclass.
      ``default_sampler``: the sampler name used when a run names none.
      ``default_conditional_sampler``: the same on conditional tasks, when it differs
      (ELF: ``ode``, the reference's setting for translation and summarization).
      ``released_weights``: the authors' checkpoints a model entry may name as
      ``weights: released:NAME`` (loaded by :meth:`load_weights`).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    default_sampler: ClassVar[str] = ""
    default_conditional_sampler: ClassVar[str | None] = None
    released_weights: ClassVar[dict[str, ReleasedWeights]] = {}

    @classmethod
    def load_weights(cls, source: str, spec: DataSpec, options: dict[str, Any], cache: Path,
                     preset: str | None = None) -> "Model":
        """A model holding the weights at ``source`` (a hub repository or a local path,
        see :mod:`dlmbench.released`) for data laid out as ``spec``; ``options`` and
        ``preset`` are the model entry's (for a checkpoint whose size its shapes do not
        tell); ``cache`` is a directory the loader may keep converted files in. The run
        evaluates it without training. Default: no loader."""
        from dlmbench.errors import ConfigError

        raise ConfigError(f"model {cls.name!r} has no loader of released weights; remove the entry's weights")

    @classmethod
    def tokenizer_request(cls, config: ModelConfig) -> TokenizerRequest:
        """The tokenizer this model reads the task through (default: the task's own, with
        a mask id). A model whose weights assume a vocabulary names it, e.g. ELF with a
        pretrained T5 encoder asks for that T5's tokenizer and no mask; a model entry's
        ``tokenizer`` overrides the name."""
        return TokenizerRequest()

    @classmethod
    def hub_needs(cls, config: ModelConfig) -> list[HubNeed]:
        """Hugging Face repositories this config loads besides its tokenizer and
        ``weights`` (which the core knows), so an offline run lists every missing one
        before any work (:mod:`dlmbench.hub_needs`); ELF names its pretrained T5.
        Default: none."""
        return []

    def __init__(self, config: ModelConfig, spec: DataSpec):
        super().__init__()
        self.config = config
        self.spec = spec

    @property
    def network(self) -> torch.nn.Module:
        """The module whose forward call counts as one NFE per sequence it processes.

        The core hooks this module's forward; a sampler that batches a conditional and
        an unconditional pass together is therefore counted twice, honestly.
        """
        return self

    def loss(self, batch: Batch) -> torch.Tensor:
        """Scalar training loss on ``batch`` (differentiable)."""
        raise NotImplementedError

    def nelbo(self, batch: Batch) -> torch.Tensor | None:
        """Per-sequence upper bound on ``-log p(x)`` in nats, shape ``(B,)``.

        Models without a likelihood bound return None (the default).
        """
        return None

    def prepare(self, train: torch.Tensor, seed: int) -> dict[str, Any]:
        """Called once by the training loop, before the optimiser is built, with every
        training row ``(N, L)`` and the training seed (default: nothing, ``{}``).

        For work a model does on the data before its own training, such as ELF
        pretraining its encoder from scratch. It must be deterministic given ``seed``
        (draw from its own ``torch.Generator``): every process of a distributed run calls
        it. The returned facts go into the model record under ``prepared`` and the
        leaderboard notes them; by convention ``tokens`` counts the training tokens this
        consumed *outside* the run's ``train_tokens`` budget, so tables can show it.
        """
        return {}

    def on_fit_start(self, total_steps: int) -> None:
        """Called once by the training loop before the first step (default: nothing).

        Lets a model adapt to the run's length, e.g. Duo's curriculum, which spans a
        fraction of training.
        """

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimiser updates (a frozen encoder is left out)."""
        return [p for p in self.parameters() if p.requires_grad]
