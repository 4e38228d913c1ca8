"""The validation likelihood bound every trained model is reported with."""

from __future__ import annotations

import torch

from dlmbench.data import Batch
from dlmbench.model import Model
from dlmbench.records import LikelihoodBound
from dlmbench.task import TaskData


def likelihood_bound(model: Model, data: TaskData, device: torch.device | str, seed: int,
                     max_rows: int = 512) -> LikelihoodBound | None:
    """NELBO per token on the first ``max_rows`` validation rows and its perplexity bound,
    for models that have one (None otherwise), and per byte of the text those tokens decode
    to: per-token bounds of models with different tokenizers do not compare, per-byte ones
    do. ``seed`` seeds torch's generator, from which ``Model.nelbo`` draws its times."""
    rows = data.valid[:max_rows].to(device)
    torch.manual_seed(seed)
    total, count = 0.0, 0
    for lo in range(0, rows.shape[0], 128):
        with torch.no_grad():  # not @torch.no_grad(): mutmut leaves decorated functions unmutated
            nelbo = model.nelbo(Batch(rows[lo: lo + 128]))
        if nelbo is None:
            return None
        total += float(nelbo.sum())
        count += nelbo.numel() * (data.spec.seq_len - data.spec.prefix_len)
    per_token = total / count
    scored = rows[:, data.spec.prefix_len:].tolist()
    text_bytes = sum(len(t.encode("utf-8")) for t in data.tokenizer.backend.decode_batch(
        scored, skip_special_tokens=True))
    return LikelihoodBound(nelbo_per_token=per_token, ppl_bound=float(torch.tensor(per_token).exp()),
                           rows=int(rows.shape[0]), nelbo_per_byte=total / text_bytes if text_bytes else None)
