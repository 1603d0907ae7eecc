"""Micro-batches by token budget, with sequence packing (pure: lengths and tensors in, no Ray).

With ``learner.micro_tokens`` > 0 the learner stops padding every sequence of a micro-batch to
the longest one. Trajectories are packed first-fit-decreasing into rows no longer than the
batch's longest trajectory (so no row is longer than unpacked padding would make it, and the
attention cost per row stays that of one trajectory); rows are grouped into micro-batches of at
most ``micro_tokens`` tokens (rows x row length; a row longer than the budget goes alone).

Attention stays within each trajectory: ``position_ids`` restart at 0 at every trajectory, and
transformers turns restarts into a block-diagonal causal mask (``find_packed_sequence_indices``
for SDPA/eager; flash-attention's varlen kernels on GPU). A trajectory's first token, scored
from the previous trajectory's last position, is a prompt token: loss mask 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Slot:
    """Where trajectory ``index`` (of the micro-batch) sits: row, first column, length."""

    index: int
    row: int
    start: int
    length: int


def pack_rows(lengths: Sequence[int], row_len: int) -> list[list[int]]:
    """First-fit decreasing: indices per row, each row's lengths summing to at most ``row_len``
    (a longer sequence gets a row of its own). Deterministic: ties keep index order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(row_len - n)
    return rows


def token_micro_batches(lengths: Sequence[int], micro_tokens: int) -> list[list[list[int]]]:
    """The batch's trajectories (by ``lengths``) as micro-batches of packed rows: each a list of
    rows of indices, with rows x row length <= ``micro_tokens`` (at least one row each). The row
    length is the longest trajectory's."""
    if not lengths:
        return []
    row_len = max(lengths)
    per = max(1, micro_tokens // row_len)
    rows = pack_rows(lengths, row_len)
    return [rows[i : i + per] for i in range(0, len(rows), per)]


def slots(rows: Sequence[Sequence[int]], lengths: Sequence[int]) -> list[Slot]:
    """Each trajectory's ``Slot``, in row order."""
    out = []
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            out.append(Slot(i, r, start, lengths[i]))
            start += lengths[i]
    return out


def pack(padded: dict[str, Any], rows: Sequence[Sequence[int]], lengths: Sequence[int]) -> tuple[dict[str, Any], list[Slot]]:
    """Lay ``pad_batch``'s (B, T) tensors out as packed (R, L) rows, L the longest row; adds ``position_ids`` (restarting at 0 at each trajectory, running on
    through a row's padding). Returns the packed tensors and the slots."""
    import torch

    L = max(sum(lengths[i] for i in row) for row in rows)
    where = slots(rows, lengths)
    out = {k: v.new_zeros(len(rows), L) for k, v in padded.items()}
    pos = torch.zeros(len(rows), L, dtype=torch.long)
    for s in where:
        for k, v in padded.items():
            out[k][s.row, s.start : s.start + s.length] = v[s.index, : s.length]
        pos[s.row, s.start : s.start + s.length] = torch.arange(s.length)
    for r, row in enumerate(rows):  # padding continues the last trajectory's positions (masked out)
        used = sum(lengths[i] for i in row)
        last = lengths[row[-1]] if row else 0
        pos[r, used:] = torch.arange(last, last + L - used)
    out["position_ids"] = pos
    return out, where


def unpack(values: Any, where: Sequence[Slot], n: int) -> list[Any]:
    """Per-trajectory 1-D slices of a packed (R, L) tensor, in trajectory index order (``n`` of
    them); each trajectory's first value, which came from the previous one, is zeroed."""
    out: list[Any] = [None] * n
    for s in where:
        piece = values[s.row, s.start : s.start + s.length].clone()
        piece[0] = 0.0
        out[s.index] = piece
    return out


def pad_fraction(lengths: Sequence[int], shapes: Sequence[tuple[int, int]]) -> float:
    """Share of the token positions computed (``shapes``: (rows, columns) per micro-batch) that
    hold no trajectory token."""
    computed = sum(r * c for r, c in shapes)
    return 1.0 - sum(lengths) / computed if computed else 0.0
