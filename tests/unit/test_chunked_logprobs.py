"""forge_ray.learner.chunked: the chunked LM head + log-softmax against the full-logits path
(loss.token_logprobs / entropy_from_logits), on tensors, on the tiny model, and under FSDP2."""
from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from forge_ray.learner.chunked import IGNORE, chunked_logprobs, model_logprobs, model_token_logprobs, position_logprobs
from forge_ray.learner.loss import entropy_from_logits, sft_loss, sft_loss_from_logprobs, token_logprobs


def _inputs(B=3, T=10, H=6, V=13, dtype=torch.float32, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, H, generator=g, dtype=dtype).requires_grad_(True)
    w = torch.randn(V, H, generator=g, dtype=dtype).requires_grad_(True)
    b = torch.randn(V, generator=g, dtype=dtype).requires_grad_(True) if bias else None
    return h, w, b, torch.randint(0, V, (B, T), generator=g)


def _full(h, w, b, tokens, temperature=1.0):
    """Today's path: the whole (B, T, V) logits, then token_logprobs."""
    return token_logprobs(F.linear(h, w, b).float() / temperature, tokens)


# ---------------------------------------------------------------- tensors


@pytest.mark.parametrize("chunk", [1, 4, 7, 1024])  # 4 and 7 do not divide B * T = 30
def test_gradcheck_float64(chunk):
    h, w, b, tokens = _inputs(B=2, T=5, H=4, V=7, dtype=torch.float64, bias=True)
    fn = lambda h, w, b: chunked_logprobs(h, w, tokens, bias=b, temperature=0.7, chunk=chunk)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h, w, b))


@pytest.mark.parametrize("chunk", [0, 1, 7, 30, 4096])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_matches_full_logits_values_and_gradients(chunk, temperature):
    h, w, b, tokens = _inputs(bias=True)
    upstream = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(1))
    want = _full(h, w, b, tokens, temperature)
    want_grads = torch.autograd.grad((want * upstream).sum(), (h, w, b))
    got, ent = chunked_logprobs(h, w, tokens, bias=b, temperature=temperature, chunk=chunk)
    assert ent is None and got.shape == tokens.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got[:, 0].eq(0).all()
    for g_got, g_want in zip(torch.autograd.grad((got * upstream).sum(), (h, w, b)), want_grads):
        torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=1e-5)


def test_single_chunk_is_bitwise_the_full_path():
    # The learner's "single update equals today's" check needs this when B * T <= chunk.
    h, w, _, tokens = _inputs(B=4, T=32, H=16, V=200)
    upstream = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(1))
    want = _full(h, w, None, tokens)
    got, ent = chunked_logprobs(h, w, tokens, chunk=1024, entropy=True)
    assert torch.equal(got, want)
    torch.testing.assert_close(ent, entropy_from_logits(F.linear(h, w)), atol=1e-5, rtol=1e-5)  # a metric: close is enough
    for g_got, g_want in zip(torch.autograd.grad((got * upstream).sum(), (h, w)), torch.autograd.grad((want * upstream).sum(), (h, w))):
        assert torch.equal(g_got, g_want)


@pytest.mark.parametrize("chunk", [3, 1024])
def test_entropy_matches_and_is_detached(chunk):
    h, w, _, tokens = _inputs()
    lp, ent = chunked_logprobs(h, w, tokens, temperature=0.8, chunk=chunk, entropy=True)
    torch.testing.assert_close(ent, entropy_from_logits(F.linear(h, w) / 0.8), atol=1e-5, rtol=1e-5)
    assert not ent.requires_grad and lp.requires_grad and ent[:, 0].eq(0).all()


