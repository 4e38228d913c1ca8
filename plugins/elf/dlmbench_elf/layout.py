"""ELF's conditional row layout as its code builds it (``source_layout: packed``).

dlmbench stores a conditional row at fixed widths, ``[source | target]``, each side
EOS-padded (:mod:`dlmbench.tasks.layout`), so a short source is followed by EOS padding
that T5 attends to and the target starts at ``prefix_len`` whatever the source's length.
The reference (``lillian039/ELF@b29d883 src/utils/data_utils.py``, ``get_dataloader``'s
``collate_fn`` and ``pad_and_truncate``) instead concatenates the source ids and the target
ids and pads the row to ``max_length`` with the pad id, which is EOS in the conditional
configs (``pad_token: eos`` in ``train_de-en_ELF-B.yml`` / ``train_xsum_ELF-B.yml``); its
evaluation loader tokenizes both sides with ``add_special_tokens=False``
(``load_jsonl_dataset``), so neither side carries an EOS of its own. In dlmbench terms the
true source is the prefix up to (not including) its first EOS, and the true target the
target side up to its first EOS. Packing a fixed row is then a permutation that moves the
source's EOS padding to the end of the row::

    fixed   [s1 s2 E  E  | t1 t2 t3 E]     prefix_len P = 4, seq_len L = 8, T = L - P = 4
    packed  [s1 s2 t1 t2 t3 E  E  E ]      source_len c = 2, valid_len v = c + 3 = 5

What the reference reads from a packed row:

* T5 mask (``build_self_attn_cond_masks`` in ``src/utils/encoder_utils.py``): queries
  before ``c`` see keys before ``c``; every other query sees the valid keys (before
  ``v``), so the padding EOS are never keys; label-dropped rows (``src/train_step.py``)
  also hide the source keys from the non-source queries.
* Loss: every position from ``c`` on (``pad_token: eos`` makes ``loss_mask`` all ones
  before ``1 - cond_seq_mask``), so the model learns the EOS padding after the target.
* Sampling (``test_generation_cond`` in ``src/generation.py``): clean source latents
  before ``c``, the rest generated, and the output ``shift_left(ids, c)[:, :gen_length]``,
  i.e. ``ids[c : c + T]`` (:func:`unpack_target`), which goes back after the fixed prefix.

The denoiser has no attention mask in either layout (``src/modules/model.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def first_eos(ids: Tensor, eos_id: int) -> Tensor:
    """``(B,)`` int64: each row's first EOS position, or the row's width if it has none."""
    width = ids.shape[1]
    pos = torch.arange(width, device=ids.device).expand_as(ids)
    return torch.where(ids == eos_id, pos, torch.full_like(pos, width)).amin(1)


def before(lengths: Tensor, seq_len: int) -> Tensor:
    """``(B, seq_len)`` bool: position < each row's length."""
    return torch.arange(seq_len, device=lengths.device)[None] < lengths[:, None]


def pack_index(source_len: Tensor, prefix_len: int, seq_len: int) -> Tensor:
    """``(B, L)`` int64 gather index: ``packed[:, j] = fixed[:, index[:, j]]``.

    ``j < c``: the source (``j``); ``c <= j < c + T``: the target side (``P + j - c``);
    the last ``P - c`` positions: the source's EOS padding (``j - T``).
    """
    T = seq_len - prefix_len
    j = torch.arange(seq_len, device=source_len.device)[None]
    c = source_len[:, None]
    return torch.where(j < c, j, torch.where(j < c + T, prefix_len + j - c, j - T))


class PackedRows(NamedTuple):
    tokens: Tensor  # (B, L) the reference's row: source, target, EOS padding
    source_len: Tensor  # (B,) c: the source before its first EOS
    valid_len: Tensor  # (B,) v: c + the target before its first EOS (the T5 keys)
    index: Tensor  # (B, L) packed = fixed.gather(1, index)

    @property
    def source(self) -> Tensor:
        """``(B, L)`` bool: the clean-source positions."""
        return before(self.source_len, self.tokens.shape[1])


def pack(tokens: Tensor, prefix_len: int, eos_id: int) -> PackedRows:
    """Fixed ``[source | target]`` rows as the reference's packed rows."""
    c = first_eos(tokens[:, :prefix_len], eos_id)
    v = c + first_eos(tokens[:, prefix_len:], eos_id)
    index = pack_index(c, prefix_len, tokens.shape[1])
    return PackedRows(tokens.gather(1, index), c, v, index)


def scored(rows: PackedRows, fixed_scored: Tensor, prefix_len: int) -> Tensor:
    """``(B, L)`` bool loss positions of packed rows: every position from ``c`` on, narrowed
    on the target by the fixed layout's ``fixed_scored`` (a ``batch.loss_mask``); the
    source's EOS padding, moved to the end, is scored as the reference's padding is."""
    keep = fixed_scored.clone()
    keep[:, :prefix_len] = True
    return keep.gather(1, rows.index) & ~rows.source


def encoder_allowed(source_len: Tensor, valid_len: Tensor, seq_len: int, drop: Tensor | None = None) -> Tensor:
    """``(B, L, L)`` bool T5 self-attention of packed rows (query, key): source queries see
    the source keys; other queries see the valid keys, minus the source for ``drop`` rows."""
    src, valid = before(source_len, seq_len), before(valid_len, seq_len)
    allowed = (src[:, :, None] & src[:, None, :]) | (~src[:, :, None] & valid[:, None, :])
    if drop is not None:
        allowed = allowed & ~(drop[:, None, None] & ~src[:, :, None] & src[:, None, :])
    return allowed


def unpack_target(ids: Tensor, source_len: Tensor, prefix_len: int) -> Tensor:
    """``(B, T)``: the ``T = L - P`` ids generated right after each row's source
    (``ids[c : c + T]``; ``c <= P`` keeps them inside the row)."""
    T = ids.shape[1] - prefix_len
    index = source_len[:, None] + torch.arange(T, device=ids.device)[None]
    return ids.gather(1, index)
