"""Group-relative advantages (GRPO) and per-turn credit assignment.

Pure tensor functions: no Ray, no project imports. Shapes use ``B`` for the number of
trajectories (samples) in the batch, ``T`` for the token length and ``K`` for the largest
number of turns in a trajectory.
"""
from __future__ import annotations

import torch

__all__ = ["group_advantages", "turn_credit"]


def _group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary integer group ids (B,) to dense indices 0..G-1 (B,); returns (index, G)."""
    if group_ids.dim() != 1:
        raise ValueError(f"group_ids must be 1-D (B,), got shape {tuple(group_ids.shape)}")
    uniq, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(uniq.numel())


def _group_minmax(rewards: torch.Tensor, index: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group min and max of ``rewards`` (B,) -> ((G,), (G,))."""
    init_max = torch.full((n_groups,), float("-inf"), dtype=rewards.dtype, device=rewards.device)
    init_min = torch.full((n_groups,), float("inf"), dtype=rewards.dtype, device=rewards.device)
    gmax = init_max.scatter_reduce(0, index, rewards, reduce="amax", include_self=True)
    gmin = init_min.scatter_reduce(0, index, rewards, reduce="amin", include_self=True)
    return gmin, gmax


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    eps: float = 1e-6,
    normalize_std: bool = True,
) -> torch.Tensor:
    """GRPO group-relative advantage ``A_i = (R_i - mean_g) / (std_g + eps)``.

    ``mean_g`` and ``std_g`` are taken over the samples sharing sample ``i``'s group id.
    ``std_g`` is the *sample* standard deviation (Bessel-corrected, divisor ``n_g - 1``, i.e.
    ``torch.std``'s default ``unbiased=True``), as in the GRPO reference implementations
    (DeepSeekMath / TRL). With ``normalize_std=False`` the advantage is just ``R_i - mean_g``
    (Dr. GRPO style).

    A group with one sample, or whose rewards are all equal, gets advantage exactly 0
    (no NaN, no tiny float residue from the mean).

    Args:
        rewards: (B,) float rewards, one per trajectory.
        group_ids: (B,) integer group ids; need not be contiguous or sorted.
        eps: added to ``std_g`` before dividing.
        normalize_std: divide by ``std_g + eps`` when True.

    Returns:
        (B,) advantages, same dtype as ``rewards`` (float32 if rewards are integer), detached.
    """
    if rewards.shape != group_ids.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} differ")
    r = rewards.detach()
    if not r.is_floating_point():
        r = r.float()
    if r.numel() == 0:
        return torch.zeros_like(r)
    index, n_groups = _group_index(group_ids)

    zeros = torch.zeros(n_groups, dtype=r.dtype, device=r.device)
    counts = zeros.index_add(0, index, torch.ones_like(r))
    mean = zeros.index_add(0, index, r) / counts
    dev = r - mean[index]
    sq = zeros.index_add(0, index, dev * dev)
    std = (sq / (counts - 1).clamp(min=1)).sqrt()  # sample std; unused for singleton groups

    adv = dev / (std[index] + eps) if normalize_std else dev
    gmin, gmax = _group_minmax(r, index, n_groups)
    degenerate = ((counts < 2) | (gmax == gmin))[index]
    return torch.where(degenerate, torch.zeros_like(adv), adv)


def turn_credit(
    advantage: torch.Tensor,
    turn_index: torch.Tensor,
    turn_rewards: torch.Tensor | None,
    weight: float,
) -> torch.Tensor:
    """Token-level advantages: trajectory advantage plus optional weighted per-turn reward.

    ``out[b, t] = advantage[b] + weight * turn_rewards[b, turn_index[b, t]]``, where the second
    term is 0 when ``turn_index[b, t] == -1`` (a token the policy did not sample: prompt, tool
    output, padding), when ``turn_rewards`` is None, or when ``weight == 0``.

    The trajectory advantage itself is broadcast to *every* token, including non-sampled ones;
    the loss mask is what removes those from the loss.

    Args:
        advantage: (B,) trajectory advantages (e.g. from :func:`group_advantages`).
        turn_index: (B, T) integer: the assistant turn (0..K-1) that token t belongs to, or -1.
        turn_rewards: (B, K) float per-turn rewards, or None.
        weight: scale of the per-turn term.

    Returns:
        (B, T) float token advantages (a fresh tensor, not a view of ``advantage``).
    """
    if advantage.dim() != 1 or turn_index.dim() != 2 or turn_index.shape[0] != advantage.shape[0]:
        raise ValueError(
            f"expected advantage (B,) and turn_index (B, T); got {tuple(advantage.shape)} "
            f"and {tuple(turn_index.shape)}"
        )
    out = advantage.detach()[:, None].expand(turn_index.shape).clone()
    if turn_rewards is None or weight == 0:
        return out
    if turn_rewards.dim() != 2 or turn_rewards.shape[0] != advantage.shape[0]:
        raise ValueError(f"turn_rewards must be (B, K), got {tuple(turn_rewards.shape)}")
    sampled = turn_index >= 0
    if turn_rewards.shape[1] == 0:
        if bool(sampled.any()):
            raise ValueError("turn_index refers to turns but turn_rewards has K == 0")
        return out
    idx = turn_index.long().clamp(min=0)
    per_token = torch.gather(turn_rewards.detach().to(out.dtype), 1, idx)
    return out + weight * torch.where(sampled, per_token, torch.zeros_like(per_token))
