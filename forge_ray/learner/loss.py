"""Policy-gradient and SFT losses on token log-probabilities.

Pure tensor functions: no Ray, no project imports. Shapes: ``B`` batch, ``T`` tokens, ``V`` vocab.

Alignment convention used throughout: a per-token quantity at position ``t`` refers to token
``tokens[:, t]`` as predicted from ``logits[:, t - 1]``. Position 0 has no prediction and gets 0.
So every (B, T) tensor here lines up with ``tokens`` and with a loss mask over ``tokens``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["token_logprobs", "entropy_from_logits", "grpo_loss", "sft_loss", "sft_loss_from_logprobs"]


def _check_logits(logits: torch.Tensor, tokens: torch.Tensor | None = None) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got {tuple(logits.shape)}")
    if tokens is not None and tokens.shape != logits.shape[:2]:
        raise ValueError(f"tokens {tuple(tokens.shape)} must be logits.shape[:2] = {tuple(logits.shape[:2])}")


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token under the previous position's logits.

    ``out[b, t] = log_softmax(logits[b, t-1])[tokens[b, t]]`` for ``t >= 1``; ``out[b, 0] = 0``.

    Computed as ``gathered_logit - logsumexp`` in float32, which materialises one (B, T-1, V)
    float32 temporary (fine for modest V; ``chunked.chunked_logprobs`` computes the same from the
    hidden states without ever holding the whole logits).

    Args:
        logits: (B, T, V) model outputs (any float dtype; differentiable).
        tokens: (B, T) integer token ids.

    Returns:
        (B, T) float32 log-probs, differentiable w.r.t. ``logits``.
    """
    _check_logits(logits, tokens)
    pred = logits[:, :-1].float()  # (B, T-1, V)
    target = tokens[:, 1:].long().unsqueeze(-1)  # (B, T-1, 1)
    picked = torch.gather(pred, -1, target).squeeze(-1)  # (B, T-1)
    lp = picked - torch.logsumexp(pred, dim=-1)
    return F.pad(lp, (1, 0), value=0.0)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the next-token distribution, shifted like :func:`token_logprobs`.

    ``out[b, t] = H(softmax(logits[b, t-1]))`` for ``t >= 1``; ``out[b, 0] = 0``, so the entropy
    at ``t`` is that of the distribution token ``t`` was drawn from.

    Args:
        logits: (B, T, V).

    Returns:
        (B, T) float32 entropies, differentiable w.r.t. ``logits``.
    """
    _check_logits(logits)
    pred = logits[:, :-1].float()
    logp = torch.log_softmax(pred, dim=-1)
    ent = -(logp.exp() * logp).sum(dim=-1)  # (B, T-1)
    return F.pad(ent, (1, 0), value=0.0)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, x, torch.zeros_like(x)).sum() / n.clamp(min=1)


def _grpo_metrics(
    ratio: torch.Tensor, log_ratio: torch.Tensor, clipped: torch.Tensor, w: torch.Tensor,
    tis_capped: torch.Tensor, mask: torch.Tensor,
) -> dict[str, float]:
    """Diagnostics over masked tokens (all inputs (B, T), detached); one host sync."""
    with torch.no_grad():
        n = mask.sum().to(ratio.dtype)
        ratio_max = torch.where(mask, ratio, torch.full_like(ratio, float("-inf"))).max()
        ratio_max = torch.where(n > 0, ratio_max, torch.zeros_like(ratio_max))
        approx_kl = ratio - 1.0 - log_ratio  # k3 estimator, >= 0
        vals = torch.stack([
            _masked_mean(clipped.to(ratio.dtype), mask, n),
            _masked_mean(ratio, mask, n),
            ratio_max,
            _masked_mean(w, mask, n),
            _masked_mean(tis_capped.to(ratio.dtype), mask, n),
            _masked_mean(approx_kl, mask, n),
            n,
        ]).tolist()
    keys = ("clip_frac", "ratio_mean", "ratio_max", "tis_mean", "tis_clip_frac", "approx_kl", "loss_tokens")
    return dict(zip(keys, (float(v) for v in vals)))


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    infer_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    tis_cap: float | None = 2.0,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Revised GRPO policy loss (Klear-AgentForge style): clip-higher PPO surrogate, no KL term,
    truncated importance sampling (TIS) against the inference engine, token-level normalisation.

    Per token (all (B, T)):
        r   = exp(logp - old_logp)
        pg  = -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)
        w   = min(exp(old_logp - infer_logp), tis_cap)            (detached; 1 if TIS disabled)
        loss = sum(w * pg * mask) / N,   N = num_tokens or mask.sum()

    ``old_logp`` is the trainer's log-prob before the update, ``infer_logp`` the engine's sampled
    log-prob; ``w`` corrects the engine/trainer mismatch. TIS is disabled when ``tis_cap`` is
    None or <= 0, or ``infer_logp`` is None. ``N`` should be the global count of loss tokens
    across data-parallel ranks and micro-batches when gradients are summed; it is clamped to
    >= 1, so an all-zero mask gives a loss of exactly 0 that still has a (zero) gradient.
    Masked positions are replaced by neutral values before any arithmetic, so NaN/inf there
    cannot leak into the loss or gradient.

    Args:
        logp: (B, T) current log-probs (requires grad).
        old_logp: (B, T) log-probs of the policy that the ratio is taken against (detached here).
        infer_logp: (B, T) inference-engine log-probs, or None.
        advantages: (B, T) token advantages, or (B,) broadcast over T (detached here).
        mask: (B, T) bool/0-1: which tokens are policy actions that get loss.
        eps_low, eps_high: asymmetric clip range ``[1 - eps_low, 1 + eps_high]``.
        tis_cap: upper bound on the TIS weight.
        num_tokens: normaliser N (defaults to ``mask.sum()``).

    Returns:
        (loss, metrics): scalar loss; metrics as python floats over masked tokens:
        ``clip_frac`` (tokens whose clipped branch is active, i.e. zero gradient), ``ratio_mean``,
        ``ratio_max``, ``tis_mean``, ``tis_clip_frac`` (tokens where the cap bound),
        ``approx_kl`` (mean of the k3 estimator ``(r - 1) - log r``), ``loss_tokens`` (mask sum).
    """
    if logp.dim() != 2:
        raise ValueError(f"logp must be (B, T), got {tuple(logp.shape)}")
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    m = mask.bool().expand_as(logp)
    zero = torch.zeros_like(logp)
    adv = torch.where(m, advantages.detach().to(logp.dtype).expand_as(logp), zero)

    log_ratio = torch.where(m, logp - old_logp.detach(), zero)  # 0 (r = 1) on masked tokens
    ratio = torch.exp(log_ratio)
    surr = ratio * adv
    surr_clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    pg = -torch.minimum(surr, surr_clipped)

    with torch.no_grad():
        if tis_cap is not None and tis_cap > 0 and infer_logp is not None:
            raw_w = torch.exp(torch.where(m, old_logp.detach() - infer_logp.detach(), zero))
            w = raw_w.clamp(max=tis_cap)
            tis_capped = m & (raw_w > tis_cap)
        else:
            w = torch.ones_like(ratio)
            tis_capped = torch.zeros_like(m)

    denom = m.sum().to(logp.dtype) if num_tokens is None else torch.as_tensor(num_tokens, dtype=logp.dtype)
    loss = (w * pg * m.to(logp.dtype)).sum() / denom.to(logp.device).clamp(min=1.0)

    with torch.no_grad():
        clipped = m & (((ratio > 1.0 + eps_high) & (adv > 0)) | ((ratio < 1.0 - eps_low) & (adv < 0)))
    metrics = _grpo_metrics(ratio.detach(), log_ratio.detach(), clipped, w, tis_capped, m)
    return loss, metrics


