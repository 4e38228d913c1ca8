"""Left-to-right samplers for ``ar``: ``ancestral`` (temperature, top-p) and ``greedy``.

Both generate the ``seq_len - prefix_len`` target positions one at a time with a KV
cache. The first call reads ``[BOS] + prefix`` and yields the distribution of the first
target token; every later call reads only the token just drawn. One generated token is
therefore exactly one call of ``model.network`` over the batch, and the NFE per sample
equals the number of generated positions.

**The step budget does not apply.** An AR model cannot trade steps for quality: it
always takes one evaluation per generated token, whatever ``steps`` a run asks for.
``max_nfe(steps)`` reports that count so tables show AR at its true cost next to a
DLM's ``steps``.

The samplers need only three things from the model, so a stand-in with a known
next-token distribution can replace the network in tests: ``spec``,
``init_cache(batch_size)`` and ``logits(idx, cache, start) -> (B, T, V)``.
"""

from __future__ import annotations

from typing import Callable

import torch
from pydantic import Field

from dlmbench.categorical import sample_categorical
from dlmbench.data import DataSpec, SampleRequest
from dlmbench.model import Model
from dlmbench.prefix import initial_ids
from dlmbench.sampler import Sampler, SamplerConfig, model_device

Choose = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@torch.no_grad()
def generate_left_to_right(model: Model, request: SampleRequest, choose: Choose) -> torch.Tensor:
    """``(num_samples, seq_len)`` ids; ``choose(logits (B, V), generator) -> (B,)`` picks
    each token. Runs in eval mode (dropout off) and restores the previous mode."""
    spec = model.spec
    B, P, L = request.num_samples, spec.prefix_len, spec.seq_len
    device = model_device(model)
    out = initial_ids(spec, request, spec.pad_id, device)  # the prefix, then pads to overwrite
    inp = torch.full((B, 1), spec.bos_id, dtype=torch.long, device=device)
    if P:
        inp = torch.cat([inp, out[:, :P]], dim=1)  # [BOS] + prefix
    was_training = model.training
    model.eval()
    try:
        cache, start = model.init_cache(B), 0
        for i in range(P, L):  # one network call per generated position
            logits = model.logits(inp, cache, start)[:, -1]  # (B, V): distribution of x_i
            start += inp.shape[1]
            out[:, i] = choose(logits, request.generator).to(device)
            inp = out[:, i : i + 1]
    finally:
        model.train(was_training)
    return out


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero all but the smallest set of most likely tokens whose mass reaches ``top_p``
    (nucleus sampling, Holtzman et al. 2020); the top token always stays. Unnormalised."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    total = sorted_p.sum(-1, keepdim=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass strictly above each token
    keep_sorted = before < top_p * total
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return probs * keep


class AncestralConfig(SamplerConfig):
    temperature: float = Field(1.0, gt=0, description="softmax temperature (1 = the model)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus mass (1 = no truncation)")


class _LeftToRight(Sampler):
    model = "ar"

    def max_nfe(self, steps: int, spec: DataSpec | None = None) -> int:
        """Generated positions, ``seq_len - prefix_len``, whatever ``steps`` is."""
        if spec is None:
            spec = getattr(self, "_spec", None)
        if spec is None:
            raise ValueError(
                f"{self.model}/{self.name} takes one NFE per generated token, independent of "
                "steps; pass spec= (or sample once) so it knows the length"
            )
        return spec.seq_len - spec.prefix_len

    def exact_nfe(self) -> bool:
        return True

    def sample(self, model: Model, request: SampleRequest) -> torch.Tensor:
        self._spec = model.spec
        return generate_left_to_right(model, request, self.choose)

    def choose(self, logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


class Ancestral(_LeftToRight):
    """Draw each token from ``softmax(logits / temperature)``, top-p truncated, in
    float64 through :mod:`dlmbench.categorical`."""

    name = "ancestral"
    Config = AncestralConfig

    def choose(self, logits, generator):
        z = logits.to(torch.float64)
        if self.config.temperature != 1.0:  # x / 1 == x exactly: skip the pass at T = 1
            z = z / self.config.temperature
        probs = torch.softmax(z, dim=-1)
        probs = top_p_filter(probs, self.config.top_p)
        return sample_categorical(probs.to(generator.device), generator)


class Greedy(_LeftToRight):
    """The most likely token at every position (deterministic; the seed is unused)."""

    name = "greedy"

    def choose(self, logits, generator):
        return logits.argmax(dim=-1)
