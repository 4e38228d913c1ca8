"""``dlmbench new-plugin NAME``: an installable model plugin that passes the kit.

The generated model is deliberately small but real (a one-layer masked denoiser with an
iterative unmasking sampler), so the scaffold doubles as the plugin tutorial in the
README: replace ``model.py`` and ``sampler.py`` with your method and keep the tests.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from dlmbench.errors import ConfigError

PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "dlmbench-$name"
version = "0.1.0"
description = "A dlmbench model plugin: $name"
requires-python = ">=3.10"
dependencies = ["dlmbench"]

[project.entry-points.dlmbench]
$name = "dlmbench_$module.plugin"

[tool.setuptools]
packages = ["dlmbench_$module"]
"""

PLUGIN = '''\
"""Registers the $name model and its sampler with dlmbench (entry point group `dlmbench`)."""

import dlmbench

from dlmbench_$module.model import $Class
from dlmbench_$module.sampler import Unmask


@dlmbench.hookimpl
def register_models(register):
    register($Class)


@dlmbench.hookimpl
def register_samplers(register):
    register(Unmask)
'''

MODEL = '''\
"""$Class: a one-layer masked denoiser. Replace with your model.

dlmbench gives the model a DataSpec (vocabulary, length, special ids, prefix length) and
asks for a training loss; the core trains it, counts its NFE and checkpoints it.
"""

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

import dlmbench


class ${Class}Config(dlmbench.ModelConfig):
    presets: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"hidden": 64}}
    hidden: int = 64
    heads: int = 4
    lr: float = 1e-3


class Network(torch.nn.Module):
    """tokens (B, L) -> logits (B, L, V). Its forward is what the core counts as one NFE."""

    def __init__(self, vocab: int, length: int, hidden: int, heads: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.position = torch.nn.Parameter(torch.zeros(length, hidden))
        self.layer = torch.nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout=0.0, batch_first=True)
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.embed(tokens) + self.position))


class $Class(dlmbench.Model):
    name = "$name"
    Config = ${Class}Config
    default_sampler = "unmask"

    def __init__(self, config: ${Class}Config, spec: dlmbench.DataSpec):
        super().__init__(config, spec)
        self.net = Network(spec.vocab_size, spec.seq_len, config.hidden, config.heads)

    @property
    def network(self) -> torch.nn.Module:
        return self.net

    def loss(self, batch: dlmbench.Batch) -> torch.Tensor:
        """Cross-entropy on a random fraction of masked target positions."""
        x = batch.tokens
        t = torch.rand(x.shape[0], 1, device=x.device)
        masked = torch.rand(x.shape, device=x.device) < t
        masked[:, : self.spec.prefix_len] = False
        logits = self.net(torch.where(masked, self.spec.mask_id, x))
        ce = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")
        return (ce * masked).sum() / masked.sum().clamp_min(1)
'''

SAMPLER = '''\
"""Unmask: start fully masked, reveal an equal share of positions at every step."""

import torch

import dlmbench
from dlmbench.categorical import sample_from_logits
from dlmbench.prefix import initial_ids


class Unmask(dlmbench.Sampler):
    name = "unmask"
    model = "$name"

    def sample(self, model, request):
        spec = model.spec
        device = next(model.parameters()).device
        x = initial_ids(spec, request, spec.mask_id, device)  # all masked, the prompt kept on conditional tasks
        for step in range(request.steps):
            masked = x == spec.mask_id
            if not masked.any():
                break
            logits = model.network(x)
            logits[..., spec.mask_id] = float("-inf")
            draw = sample_from_logits(logits, request.generator)
            remaining = request.steps - step
            score = torch.rand(x.shape, generator=request.generator, device=device, dtype=torch.float64)
            score = score.masked_fill(~masked, -1.0)
            count = (masked.sum(1) + remaining - 1) // remaining
            order = score.argsort(dim=1, descending=True).argsort(dim=1)
            reveal = masked & (order < count[:, None])
            x = torch.where(reveal, draw, x)
        return x

    def max_nfe(self, steps, spec=None):
        return steps

    def exact_nfe(self):
        return False
'''

TEST = '''\
"""The dlmbench conformance kit, run against this plugin as installed."""

from dlmbench.testing.conformance import ModelConformance


class Test${Class}Conformance(ModelConformance):
    model_name = "$name"
'''

README = """\
# dlmbench-$name

A dlmbench model plugin. Install and check it:

    pip install -e .
    pytest

Then evaluate it beside the built-in models:

    dlmbench run --models $name,ar --steps 8,32
"""


def scaffold(name: str, directory: str | Path = ".") -> Path:
    """Write ``dlmbench-NAME/`` under ``directory`` and return its path."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ConfigError(f"plugin name {name!r}: use lowercase letters, digits and _ (e.g. 'mymodel')")
    root = Path(directory) / f"dlmbench-{name}"
    if root.exists():
        raise ConfigError(f"{root} already exists; choose another name or --dir")
    module = name
    values = {"name": name, "module": module, "Class": "".join(p.title() for p in name.split("_")) + "Model"}
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"dlmbench_{module}/__init__.py": '"""dlmbench plugin: %s."""\n' % name,
        f"dlmbench_{module}/plugin.py": PLUGIN,
        f"dlmbench_{module}/model.py": MODEL,
        f"dlmbench_{module}/sampler.py": SAMPLER,
        "tests/test_conformance.py": TEST,
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(text).substitute(values))
    return root
