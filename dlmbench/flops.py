"""Counting the floating-point operations of one function evaluation (NFE).

The count is analytic: :class:`torch.utils.flop_counter.FlopCounterMode` reads the
shapes of every matmul-like op of one real call of ``model.network`` and applies the
usual formulas (``2 m k n`` per ``(m, k) @ (k, n)`` matmul; bias adds, norms, softmax
and activations are not counted; attention as ``QK^T`` plus ``AV``, ``2 x 2 B H Tq Tk D``).
Conventions worth stating next to any number derived from it:

* attention is counted dense, also when causal (PyTorch's convention: a causal kernel
  could skip about half of ``QK^T`` and ``AV``);
* the CPU fused attention kernel (``_scaled_dot_product_flash_attention_for_cpu``) is
  missing from PyTorch's table; it is added here with the same formula as the CUDA one;
* an embedding lookup is free; a soft lookup (``softmax(x) @ E``) is a matmul and counts.

What a "forward" is comes from the model's own sampler: :func:`network_inputs` runs one
1-step sample and captures the arguments of the first ``model.network`` call (a forward
pre-hook, then the sample is aborted). A sampler whose first call does not cover the whole
sequence (the AR baseline decodes one token at a time from a KV cache) has its inputs
taken instead from the network call inside ``model.loss`` on a batch of the same size,
which is the full-length (training / likelihood) forward.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from dlmbench.data import Batch, SampleRequest
from dlmbench.model import Model
from dlmbench.sampler import Sampler

aten = torch.ops.aten


def _sdpa_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _extra_formulas() -> dict[Any, Callable[..., int]]:
    """Attention kernels PyTorch's flop table leaves out (the CPU fused SDPA, ...)."""
    table: dict[Any, Callable[..., int]] = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable"):
        op = getattr(aten, name, None)
        if op is not None:
            table[op] = _sdpa_forward
        back = getattr(aten, name + "_backward", None)
        if back is not None:
            table[back] = _sdpa_backward
    return table


