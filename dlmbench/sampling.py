"""Running a sampler under the core's NFE counter and turning ids into a Generation."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from dlmbench import distributed
from dlmbench.data import Generation, SampleRequest
from dlmbench.model import Model
from dlmbench.nfe import count_nfe
from dlmbench.sampler import Sampler
from dlmbench.task import TaskData
from dlmbench.tokenizer import TextTokenizer
from dlmbench.training import autocast


@dataclass
class SampleRun:
    ids: torch.Tensor
    nfe: float
    calls: int
    seconds: float


def seed_for(seed: int, micro_batch: int) -> int:
    """Independent, reproducible generator seeds per (seed, micro-batch)."""
    return (seed * 1_000_003 + micro_batch * 7_919) % (2**63 - 1)


@torch.no_grad()
def generate(
    model: Model,
    sampler: Sampler,
    steps: int,
    num_samples: int,
    seed: int,
    prefixes: torch.Tensor | None = None,
    batch_size: int = 256,
    on_batch: Callable[[int], None] | None = None,
    precision: str = "fp32",
) -> SampleRun:
    """Sample ``num_samples`` sequences in micro-batches, counting NFE per sample.

    ``precision="bf16"`` runs ``sampler.sample`` under bfloat16 autocast: only the
    network's matmuls change dtype; the categorical draws stay float64
    (:mod:`dlmbench.categorical`) and samplers keep their states in their own dtype.
    """
    model.eval()
    device = next(model.parameters()).device
    world = distributed.current()
    outs: dict[int, torch.Tensor] = {}
    start = time.perf_counter()
    with count_nfe(model) as counter:
        for b, lo in enumerate(range(0, num_samples, batch_size)):
            if b % world.size != world.rank:  # under torchrun each rank takes whole micro-batches
                continue
            n = min(batch_size, num_samples - lo)
            gen = torch.Generator(device=device).manual_seed(seed_for(seed, b))
            prefix = None if prefixes is None else prefixes[lo : lo + n].to(device)
            with autocast(device, precision):
                ids = sampler.sample(model, SampleRequest(steps=steps, num_samples=n, generator=gen, prefix=prefix))
            expected = (n, model.spec.seq_len)
            if tuple(ids.shape) != expected or ids.dtype != torch.long:
                raise RuntimeError(
                    f"sampler {sampler.name!r} returned {tuple(ids.shape)} {ids.dtype}, expected {expected} int64"
                )
            bad = ids[(ids < 0) | (ids >= model.spec.vocab_size)]
            if bad.numel():
                raise RuntimeError(
                    f"sampler {sampler.name!r} of model {model.name!r} returned ids outside the vocabulary "
                    f"[0, {model.spec.vocab_size}): {sorted(set(bad.tolist()))[:8]}"
                )
            outs[b] = ids.cpu()
            if on_batch is not None:
                on_batch(n)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    shards = distributed.gather_objects((outs, counter.rows, counter.calls))
    merged = {b: ids for part, _, _ in shards for b, ids in part.items()}
    rows = sum(r for _, r, _ in shards)
    calls = sum(c for _, _, c in shards)
    ids = torch.cat([merged[b] for b in sorted(merged)])
    return SampleRun(ids, rows / max(num_samples, 1), calls, seconds)


def to_generation(ids: torch.Tensor, tokenizer: TextTokenizer, prefix_len: int, task: TaskData | None = None) -> Generation:
    """Strip the prefix, cut each continuation before its first EOS, decode."""
    tokens = [tokenizer.cut_at_eos(row[prefix_len:].tolist()) for row in ids]
    texts = [tokenizer.decode(t) for t in tokens]
    n = len(tokens)
    refs = task.references[:n] if task is not None and task.references is not None else None
    srcs = task.sources[:n] if task is not None and task.sources is not None else None
    return Generation(ids=ids, tokens=tokens, texts=texts, references=refs, sources=srcs)
