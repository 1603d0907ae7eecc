"""Unit tests for forge_ray.learner.loss. Expected values are derived by hand in comments."""
import math

import torch

from forge_ray.learner.loss import entropy_from_logits, grpo_loss, sft_loss, token_logprobs

LN = math.log


def _hand_logits() -> torch.Tensor:
    # V = 3, B = 1, T = 3.
    # logits[0,0] = [0,0,0]          -> probs [1/3, 1/3, 1/3]
    # logits[0,1] = log([1,2,1])     -> probs [1/4, 1/2, 1/4]
    # logits[0,2] = [5,-5,0]         -> last position: predicts nothing inside the sequence
    return torch.tensor([[[0.0, 0.0, 0.0], [0.0, LN(2), 0.0], [5.0, -5.0, 0.0]]])


# ---------------------------------------------------------------- token_logprobs / entropy


def test_token_logprobs_shift():
    logits = _hand_logits()
    tokens = torch.tensor([[2, 1, 1]])
    # out[0] = 0 (no prediction); out[1] = log p(1 | uniform) = log(1/3);
    # out[2] = log p(1 | [1/4,1/2,1/4]) = log(1/2)
    expected = torch.tensor([[0.0, LN(1 / 3), LN(1 / 2)]])
    torch.testing.assert_close(token_logprobs(logits, tokens), expected)
    # the last position's logits are never used, nor is tokens[:, 0]
    logits2 = logits.clone()
    logits2[0, 2] = torch.tensor([-9.0, 9.0, 1.0])
    torch.testing.assert_close(token_logprobs(logits2, torch.tensor([[0, 1, 1]])), expected)


def test_token_logprobs_bf16_returns_float32_and_grads():
    logits = _hand_logits().to(torch.bfloat16).requires_grad_(True)
    out = token_logprobs(logits, torch.tensor([[2, 1, 1]]))
    assert out.dtype == torch.float32 and out.shape == (1, 3)
    out.sum().backward()
    # d log p_k / d logit_j = 1[j=k] - p_j: at position 0 (predicts token 1, uniform):
    # [-1/3, 2/3, -1/3]; at the last position: no gradient.
    torch.testing.assert_close(logits.grad[0, 0].float(), torch.tensor([-1 / 3, 2 / 3, -1 / 3]), atol=1e-2, rtol=0)
    assert logits.grad[0, 2].eq(0).all()


def test_entropy_shift():
    # H(uniform over 3) = ln 3
    # H([1/4,1/2,1/4]) = -(2 * 1/4 * ln(1/4) + 1/2 * ln(1/2)) = 1/2 ln4 + 1/2 ln2 = 1.5 ln 2
    expected = torch.tensor([[0.0, LN(3), 1.5 * LN(2)]])
    torch.testing.assert_close(entropy_from_logits(_hand_logits()), expected)


# ---------------------------------------------------------------- sft_loss


def test_sft_loss_uniform_is_log_v():
    # uniform logits over V = 5: CE of any target = -log(1/5) = log 5
    logits = torch.zeros(2, 4, 5)
    tokens = torch.tensor([[0, 1, 2, 3], [4, 4, 0, 1]])
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])  # mask[:, 0] is ignored -> 2 + 3 targets
    loss, n = sft_loss(logits, tokens, mask)
    torch.testing.assert_close(loss, torch.tensor(LN(5)))
    assert n.item() == 5