def test_bfloat16_inputs_give_float32_like_the_full_path():
    h, w, _, tokens = _inputs(H=32, V=50, dtype=torch.bfloat16)
    got, _ = chunked_logprobs(h, w, tokens, chunk=7)
    want = _full(h, w, None, tokens)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    gh, gw = torch.autograd.grad(got.sum(), (h, w))
    wh, ww = torch.autograd.grad(want.sum(), (h, w))
    assert gh.dtype == gw.dtype == torch.bfloat16
    torch.testing.assert_close(gh, wh, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(gw, ww, atol=5e-2, rtol=2e-2)  # bf16 sums in another order


def test_padding_is_irrelevant_to_the_masked_loss():
    # Changing tokens where the loss mask is 0 (padding) changes neither the masked loss nor a
    # gradient; an IGNORE target gives log-prob 0 and no gradient.
    h, w, _, tokens = _inputs()
    mask = torch.ones(tokens.shape)
    mask[0, 6:], mask[2, 3:] = 0, 0
    padded = torch.where(mask.bool(), tokens, (tokens + 5) % w.shape[0])
    out = []
    for toks in (tokens, padded):
        lp, _ = chunked_logprobs(h, w, toks, chunk=4)
        loss, _ = sft_loss_from_logprobs(lp, mask)
        out.append((loss, *torch.autograd.grad(loss, (h, w))))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    targets = tokens.clone()
    targets[1, 4:] = IGNORE
    lp, _ = position_logprobs(h, w, targets, chunk=4)
    assert lp[1, 4:].eq(0).all()
    gh, = torch.autograd.grad(lp.sum(), h)
    assert gh[1, 4:].eq(0).all() and gh[1, :4].ne(0).any()


def test_sft_loss_from_logprobs_is_sft_loss_and_takes_a_global_count():
    h, w, _, tokens = _inputs()
    mask = (torch.rand(tokens.shape, generator=torch.Generator().manual_seed(2)) > 0.4).float()
    want, n = sft_loss(F.linear(h, w), tokens, mask)
    lp, _ = chunked_logprobs(h, w, tokens, chunk=5)
    got, n2 = sft_loss_from_logprobs(lp, mask)
    torch.testing.assert_close(got, want)
    assert n2 == n
    half, _ = sft_loss_from_logprobs(lp, mask, num_tokens=2 * float(n))
    torch.testing.assert_close(half, want / 2)
    zero, _ = sft_loss_from_logprobs(lp, torch.zeros_like(mask), num_tokens=0)
    assert zero.item() == 0.0


# ---------------------------------------------------------------- models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(tied, untied) tiny Qwen3 folders; the tiny model ties lm_head to embed_tokens."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from forge_ray.models.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("chunked")
    tied = make_tiny_model(root / "tied", vocab_size=512, hidden_size=64, num_layers=2, intermediate_size=128, max_position=64)
    config = AutoConfig.from_pretrained(tied)
    config.tie_word_embeddings = False
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "untied")
    return str(tied), str(root / "untied")


def _grads(model, fn):
    model.zero_grad(set_to_none=True)
    lp, ent = fn()
    (lp * torch.linspace(-1, 1, lp.shape[1])).sum().backward()
    return lp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("which", [0, 1])
def test_model_token_logprobs_match_the_full_logits(tiny, which):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny[which])
    head = model.lm_head
    tokens = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    full = _grads(model, lambda: model_token_logprobs(model, tokens, temperature=0.7, chunk=0, entropy=True))
    chunked = _grads(model, lambda: model_token_logprobs(model, tokens, temperature=0.7, chunk=5, entropy=True))
    one = _grads(model, lambda: model_token_logprobs(model, tokens, temperature=0.7, chunk=1024, entropy=True))
    assert model.lm_head is head  # put back after each call
    assert full[2].keys() == chunked[2].keys() and (which == 0) == ("lm_head.weight" not in full[2])  # tied: one tensor
    for got in (chunked, one):
        torch.testing.assert_close(got[0], full[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1], full[1], atol=1e-5, rtol=1e-5)
        for k in full[2]:
            torch.testing.assert_close(got[2][k], full[2][k], atol=1e-5, rtol=1e-4, msg=k)
    assert torch.equal(one[0], full[0]) and all(torch.equal(one[2][k], full[2][k]) for k in full[2])


def test_model_logprobs_packed_targets_and_position_ids(tiny):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny[0])
    ids = torch.randint(3, 500, (2, 20), generator=torch.Generator().manual_seed(3))
    pos = torch.cat([torch.arange(12), torch.arange(8)]).repeat(2, 1)  # two documents per row
    targets = F.pad(ids[:, 1:], (0, 1), value=IGNORE)
    targets[:, 11] = IGNORE  # no target across the document boundary
    logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits.float()  # as midtrain calls it
    want = -F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none").view(2, 20)
    got, _ = model_logprobs(model, ids, targets, chunk=6, position_ids=pos)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got[:, 11].eq(0).all() and got[:, 19].eq(0).all()


