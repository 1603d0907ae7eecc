"""Memory-bounded token log-probabilities: the LM head and the log-softmax, chunk by chunk.

Pure torch (no Ray; the only project import is :mod:`forge_ray.learner.loss`). Shapes: ``B``
batch, ``T`` tokens, ``H`` hidden size, ``V`` vocab, ``N = B * T`` positions.

The full-logits path holds ``(B, T, V)`` logits and float32 copies of them until the backward.
Here the head runs on ``chunk`` positions at a time, keeping only each position's log-prob and
log-sum-exp; the backward recomputes each chunk's logits. Extra memory: O(chunk * V) logits,
O(N * H) hidden states and their gradient, O(V * H) float32 weight gradient; never O(N * V).

Alignment: :func:`position_logprobs` scores ``targets[:, t]`` from position ``t`` (targets already
shifted, ``-100`` = none); :func:`chunked_logprobs` follows :func:`loss.token_logprobs`
(``out[:, t]`` is token ``t`` predicted from position ``t - 1``, ``out[:, 0] = 0``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from forge_ray.learner.loss import entropy_from_logits, token_logprobs

__all__ = ["IGNORE", "position_logprobs", "chunked_logprobs", "model_logprobs", "model_token_logprobs"]

IGNORE = -100  # a target without a prediction (as in ``F.cross_entropy``)


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """One chunk's logits as the full path makes them, ``head(h).float() / temperature``, in a
    fresh tensor (callers overwrite it). float64 stays float64 (for gradcheck)."""
    logits = F.linear(h, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits.div_(temperature) if temperature != 1.0 else logits


def _entropy_(lf: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of ``softmax(lf)`` over the last dim, given its log-sum-exp; overwrites ``lf``."""
    logp = lf.sub_(lse.unsqueeze(-1))
    return -logp.exp().mul_(logp).sum(dim=-1)


SPARSE_BELOW = 0.5  # skip positions without a target when they are more than half of all


def _picked(valid: torch.Tensor) -> torch.Tensor | None:
    """Indices of the flattened positions to score, or None for all of them: the head is run
    only where a target is wanted once most positions have none (an RL batch: prompts and
    observations carry no loss)."""
    flat = valid.flatten()
    n = int(flat.sum())
    return flat.nonzero()[:, 0] if n < SPARSE_BELOW * flat.numel() else None


class _HeadLogprobs(torch.autograd.Function):
    """``hidden`` (B, T, H) -> log-prob of ``targets`` (B, T) and, if asked, entropy (detached);
    inside, the B * T positions are rows, taken ``chunk`` at a time, with at most two
    (chunk, V) float32 tensors alive; when most positions have no target only the others are
    computed (``_picked``). The outputs are fresh tensors, not views (FSDP2 warns about a root
    module that returns a view)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                temperature: float, chunk: int, entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        valid = targets != IGNORE
        pick = _picked(valid)
        tgt = torch.where(valid, targets, 0).long().flatten()
        acc = torch.promote_types(hidden.dtype, torch.float32)
        rows = hidden.reshape(-1, hidden.shape[-1])
        n = rows.shape[0] if pick is None else pick.numel()
        lp = hidden.new_zeros(targets.shape, dtype=acc)
        lse = hidden.new_empty(n, dtype=acc)
        ent = hidden.new_zeros(targets.shape if entropy else (0,), dtype=acc)
        for s in range(0, n, chunk):
            at = slice(s, s + chunk) if pick is None else pick[s : s + chunk]
            lf = _logits(rows[at], weight, bias, temperature)
            lse[s : s + chunk] = torch.logsumexp(lf, dim=-1)
            lp.view(-1)[at] = torch.gather(lf, -1, tgt[at, None])[:, 0] - lse[s : s + chunk]
            if entropy:
                ent.view(-1)[at] = _entropy_(lf, lse[s : s + chunk])
        ctx.save_for_backward(hidden, weight, bias, tgt, valid, lse, pick)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(ent)
        return torch.where(valid, lp, 0.0), ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_lp: torch.Tensor, _g_ent: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """d lp / d logit_j = 1[j = target] - p_j, then the head's matmul backward, per chunk; the
        same operations as autograd takes through the full path (bitwise equal for one chunk)."""
        hidden, weight, bias, tgt, valid, lse, pick = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g = torch.where(valid, g_lp, 0.0).to(lse.dtype).flatten()
        acc, rows, c = lse.dtype, hidden.reshape(-1, hidden.shape[-1]), ctx.chunk
        gh = (torch.empty_like(rows) if pick is None else torch.zeros_like(rows)) if need_h else None
        gw = gb = None  # float32 sums over the chunks
        for s in range(0, lse.numel(), c):
            at = slice(s, s + c) if pick is None else pick[s : s + c]
            h, gc = rows[at], g[at]
            gl = _logits(h, weight, bias, ctx.temperature).sub_(lse[s : s + c, None]).exp_().mul_(-gc[:, None])  # logsumexp bwd
            gl.scatter_add_(-1, tgt[at, None], gc[:, None])  # gather backward
            gl = (gl.div_(ctx.temperature) if ctx.temperature != 1.0 else gl).to(hidden.dtype)
            if need_h:
                gh[at] = gl.mm(weight)
            if need_w:
                gw = gl.t().mm(h).to(acc) if gw is None else gw.add_(gl.t().mm(h))
            if need_b:
                gb = gl.sum(0).to(acc) if gb is None else gb.add_(gl.sum(0))
        gh = gh.view_as(hidden) if need_h else None
        return gh, (None if gw is None else gw.to(weight.dtype)), (None if gb is None else gb.to(bias.dtype)), None, None, None, None


def position_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, bias: torch.Tensor | None = None,
    temperature: float = 1.0, chunk: int = 1024, entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of ``targets[b, t]`` under ``softmax(head(hidden[b, t]) / temperature)``,
    ``chunk`` positions (of all ``B * T``) at a time.

    Args:
        hidden: (B, T, H) final (normed) hidden states (differentiable).
        weight: (V, H) output embedding (differentiable); ``bias``: (V,) or None.
        targets: (B, T) token ids; ``IGNORE`` (-100) gives log-prob 0 and no gradient.
        temperature: divides the float32 logits, as the sampler did.
        chunk: positions per chunk (<= 0: all at once).
        entropy: also return the entropy (nats) of each position's distribution, detached
            (a metric: it has no gradient).

    Returns:
        (logp, ent): (B, T) float32 (float64 for float64 inputs) log-probs and entropies or None.
    """
    B, T, H = hidden.shape
    if targets.shape != (B, T):
        raise ValueError(f"targets {tuple(targets.shape)} must be hidden.shape[:2] = {(B, T)}")
    lp, ent = _HeadLogprobs.apply(hidden, weight, bias, targets, float(temperature), chunk if chunk > 0 else max(B * T, 1), entropy)
    return lp, (ent if entropy else None)