def test_sft_loss_hand_values_and_empty():
    logits = _hand_logits()
    tokens = torch.tensor([[0, 2, 1]])
    # target t=1 (token 2 under uniform): CE = ln 3; target t=2 (token 1 under [1/4,1/2,1/4]): ln 2
    loss, n = sft_loss(logits, tokens, torch.tensor([[1, 1, 1]]))
    torch.testing.assert_close(loss, torch.tensor((LN(3) + LN(2)) / 2))
    assert n.item() == 2
    loss, n = sft_loss(logits, tokens, torch.tensor([[0, 0, 1]]))
    torch.testing.assert_close(loss, torch.tensor(LN(2)))
    # no targets: loss 0, still differentiable, no NaN
    lg = logits.clone().requires_grad_(True)
    loss, n = sft_loss(lg, tokens, torch.zeros(1, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and n.item() == 0 and lg.grad.eq(0).all()


# ---------------------------------------------------------------- grpo_loss


def _t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_grpo_on_policy_single_token():
    # r = 1, w = exp(0) = 1, A = 2 -> pg = -min(2, 2) = -2, loss = -2 / 1
    # d loss / d logp = -A * r * w / N = -2
    logp = _t([0.0]).requires_grad_(True)
    loss, m = grpo_loss(logp, _t([0.0]), _t([0.0]), _t([2.0]), torch.ones(1, 1))
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(-2.0))
    torch.testing.assert_close(logp.grad, _t([-2.0]))
    assert m["clip_frac"] == 0.0 and m["loss_tokens"] == 1.0 and m["ratio_mean"] == 1.0


def test_grpo_gradient_unclipped_with_tis_and_num_tokens():
    # logp = ln 1.1, old = 0 -> r = 1.1 (inside [0.8, 1.28]); A = 3
    # infer = -ln 1.5 -> w = exp(0 - (-ln 1.5)) = 1.5 (< cap 2); N = 4 (given)
    # loss = w * (-r A) / N = -(1.5 * 1.1 * 3) / 4 = -1.2375
    # d loss/d logp = -A * (dr/dlogp) * w / N = -A * r * w / N = -1.2375
    logp = _t([LN(1.1)]).requires_grad_(True)
    infer = _t([-LN(1.5)]).requires_grad_(True)
    loss, m = grpo_loss(logp, _t([0.0]), infer, _t([3.0]), torch.ones(1, 1), num_tokens=4)
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(-1.2375))
    torch.testing.assert_close(logp.grad, _t([-1.2375]))
    assert infer.grad is None  # TIS weight is detached
    assert abs(m["tis_mean"] - 1.5) < 1e-6 and m["tis_clip_frac"] == 0.0


def test_grpo_clipping_both_sides():
    # old = 0 everywhere, w = 1 (infer = old), N = 4, eps_low .2, eps_high .28:
    # tok0: r=1.5, A=+1: min(1.5, 1.28) = 1.28 (clipped)    -> pg -1.28, grad 0
    # tok1: r=1.5, A=-1: min(-1.5, -1.28) = -1.5 (unclipped) -> pg +1.5, grad -A r/N = 1.5/4 = .375
    # tok2: r=0.5, A=-1: min(-0.5, -0.8) = -0.8 (clipped)    -> pg +0.8, grad 0
    # tok3: r=0.5, A=+1: min(0.5, 0.8) = 0.5 (unclipped)     -> pg -0.5, grad -0.5/4 = -.125
    # loss = (-1.28 + 1.5 + 0.8 - 0.5) / 4 = 0.52 / 4 = 0.13
    logp = _t([LN(1.5), LN(1.5), LN(0.5), LN(0.5)]).requires_grad_(True)
    old = torch.zeros(1, 4)
    loss, m = grpo_loss(logp, old, old, _t([1.0, -1.0, -1.0, 1.0]), torch.ones(1, 4))
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(0.13))
    torch.testing.assert_close(logp.grad, _t([0.0, 0.375, 0.0, -0.125]))
    # clip_frac = 2/4; ratio_mean = (1.5+1.5+.5+.5)/4 = 1; ratio_max = 1.5
    assert m["clip_frac"] == 0.5
    assert abs(m["ratio_mean"] - 1.0) < 1e-6 and abs(m["ratio_max"] - 1.5) < 1e-6


