"""A minimal plugin used by the core tests: a toy model, sampler, task and metric.

It is registered through the same hooks as real plugins (``extra=[toyplugin]``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

import dlmbench
from dlmbench.categorical import sample_from_logits
from dlmbench.data import DataSpec
from dlmbench.metric import MetricValue
from dlmbench.prefix import initial_ids
from dlmbench.released import ReleasedWeights
from dlmbench.task import TaskData
from dlmbench.tokenizer import TextTokenizer

WORDS = [f"w{i}" for i in range(12)]


class ToyConfig(dlmbench.ModelConfig):
    presets: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"hidden": 16}}
    hidden: int = 16
    lr: float = 1e-2
    fail_in: str | None = None  # "build", "loss" or "sample": raise there; "ids": return ids past the vocabulary
    prepare_tokens: int = 0  # > 0: Model.prepare freezes the position table and reports these tokens


class ToyNet(torch.nn.Module):
    def __init__(self, vocab: int, length: int, hidden: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.pos = torch.nn.Parameter(torch.randn(length, hidden) * 0.1)
        self.out = torch.nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos
        return self.out(h + h.mean(1, keepdim=True))


class ToyModel(dlmbench.Model):
    name = "toy"
    Config = ToyConfig
    default_sampler = "reveal"
    released_weights: ClassVar[dict[str, ReleasedWeights]] = {
        "toy-v1": ReleasedWeights(hub="toy-org/toy-v1", trained_on="1,280 toy tokens", reference="toyplugin")}

    @classmethod
    def load_weights(cls, source, spec, options, cache, preset=None):
        """A directory with the network's ``model.safetensors``."""
        from safetensors.torch import load_file

        model = cls(ToyConfig(**options), spec)
        model.net.load_state_dict(load_file(str(Path(source) / "model.safetensors")))
        return model

    def __init__(self, config: ToyConfig, spec: DataSpec):
        if config.fail_in == "build":
            raise RuntimeError("toy: failing on purpose in build")
        super().__init__(config, spec)
        self.net = ToyNet(spec.vocab_size, spec.seq_len, config.hidden)

    @property
    def network(self):
        return self.net

    def prepare(self, train, seed):
        if not self.config.prepare_tokens:
            return {}
        with torch.no_grad():
            self.net.pos.zero_()
        self.net.pos.requires_grad_(False)  # before the optimiser and EMA are built: never updated
        return {"what": "toy preparation", "tokens": self.config.prepare_tokens, "rows_seen": train.shape[0]}

    def loss(self, batch):
        if self.config.fail_in == "loss":
            raise RuntimeError("toy: failing on purpose in loss")
        x = batch.tokens
        masked = torch.rand(x.shape) < 0.5
        masked[:, : self.spec.prefix_len] = False
        logits = self.net(torch.where(masked, self.spec.mask_id, x))
        ce = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")
        return (ce * masked).sum() / masked.sum().clamp_min(1)

    def nelbo(self, batch):
        return torch.full((batch.tokens.shape[0],), 1.0)


class RevealConfig(dlmbench.SamplerConfig):
    cfg_passes: int = 1  # 2 mimics classifier-free guidance batched into one call
    delay: float = 0.0  # seconds to sleep per step (crash tests need slow cells)


class Reveal(dlmbench.Sampler):
    """One network call per step; reveals positions left to right in ``steps`` chunks."""

    name = "reveal"
    model = "toy"
    Config = RevealConfig

    def sample(self, model, request):
        if model.config.fail_in == "sample":
            raise RuntimeError("toy: failing on purpose in sample")
        spec = model.spec
        x = initial_ids(spec, request, spec.mask_id, "cpu")
        todo = list(range(spec.prefix_len, spec.seq_len))
        chunks = [todo[i :: request.steps] for i in range(request.steps)]
        for chunk in chunks:
            time.sleep(self.config.delay)
            inp = x.repeat(self.config.cfg_passes, 1)
            logits = model.network(inp)[: request.num_samples]
            logits[..., spec.mask_id] = float("-inf")
            draw = sample_from_logits(logits, request.generator)
            x[:, chunk] = draw[:, chunk]
        if model.config.fail_in == "ids":
            x[0, -1] = spec.vocab_size + 3
        return x

    def max_nfe(self, steps, spec=None):
        return steps * self.config.cfg_passes


class ToyTaskConfig(dlmbench.TaskConfig):
    rows: int = 256


class ToyTask(dlmbench.Task):
    """Sequences ``w0 w1 ... wk EOS...``: a deterministic pattern a model can learn."""

    name = "toy-count"
    Config = ToyTaskConfig
    default_metrics = ("starts-right",)

    def load(self, seq_len, num_eval, seed, context=None):
        tok = TextTokenizer.word_level(WORDS)
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(2, seq_len, (self.config.rows,), generator=g)
        rows = []
        for n in lengths.tolist():
            words = [f"w{i % len(WORDS)}" for i in range(n)]
            ids = tok.encode(" ".join(words)) + [tok.eos_id] * (seq_len - n)
            rows.append(ids)
        data = torch.tensor(rows, dtype=torch.long)
        spec = DataSpec(tok.vocab_size, seq_len, tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id)
        split = int(0.9 * len(rows))
        return TaskData("toy-count", spec, tok, data[:split], data[split:])


class StartsRight(dlmbench.Metric):
    name = "starts-right"
    higher_is_better = True
    description = "fraction of samples whose first word is w0"

    def compute(self, generation, task):
        return MetricValue.mean_of([float(task.tokenizer.decode(t[:1]) == "w0") for t in generation.tokens])


@dlmbench.hookimpl
def register_models(register):
    register(ToyModel)


@dlmbench.hookimpl
def register_samplers(register):
    register(Reveal)


@dlmbench.hookimpl
def register_tasks(register):
    register(ToyTask)


@dlmbench.hookimpl
def register_metrics(register):
    register(StartsRight)