def _shift(x: torch.Tensor) -> torch.Tensor:
    """Per-position (predicting ``t + 1``) -> per-token (token ``t``): ``out[:, 0] = 0``."""
    return F.pad(x[:, :-1], (1, 0), value=0.0)


def chunked_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, *, bias: torch.Tensor | None = None,
    temperature: float = 1.0, chunk: int = 1024, entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`loss.token_logprobs` (and :func:`loss.entropy_from_logits`, detached) of the logits
    ``head(hidden).float() / temperature`` without ever holding them whole; arguments as in
    :func:`position_logprobs`, with ``tokens`` (B, T) in place of ``targets``."""
    targets = F.pad(tokens[:, 1:], (0, 1), value=IGNORE)
    lp, ent = position_logprobs(hidden, weight, targets, bias=bias, temperature=temperature, chunk=chunk, entropy=entropy)
    return _shift(lp), (None if ent is None else _shift(ent))


class _LogprobHead(torch.nn.Module):
    """Stands in for ``model.lm_head`` during one forward and returns log-probs, not logits.

    It runs inside the root module's forward, so under FSDP2 it reads the head's unsharded
    weight (tied to the embedding or not) and its gradient is reduced like any other."""

    def __init__(self, head: torch.nn.Linear, targets: torch.Tensor, temperature: float, chunk: int, entropy: bool):
        super().__init__()
        self.__dict__["head"] = head  # not registered: parameter names stay the model's own
        self.targets, self.temperature, self.chunk, self.want_entropy = targets, temperature, chunk, entropy
        self.out, self.entropy = None, None  # (B, T) results of the forward

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        targets = self.targets.to(hidden.device)  # FSDP2 moves the model's inputs, not these
        self.out, self.entropy = position_logprobs(hidden, self.head.weight, targets, bias=self.head.bias,
                                                   temperature=self.temperature, chunk=self.chunk, entropy=self.want_entropy)
        return self.out


def model_logprobs(
    model: Any, input_ids: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0, chunk: int = 1024,
    entropy: bool = False, **model_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`position_logprobs` of a Hugging Face causal LM (``model.lm_head`` a Linear) run on
    ``input_ids`` (and ``model_kwargs``, e.g. ``position_ids``). ``chunk <= 0`` takes the full
    logits instead (models that change the head's output, e.g. by soft-capping, need it)."""
    if chunk <= 0:
        logits = model(input_ids=input_ids, use_cache=False, **model_kwargs).logits.float() / temperature
        lp = -F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none")
        with torch.no_grad():
            return lp.view_as(targets), (_entropy_(logits.clone(), torch.logsumexp(logits, -1)) if entropy else None)
    head = model.lm_head
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"chunked log-probs need model.lm_head to be a Linear, got {type(head).__name__}")
    proxy = _LogprobHead(head, targets, temperature, chunk, entropy)
    model.lm_head = proxy
    try:
        out = model(input_ids=input_ids, use_cache=False, **model_kwargs).logits
    finally:
        model.lm_head = head
    if out is not proxy.out:
        raise RuntimeError(f"{type(model).__name__} transforms its head's output (soft-capping, scaling?): use chunk 0")
    return out, proxy.entropy


def model_token_logprobs(
    model: Any, tokens: torch.Tensor, *, temperature: float = 1.0, chunk: int = 1024, entropy: bool = False,
    score: torch.Tensor | None = None, **model_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``token_logprobs(model(tokens).logits.float() / temperature, tokens)`` and, with ``entropy``,
    the detached ``entropy_from_logits`` of the same logits, chunked as in :func:`model_logprobs`.
    ``score`` (B, T), when given, marks the tokens whose log-prob (and entropy) is wanted: the
    others come back 0 and, on the chunked path, their positions skip the LM head when they are
    most of the batch (an RL batch's prompts and observations)."""
    if chunk <= 0:  # the full-logits path
        logits = model(input_ids=tokens, use_cache=False, **model_kwargs).logits.float() / temperature
        with torch.no_grad():
            ent = entropy_from_logits(logits) if entropy else None
        return token_logprobs(logits, tokens), ent
    targets = F.pad(tokens[:, 1:], (0, 1), value=IGNORE)
    if score is not None:
        targets = targets.masked_fill(~F.pad(score[:, 1:].bool(), (0, 1), value=False), IGNORE)
    lp, ent = model_logprobs(model, tokens, targets, temperature=temperature, chunk=chunk, entropy=entropy, **model_kwargs)
    return _shift(lp), (None if ent is None else _shift(ent))