def test_model_that_transforms_its_head_output_is_refused():
    class Capped(torch.nn.Module):  # like final_logit_softcapping: the head's output is changed
        def __init__(self):
            super().__init__()
            self.lm_head = torch.nn.Linear(4, 9, bias=False)

        def forward(self, input_ids, use_cache=False):
            return types.SimpleNamespace(logits=torch.tanh(self.lm_head(torch.ones(*input_ids.shape, 4))))

    model = Capped()
    head = model.lm_head
    with pytest.raises(RuntimeError, match="chunk 0"):
        model_token_logprobs(model, torch.zeros(1, 3, dtype=torch.long))
    assert model.lm_head is head  # restored
    lp, _ = model_token_logprobs(model, torch.zeros(1, 3, dtype=torch.long), chunk=0)
    assert lp.shape == (1, 3)


# ---------------------------------------------------------------- FSDP2, 2 gloo ranks


def _fsdp_rank(rank: int, port: int, paths: tuple[str, str], queue) -> None:
    import os

    import torch.distributed as dist

    from forge_ray.learner.fsdp import build_model

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        tokens = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(rank))
        errors = []
        for path in paths:
            runs = {}
            for chunk in (0, 7):
                model = build_model(path)
                for _ in range(2):  # the second pass runs on an initialised FSDP state; grads accumulate
                    lp, _ = model_token_logprobs(model, tokens, temperature=0.8, chunk=chunk)
                    (lp * torch.linspace(-1, 1, 24)).sum().backward()
                runs[chunk] = (lp.detach(), {n: p.grad.full_tensor() for n, p in model.named_parameters()})
            (lp0, g0), (lp7, g7) = runs[0], runs[7]
            errors.append((float((lp0 - lp7).abs().max()), max(float((g0[k] - g7[k]).abs().max() / g0[k].abs().max()) for k in g0), len(g0)))
        queue.put((rank, errors))
    finally:
        dist.destroy_process_group()


def test_fsdp2_two_ranks_gradients_match_full_logits(tiny):
    from gloo_ranks import run_ranks

    results = run_ranks(_fsdp_rank, (tiny,))
    assert sorted(results) == [0, 1]
    for errors in results.values():
        (lp_tied, g_tied, n_tied), (lp_untied, g_untied, n_untied) = errors
        assert n_untied == n_tied + 1  # the untied model's lm_head.weight got a gradient too
        assert lp_tied < 1e-5 and lp_untied < 1e-5 and g_tied < 1e-5 and g_untied < 1e-5


@pytest.mark.parametrize("chunk", [4, 1024])
def test_scoring_a_few_tokens_skips_the_rest_and_matches_the_full_path(tiny, chunk):
    """With ``score`` marking a few tokens (an RL batch: the sampled ones) the head runs only on
    their positions; values, entropies and gradients equal the full path's there, 0 elsewhere."""
    from transformers import AutoModelForCausalLM

    from forge_ray.learner import chunked

    model = AutoModelForCausalLM.from_pretrained(tiny[1])
    tokens = torch.randint(3, 500, (3, 20), generator=torch.Generator().manual_seed(5))
    score = torch.zeros(3, 20, dtype=torch.bool)
    score[:, 14:18] = True  # 12 of 60 tokens: sparse
    assert chunked._picked(F.pad(score[:, 1:], (0, 1))) is not None
    full = _grads(model, lambda: tuple(x * score if x is not None else x for x in model_token_logprobs(model, tokens, chunk=0, entropy=True)))
    sparse = _grads(model, lambda: model_token_logprobs(model, tokens, chunk=chunk, entropy=True, score=score))
    torch.testing.assert_close(sparse[0], full[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse[1], full[1], atol=1e-5, rtol=1e-5)
    assert sparse[0][~score].eq(0).all() and sparse[1][~score].eq(0).all()
    for k in full[2]:
        torch.testing.assert_close(sparse[2][k], full[2][k], atol=1e-6, rtol=1e-4, msg=k)