def flop_counter() -> FlopCounterMode:
    """A quiet :class:`FlopCounterMode` that also knows the CPU attention kernels."""
    return FlopCounterMode(display=False, custom_mapping=_extra_formulas())


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Total FLOPs of ``fn(*args, **kwargs)`` (one real call, counted by op shapes)."""
    with flop_counter() as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def flops_by_op(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, int]:
    """FLOPs of ``fn(...)`` per ATen op (``{"aten.mm": ..., ...}``), for reports and tests."""
    with flop_counter() as counter:
        fn(*args, **kwargs)
    return {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}


# -- capturing the network's inputs ---------------------------------------------------------
class _Captured(Exception):
    """Raised by the pre-hook to stop a sample after the first network call."""


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value
    return None


@contextmanager
def _spec_as(model: Model, seq_len: int | None) -> Iterator[None]:
    """Temporarily present ``model.spec`` with another ``seq_len`` (None: unchanged)."""
    if seq_len is None or seq_len == model.spec.seq_len:
        yield
        return
    spec = model.spec
    model.spec = dataclasses.replace(spec, seq_len=int(seq_len))
    try:
        yield
    finally:
        model.spec = spec


def _capture(model: Model, run: Callable[[], Any], accept: Callable[[tuple, dict], bool]) -> tuple[tuple, dict] | None:
    """Arguments of the first ``model.network`` call inside ``run()`` that ``accept`` takes."""
    found: list[tuple[tuple, dict]] = []

    def hook(_module, args, kwargs):
        if accept(args, kwargs):
            found.append((_clone(args), _clone(kwargs)))
            raise _Captured

    handle = model.network.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    except _Captured:
        pass
    finally:
        handle.remove()
    return found[0] if found else None


def _loss_batch(model: Model, batch_size: int, seed: int) -> Batch:
    """Random in-vocabulary tokens that avoid the reserved ids (pad/bos/mask)."""
    spec = model.spec
    device = _device(model)
    gen = torch.Generator().manual_seed(seed)
    low = max(spec.pad_id, spec.bos_id, spec.eos_id, spec.mask_id) + 1
    high = spec.vocab_size if low < spec.vocab_size else low + 1
    tokens = torch.randint(low, high, (batch_size, spec.seq_len), generator=gen)
    return Batch(tokens.to(device))


def _device(model: Model) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def network_inputs(
    model: Model,
    sampler: Sampler | None,
    batch_size: int,
    seq_len: int | None = None,
    seed: int = 0,
) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of one full-length ``model.network`` call for ``batch_size`` rows.

    Taken from the first network call of a 1-step ``sampler.sample`` (its own signature,
    dtypes and conditioning); when that call does not span ``seq_len`` positions (KV-cached
    decoding) or no sampler is given, from the network call inside ``model.loss``.
    ``seq_len`` other than ``model.spec.seq_len`` presents the model a modified spec while
    capturing (fine for networks without a fixed maximum length).
    """
    was_training = model.training
    model.eval()
    length = seq_len or model.spec.seq_len

    def full(args: tuple, kwargs: dict) -> bool:
        first = _first_tensor(args, kwargs)
        return first is not None and first.dim() >= 2 and first.shape[0] == batch_size and first.shape[1] == length

    try:
        with _spec_as(model, seq_len), torch.no_grad():
            got = None
            if sampler is not None:
                device = _device(model)
                prefix = None
                if model.spec.prefix_len:
                    prefix = _loss_batch(model, batch_size, seed).tokens[:, : model.spec.prefix_len]
                gen = torch.Generator(device=device).manual_seed(seed)
                request = SampleRequest(steps=1, num_samples=batch_size, generator=gen, prefix=prefix)
                got = _capture(model, lambda: sampler.sample(model, request), full)
            if got is None:
                batch = _loss_batch(model, batch_size, seed)
                torch.manual_seed(seed)
                got = _capture(model, lambda: model.loss(batch), full)
    finally:
        model.train(was_training)
    if got is None:
        raise RuntimeError(
            f"{model.name}: found no network call over ({batch_size}, {length}) in a 1-step sample or in the loss"
        )
    return got


def forward_flops(
    model: Model,
    batch_size: int,
    seq_len: int | None = None,
    sampler: Sampler | None = None,
    inputs: tuple[tuple, dict] | None = None,
) -> int:
    """FLOPs of one forward of ``model.network`` over ``batch_size`` sequences.

    The inputs are those :func:`network_inputs` captures from ``sampler`` (without one,
    from the network call inside ``model.loss``); pass ``inputs`` to reuse a capture.
    """
    if inputs is None:
        inputs = network_inputs(model, sampler, batch_size, seq_len)
    args, kwargs = inputs
    was_training = model.training
    model.eval()
    try:
        with _spec_as(model, seq_len), torch.no_grad():
            return count_flops(model.network, *args, **kwargs)
    finally:
        model.train(was_training)


def sample_flops(model: Model, sampler: Sampler, steps: int, batch_size: int, seed: int = 0) -> int:
    """FLOPs of one whole ``sampler.sample`` call (every NFE plus the sampler's own ops)."""
    device = _device(model)
    prefix = None
    if model.spec.prefix_len:
        prefix = _loss_batch(model, batch_size, seed).tokens[:, : model.spec.prefix_len]
    gen = torch.Generator(device=device).manual_seed(seed)
    request = SampleRequest(steps=steps, num_samples=batch_size, generator=gen, prefix=prefix)
    model.eval()
    with torch.no_grad():
        return count_flops(sampler.sample, model, request)


def train_step_flops(model: Model, batch: Batch, seed: int = 0) -> int:
    """FLOPs of ``model.loss(batch)`` and its backward (one optimiser step, less the update)."""
    was_training = model.training
    model.train()
    torch.manual_seed(seed)
    try:
        with flop_counter() as counter:
            loss = model.loss(batch)
            loss.backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return int(counter.get_total_flops())
