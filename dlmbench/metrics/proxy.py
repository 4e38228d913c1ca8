"""An offline proxy evaluator for generative perplexity.

When no evaluator LM can be had (no hub), dlmbench trains a small GPT-2 on the task's
own training split, with the task's own tokenizer, caches it with ``save_pretrained``
and scores Gen PPL through exactly the same code path as ``gpt2-large``. The numbers it
gives are labelled ``proxy`` in every record and table: they rank models trained on the
same data, but they are **not comparable with GPT-2 Large Gen PPL** from papers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field
from tqdm.auto import tqdm

from dlmbench.config import stable_hash
from dlmbench.context import RunContext
from dlmbench.data import Batch, DataSpec
from dlmbench.model import Model, ModelConfig
from dlmbench.task import TaskData

PROXY = "proxy"
PROXY_NOTE = "a small GPT-2 trained locally on the task's training split; NOT comparable with GPT-2 Large Gen PPL"


class ProxyConfig(ModelConfig):
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    n_layer: int = Field(4, gt=0)
    n_embd: int = Field(128, gt=0)
    n_head: int = Field(4, gt=0)
    lr: float = 1e-3
    warmup_steps: int = 50
    steps: int = Field(600, gt=0, description="optimiser steps")
    batch_size: int = Field(32, gt=0)


DEFAULT_CONFIG = ProxyConfig()  # what ``evaluator: proxy`` trains (a module attribute, so tests can shrink it)


class _ProxyLM(Model):
    """A GPT-2 from ``transformers`` wrapped so the core's training loop trains it."""

    name = "proxy-gpt2"
    Config = ProxyConfig

    def __init__(self, config: ProxyConfig, spec: DataSpec):
        super().__init__(config, spec)
        from transformers import GPT2Config, GPT2LMHeadModel

        self.lm = GPT2LMHeadModel(GPT2Config(
            vocab_size=spec.vocab_size, n_positions=spec.seq_len, n_embd=config.n_embd,
            n_layer=config.n_layer, n_head=config.n_head, bos_token_id=spec.bos_id,
            eos_token_id=spec.eos_id, pad_token_id=spec.pad_id, loss_type="ForCausalLM",
        ))

    def loss(self, batch: Batch) -> torch.Tensor:
        return self.lm(input_ids=batch.tokens, labels=batch.tokens).loss


def proxy_dir(task: TaskData, config: ProxyConfig, root: Path) -> Path:
    """Where the proxy for ``task`` lives under ``root`` (a run's ``context.evaluators``)."""
    key = stable_hash({"data": task.fingerprint(), "config": config.model_dump(mode="json")})
    return Path(root) / f"proxy-{task.name.replace(':', '_').replace('/', '_')}-{key}"


def ensure_proxy_evaluator(task: TaskData, root: Path, config: ProxyConfig | None = None) -> Path:
    """Train (once) and cache the proxy evaluator for ``task`` under ``root``; return its directory."""
    from transformers import PreTrainedTokenizerFast

    from dlmbench.training import fit

    config = config or DEFAULT_CONFIG
    path = proxy_dir(task, config, root)
    if (path / "config.json").exists():
        return path
    torch.manual_seed(0)
    model = _ProxyLM(config, task.spec)
    with tqdm(total=config.steps, desc=f"train proxy evaluator for {task.name}", leave=False) as bar:
        fit(model, task.train, batch_size=config.batch_size, steps=config.steps, seed=0,
            progress=lambda step, loss: bar.update(1))
    tok = task.tokenizer
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok.backend, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
        unk_token="[UNK]", mask_token="[MASK]",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    model.lm.save_pretrained(tmp, safe_serialization=True)
    hf_tok.save_pretrained(tmp)
    (tmp / "DLMBENCH_PROXY.txt").write_text(PROXY_NOTE + "\n")
    tmp.rename(path)
    return path


def resolve_evaluator(name: str, task: TaskData, context: RunContext) -> str:
    """The evaluator to load: ``name`` itself, or the proxy's directory for ``proxy``."""
    return str(ensure_proxy_evaluator(task, context.evaluators)) if name == PROXY else name
