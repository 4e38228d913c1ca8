"""MAUVE (Pillutla et al. 2021) between generated and held-out text, an optional extra.

``pip install 'dlmbench[mauve]'`` installs ``mauve-text``; the metric is not in any
task's default list, so name it: ``--metrics gen-ppl,unigram-entropy,mauve``.

The featurizer is a setting, as papers disagree on it; it is the run's evaluator
(``budget.evaluator``, field ``evaluator`` here, so Gen PPL and MAUVE read the same LM):
a causal LM from ``transformers`` (default ``gpt2-large``, the MAUVE paper's), any
local path, or ``proxy`` (the locally
trained evaluator of :mod:`dlmbench.metrics.proxy`, offline; its MAUVE is not comparable
with GPT-2 Large MAUVE). Features are the final layer's hidden state at the last token
of each text, the text tokenized alone and truncated to ``max_text_length`` tokens: the
featurization of ``mauve-text`` itself. The human side is the *last* rows of the task's
validation split (the held-out leaderboard row uses the first ones, so the two differ
whenever the split holds both). Settings and sample counts go into ``details``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from dlmbench.data import Generation
from dlmbench.errors import ConfigError
from dlmbench.metric import Metric, MetricConfig, MetricValue
from dlmbench.metrics.genppl import load_model, load_tokenizer, retokenize
from dlmbench.metrics.proxy import PROXY, PROXY_NOTE, resolve_evaluator
from dlmbench.task import TaskData


class MauveConfig(MetricConfig):
    evaluator: str = Field("gpt2-large", description="featurizer causal LM: hub id, local path, or 'proxy'")
    max_text_length: int = Field(1024, gt=0, description="tokens featurized per text (mauve-text: 1024)")
    num_buckets: int | Literal["auto"] = Field("auto", description="k-means clusters; auto: n / 10")
    mauve_scaling_factor: float = Field(5.0, gt=0, description="c in exp(-c KL) (mauve-text: 5)")
    kmeans_explained_var: float = Field(0.9, gt=0, le=1)
    seed: int = Field(25, description="k-means seed (mauve-text: 25)")
    device: str = Field("auto", description="'auto': cuda when available, else cpu")


@torch.no_grad()
def featurize(model: Any, rows: list[list[int]], device: str) -> torch.Tensor:
    """``(N, hidden)`` float32: the last layer's hidden state at each row's last token."""
    feats = []
    for ids in rows:
        if not ids:
            raise ConfigError("mauve: an empty text has no features; filter empty samples or use gen-ppl")
        out = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True)
        feats.append(out.hidden_states[-1][0, -1].float().cpu())
    return torch.stack(feats)


class Mauve(Metric):
    name = "mauve"
    higher_is_better = True
    description = (
        "MAUVE between the samples and held-out text (mauve-text; optional extra "
        "dlmbench[mauve]); featurizer LM is the run's evaluator (default gpt2-large, 'proxy' offline)."
    )
    Config = MauveConfig

    def applies_to(self, task: TaskData) -> bool:
        return task.references is None and task.valid.shape[0] > 0

    def compute(self, generation: Generation, task: TaskData) -> MetricValue:
        try:
            import mauve
        except ImportError as error:
            raise ConfigError("metric mauve needs mauve-text: pip install 'dlmbench[mauve]'") from error
        from dlmbench.sampling import to_generation

        cfg = self.config
        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        featurizer = resolve_evaluator(cfg.evaluator, self.evaluator_task(task), self.context)
        offline = self.context.offline
        tokenizer, model = load_tokenizer(featurizer, offline), load_model(featurizer, device, offline)
        n = len(generation.texts)
        human = to_generation(task.valid[-n:], task.tokenizer, task.spec.prefix_len).texts
        keep = [t for t in generation.texts if t.strip()]
        p = featurize(model, retokenize(tokenizer, human, cfg.max_text_length), device)
        q = featurize(model, retokenize(tokenizer, keep, cfg.max_text_length), device)
        out = mauve.compute_mauve(
            p_features=p.numpy(), q_features=q.numpy(), num_buckets=cfg.num_buckets,
            mauve_scaling_factor=cfg.mauve_scaling_factor, kmeans_explained_var=cfg.kmeans_explained_var,
            seed=cfg.seed, verbose=False,
        )
        details = {
            "evaluator": cfg.evaluator,
            **({"evaluator_path": featurizer, "proxy_note": PROXY_NOTE} if cfg.evaluator == PROXY else {}),
            "human_texts": len(human),
            "generated_texts": len(keep),
            "empty_samples_dropped": n - len(keep),
            "max_text_length": cfg.max_text_length,
            "num_buckets": cfg.num_buckets,
            "mauve_scaling_factor": cfg.mauve_scaling_factor,
            "seed": cfg.seed,
        }
        return MetricValue(float(out.mauve), None, details, n=len(keep))