def sft_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over the masked target tokens:
    ``sft_loss_from_logprobs(token_logprobs(logits, tokens), mask)``.

    Args:
        logits: (B, T, V).
        tokens: (B, T) integer ids.
        mask: (B, T) bool/0-1 aligned with ``tokens``.

    Returns:
        As :func:`sft_loss_from_logprobs`.
    """
    return sft_loss_from_logprobs(token_logprobs(logits, tokens), mask)


def sft_loss_from_logprobs(
    logp: torch.Tensor, mask: torch.Tensor, num_tokens: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy ``-sum(logp * mask) / N`` from token log-probs (as
    :func:`token_logprobs` or ``chunked.chunked_logprobs`` return them).

    ``mask[b, t] = 1`` means token ``t`` is a target (predicted from position ``t-1``);
    ``mask[:, 0]`` is ignored since token 0 has no prediction. ``N = num_tokens`` (e.g. the
    global target count over ranks, divided by the world size when FSDP averages gradients;
    0 counts as 1) or, by default, this mask's target count clamped to >= 1.

    Args:
        logp: (B, T) token log-probs, column 0 unused.
        mask: (B, T) bool/0-1 aligned with ``logp``.
        num_tokens: normaliser N (defaults to the mask's target count).

    Returns:
        (loss, num_tokens): scalar CE in nats (0 with grad if no targets), and the detached
        0-dim float count of this mask's target tokens (for re-weighting across micro-batches).
    """
    m = mask.bool().clone()
    m[:, 0] = False
    n = m.sum().to(logp.dtype)
    denom = n.clamp(min=1.0) if num_tokens is None else torch.as_tensor(float(num_tokens) or 1.0, dtype=logp.dtype)
    loss = -torch.where(m, logp, torch.zeros_like(logp)).sum() / denom.to(logp.device)
    return loss, n.detach()
