"""The run context: where a run keeps its files, what it runs on, whether the hub may be
contacted, and which distributed world it is part of.

Built once, by the CLI (:func:`RunContext.create`) or by a Python caller, and passed to
tasks, metrics and the runner, so two runs in one process never share state through
module globals or environment variables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from dlmbench.distributed import World


@dataclass(frozen=True)
class RunContext:
    """Run state shared by every component of one run.

    ``cache`` is the root of everything a run may reuse: ``checkpoints/``, ``tasks/``
    (built task data), ``evaluators/`` (the offline proxy evaluator) and ``released/``
    (released weights converted to safetensors). ``offline``
    says the Hugging Face hub must not be contacted; ``offline_reason`` says why (shown
    in error messages). ``world`` is the ``torchrun`` world, a single process unless a
    command that trains or samples joined one. ``threads`` is torch's CPU thread count,
    set by :meth:`create` (None: left as the process has it).
    """

    cache: Path = Path(".dlmbench-cache")
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    offline: bool = False
    offline_reason: str | None = None
    world: World = field(default_factory=World)
    threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache", Path(self.cache).expanduser())

    @classmethod
    def create(cls, cache: str | Path = ".dlmbench-cache", device: str = "auto", offline: bool | None = None,
               offline_reason: str | None = None, world: World | None = None,
               threads: int | None = None) -> "RunContext":
        """A context for this process; ``offline=None`` asks
        :func:`dlmbench.environment.hub_offline` (the user's ``HF_*`` switches);
        ``threads`` sets torch's thread pools for the process (see :func:`use_threads`) and
        its allocator (:func:`keep_freed_memory`)."""
        from dlmbench.environment import hub_offline, keep_freed_memory, resolve_device, use_threads

        if offline is None:
            offline = hub_offline()
            offline_reason = offline_reason or ("HF_HUB_OFFLINE is set" if offline else None)
        reason = (offline_reason or "offline by request") if offline else None
        resolved = resolve_device(device)
        world = world or World()
        if resolved.type == "cuda" and world.size > 1:
            resolved = torch.device("cuda", torch.cuda.current_device())
        if threads is not None:
            use_threads(threads)
            keep_freed_memory()
        return cls(Path(cache), resolved, offline, reason, world, threads)

    @property
    def checkpoints(self) -> Path:
        return self.cache / "checkpoints"

    @property
    def tasks(self) -> Path:
        return self.cache / "tasks"

    @property
    def evaluators(self) -> Path:
        return self.cache / "evaluators"
