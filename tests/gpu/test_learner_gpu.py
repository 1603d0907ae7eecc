"""GPU tier: the learner maths and one FSDP2 step on CUDA. Skipped without a GPU."""
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_grpo_loss_on_cuda_matches_cpu():
    from forge_ray.learner.loss import grpo_loss

    g = torch.Generator().manual_seed(0)
    logp = torch.randn(4, 16, generator=g) - 2
    infer = logp + 0.05 * torch.randn(4, 16, generator=g)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    mask = (torch.rand(4, 16, generator=g) > 0.3).float()
    cpu, _ = grpo_loss(logp, logp, infer, adv, mask)
    gpu, _ = grpo_loss(logp.cuda(), logp.cuda(), infer.cuda(), adv.cuda(), mask.cuda())
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-6)


def test_tiny_model_train_step_on_cuda(tmp_path):
    from forge_ray.learner.fsdp import build_model
    from forge_ray.learner.loss import token_logprobs
    from forge_ray.models.tiny import make_tiny_model

    model = build_model(str(make_tiny_model(tmp_path / "tiny")), "float32", "cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(3, 500, (2, 32), device="cuda")
    losses = []
    for _ in range(5):
        loss = -token_logprobs(model(input_ids=tokens).logits, tokens)[:, 1:].mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_logprobs_match_full_logits_on_cuda(dtype):
    import torch.nn.functional as F

    from forge_ray.learner.chunked import chunked_logprobs
    from forge_ray.learner.loss import grpo_loss, token_logprobs

    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(2, 300, 64, device="cuda", generator=g).to(dtype).requires_grad_(True)
    w = (0.1 * torch.randn(5000, 64, device="cuda", generator=g)).to(dtype).requires_grad_(True)
    tokens = torch.randint(0, 5000, (2, 300), device="cuda", generator=g)
    mask = (torch.rand(2, 300, device="cuda", generator=g) > 0.2).float()
    adv = torch.tensor([1.0, -0.5], device="cuda")

    def loss_and_grads(logp):
        loss, _ = grpo_loss(logp, logp.detach() - 0.01, None, adv, mask)
        return (logp.detach(), loss.detach(), *torch.autograd.grad(loss, (h, w)))

    full = loss_and_grads(token_logprobs(F.linear(h, w).float() / 0.9, tokens))
    chunked = loss_and_grads(chunked_logprobs(h, w, tokens, temperature=0.9, chunk=128)[0])  # 600 rows: 5 chunks
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    for got, want in zip(chunked, full):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got.float(), want.float(), **tol)


def test_bf16_learner_is_mixed_precision_and_chunked_matches_full(tmp_path):
    """build_model(bfloat16, cuda) in a process group: float32 master weights, bfloat16 compute
    (FSDP2 MixedPrecisionPolicy); the chunked loss and gradients match the full-logits ones, and
    gathered weights come back as bfloat16."""
    import socket

    import torch.distributed as dist

    from forge_ray.learner.chunked import model_token_logprobs
    from forge_ray.learner.fsdp import build_model, full_state_dict, init_distributed
    from forge_ray.models.tiny import make_tiny_model

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    init_distributed(0, 1, "127.0.0.1", port, "cuda")
    try:
        model = build_model(str(make_tiny_model(tmp_path / "tiny")), "bfloat16", "cuda")
        assert all(p.dtype == torch.float32 for p in model.parameters())
        tokens = torch.randint(3, 500, (2, 96), device="cuda")
        runs = []
        for chunk in (0, 64):
            lp, ent = model_token_logprobs(model, tokens, temperature=0.8, chunk=chunk, entropy=True)
            loss = -lp[:, 1:].mean()
            loss.backward()
            grads = {n: p.grad.full_tensor().clone() for n, p in model.named_parameters()}
            model.zero_grad(set_to_none=True)
            runs.append((lp.detach(), ent, loss.detach(), grads))
        (lp0, ent0, loss0, g0), (lp1, ent1, loss1, g1) = runs
        assert lp0.dtype == torch.float32 and all(g.dtype == torch.float32 for g in g0.values())
        torch.testing.assert_close(lp1, lp0, atol=3e-2, rtol=3e-2)  # bf16 logits, another kernel per shape
        torch.testing.assert_close(ent1, ent0, atol=3e-2, rtol=3e-2)
        torch.testing.assert_close(loss1, loss0, atol=5e-3, rtol=5e-3)
        for k in g0:  # relative to the gradient's norm: bf16 rounding differs elementwise
            assert (g1[k] - g0[k]).norm() <= 3e-2 * g0[k].norm() + 1e-6, k
        state = full_state_dict(model)
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.bfloat16}
    finally:
        dist.destroy_process_group()