def test_grpo_tis_cap_and_disable():
    # r = 1 (logp = old = 0), A = [1, 1], N = 2
    # tok0: infer = -ln 3 -> raw w = 3 -> capped to 2;  tok1: infer = ln 2 -> w = 0.5
    # loss = (2 * -1 + 0.5 * -1) / 2 = -1.25; tis_mean = (2 + .5)/2 = 1.25; tis_clip_frac = 1/2
    logp, old, adv, mask = torch.zeros(1, 2), torch.zeros(1, 2), _t([1.0, 1.0]), torch.ones(1, 2)
    infer = _t([-LN(3), LN(2)])
    loss, m = grpo_loss(logp, old, infer, adv, mask)
    torch.testing.assert_close(loss, torch.tensor(-1.25))
    assert abs(m["tis_mean"] - 1.25) < 1e-6 and m["tis_clip_frac"] == 0.5
    # TIS disabled (cap None / 0 / no infer_logp): w = 1 -> loss = (-1 - 1) / 2 = -1
    for kw, inf in (({"tis_cap": None}, infer), ({"tis_cap": 0.0}, infer), ({}, None)):
        loss, m = grpo_loss(logp, old, inf, adv, mask, **kw)
        torch.testing.assert_close(loss, torch.tensor(-1.0))
        assert m["tis_mean"] == 1.0 and m["tis_clip_frac"] == 0.0


def test_grpo_token_normalisation_and_adv_broadcast():
    # r = 1, w = 1, A = [1, 3] -> sum pg = -4; default N = mask.sum() = 2 -> -2; N = 10 -> -0.4
    logp = torch.zeros(1, 2)
    loss, _ = grpo_loss(logp, logp, logp, _t([1.0, 3.0]), torch.ones(1, 2))
    torch.testing.assert_close(loss, torch.tensor(-2.0))
    loss, m = grpo_loss(logp, logp, logp, _t([1.0, 3.0]), torch.ones(1, 2), num_tokens=10)
    torch.testing.assert_close(loss, torch.tensor(-0.4))
    assert m["loss_tokens"] == 2.0
    # (B,) advantages broadcast over T: A = 2 on all 3 tokens -> loss = -2*3/3 = -2
    loss, _ = grpo_loss(torch.zeros(1, 3), torch.zeros(1, 3), None, torch.tensor([2.0]), torch.ones(1, 3))
    torch.testing.assert_close(loss, torch.tensor(-2.0))


def test_grpo_masked_tokens_contribute_nothing():
    mask = torch.tensor([[1, 0, 1]], dtype=torch.bool)
    adv = _t([1.0, 5.0, -2.0])

    def run(mid_logp, mid_old, mid_infer, mid_adv):
        logp = _t([LN(1.1), mid_logp, LN(0.9)]).requires_grad_(True)
        old = _t([0.0, mid_old, 0.0])
        infer = _t([0.0, mid_infer, 0.0])
        a = adv.clone()
        a[0, 1] = mid_adv
        loss, m = grpo_loss(logp, old, infer, a, mask)
        loss.backward()
        return loss.detach(), logp.grad, m

    base = run(0.0, 0.0, 0.0, 5.0)
    # tok0: r 1.1, A 1 -> pg -1.1; tok2: r 0.9, A -2 -> min(-1.8, -1.8) -> pg 1.8; N = 2
    # loss = (-1.1 + 1.8) / 2 = 0.35
    torch.testing.assert_close(base[0], torch.tensor(0.35))
    for vals in ((3.0, -4.0, 7.0, -100.0), (-math.inf, -math.inf, math.nan, math.inf)):
        other = run(*vals)
        torch.testing.assert_close(other[0], base[0])
        torch.testing.assert_close(other[1], base[1])
        assert other[1][0, 1].item() == 0.0
        assert other[2] == base[2]
    assert base[2]["loss_tokens"] == 2.0


def test_grpo_empty_mask():
    logp = torch.randn(2, 3).requires_grad_(True)
    loss, m = grpo_loss(logp, torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3), torch.zeros(2, 3))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logp.grad.eq(0).all()
    assert m["loss_tokens"] == 0.0
    assert all(math.isfinite(v) for v in m.values())


def test_grpo_approx_kl_k3():
    # tok0: log r = ln 2, r = 2: (r - 1) - log r = 1 - ln 2 = 0.306853; tok1: r = 1 -> 0
    # mean over 2 masked tokens = 0.153426 (tok2 masked out, would be large)
    logp = _t([LN(2), 0.0, 3.0])
    old = torch.zeros(1, 3)
    _, m = grpo_loss(logp, old, old, _t([1.0, 1.0, 1.0]), torch.tensor([[1, 1, 0]]))
    assert abs(m["approx_kl"] - (1 - LN(2)) / 2) < 1e-6
    assert all(isinstance(v, float) for v in m.values())
