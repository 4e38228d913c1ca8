"""The task (dataset) interface.

A task turns its config and the run's budget into :class:`TaskData`: tokenized
train/validation tensors of exactly ``seq_len`` tokens, the tokenizer, the evaluation
prompts of a conditional task, and whatever exact oracle its metrics need. A task that
reads text (``reads_text``) can encode it through the tokenizer a model asks for
(``load(..., tokenizer=request)``), so each model sees the same text through its own
vocabulary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, cast

import torch
from pydantic import BaseModel, ConfigDict

from dlmbench.context import RunContext
from dlmbench.data import DataSpec
from dlmbench.hub_needs import HubNeed
from dlmbench.tokenizer import TextTokenizer, TokenizerRequest

BYTES_ROWS = 10_000  # training rows bytes_per_position() measures


class TaskConfig(BaseModel):
    """Base of task settings; subclasses add fields (``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


ConfigT = TypeVar("ConfigT", bound=TaskConfig)


@dataclass
class TaskData:
    """A loaded task.

    ``train``/``valid`` are ``(N, spec.seq_len)`` int64. For conditional tasks
    ``eval_prefixes`` is ``(num_eval, spec.prefix_len)`` and ``references`` /
    ``sources`` hold the matching target and source strings. ``oracle`` is a
    task-specific object (e.g. the grammar) that exact metrics may use.
    ``text_fingerprint`` names the text itself, the same through every tokenizer (set by
    tasks that read text; None: the data fingerprint), so tables keep models that read
    one text through different tokenizers side by side.
    """

    name: str
    spec: DataSpec
    tokenizer: TextTokenizer
    train: torch.Tensor
    valid: torch.Tensor
    eval_prefixes: torch.Tensor | None = None
    references: list[str] | None = None
    sources: list[str] | None = None
    oracle: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    text_fingerprint: str | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)
    _bytes: tuple[float, int] | None = field(default=None, init=False, repr=False, compare=False)

    def fingerprint(self) -> str:
        """A short hash of the data itself, recorded with every result and part of every
        checkpoint key; computed once (loaded data are not changed afterwards), since
        hashing a paper-scale training split takes minutes."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for t in (self.train, self.valid):
                h.update(t.numpy().tobytes())
            h.update(self.tokenizer.to_str().encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    @property
    def tokenizer_name(self) -> str:
        """The tokenizer a text task read this view through (hub id, directory or ``bpe``)."""
        return str(self.info.get("tokenizer", "the task's vocabulary"))

    def text_identity(self) -> str:
        return self.text_fingerprint or self.fingerprint()

    def bytes_per_position(self) -> tuple[float, int]:
        """UTF-8 bytes of decoded text per training position (specials and padding count
        as positions and decode to nothing), over the first :data:`BYTES_ROWS` training
        rows, and how many rows that was: the rate that turns a model's training tokens
        into the text it read, the unit in which models of different tokenizers compare."""
        if self._bytes is None:
            rows = self.train[:BYTES_ROWS]
            texts = self.tokenizer.backend.decode_batch(rows.tolist(), skip_special_tokens=True)
            total = sum(len(t.encode("utf-8")) for t in texts)
            self._bytes = (total / max(rows.numel(), 1), int(rows.shape[0]))
        return self._bytes


class Task(Generic[ConfigT]):
    """Base class of every task plugin, generic over its config
    (``class KJVTask(CorpusTask[KJVConfig])``: ``self.config`` is a ``KJVConfig``).

    Class attributes a plugin sets:
      ``name``: the id used by ``--task`` (a task may accept an argument after a
      colon, e.g. ``text:PATH``; it receives it as ``argument``).
      ``Config``: its :class:`TaskConfig` subclass (the class its type argument names).
      ``conditional``: True for source -> target tasks.
      ``default_metrics``: metric names scored when a run names none.
      ``reads_text``: True when ``load`` accepts a model's ``tokenizer`` request (a task
      with a fixed vocabulary, like the grammar's words, keeps False).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[TaskConfig]] = TaskConfig
    conditional: ClassVar[bool] = False
    default_metrics: ClassVar[tuple[str, ...]] = ()
    reads_text: ClassVar[bool] = False
    config: ConfigT

    def __init__(self, config: ConfigT | None = None, argument: str | None = None):
        self.config = config if config is not None else cast(ConfigT, self.Config())
        self.argument = argument

    def hub_needs(self) -> list[HubNeed]:
        """The Hugging Face repositories ``load`` reads under this config (its dataset and
        tokenizer), so an offline run can list every missing one before any work
        (:mod:`dlmbench.hub_needs`). Default: none."""
        return []

    def load(self, seq_len: int, num_eval: int, seed: int, context: RunContext | None = None,
             tokenizer: TokenizerRequest | None = None) -> TaskData:
        """Build the data for sequences of ``seq_len`` tokens.

        ``num_eval`` is the number of evaluation prompts a conditional task must
        provide; ``seed`` fixes any generation or shuffling. ``context`` says where built
        data may be cached (``context.tasks``) and whether the Hugging Face hub may be
        contacted (``context.offline``); None means :func:`task_context`'s default.
        ``tokenizer`` (only passed to tasks that set ``reads_text``) is the tokenizer a
        model asked for; None: the task's own.
        """
        raise NotImplementedError


def task_context(context: RunContext | None) -> RunContext:
    """The context a task loads under: the caller's, else this process's
    ``RunContext.create(device="cpu")``: the cache ``.dlmbench-cache`` in the working
    directory, and offline exactly when the user's ``HF_*`` switches say so. That default
    is cheap: it probes no network and initialises no accelerator (tasks need neither).
    """
    return context if context is not None else RunContext.create(device="cpu")
