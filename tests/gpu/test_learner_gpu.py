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
