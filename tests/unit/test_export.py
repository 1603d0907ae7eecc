"""`forge-ray export`: an RL checkpoint's policy (torch DCP shards) as a Hugging Face folder."""
from __future__ import annotations

import pytest
import torch

from forge_ray.checkpoint import export_hf
from forge_ray.cli import main
from forge_ray.models.tiny import make_tiny_model


@pytest.fixture(scope="module")
def run_with_checkpoint(tmp_path_factory):
    """A run directory holding an SFT folder and an RL checkpoint whose weights moved away from it."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM

    ckpts = tmp_path_factory.mktemp("run") / "checkpoints"
    sft = make_tiny_model(ckpts / "sft", seed=0, num_layers=1, hidden_size=64, intermediate_size=128)
    model = AutoModelForCausalLM.from_pretrained(sft)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    dcp.save({"model": model.state_dict(), "optim": {}}, checkpoint_id=str(ckpts / "rl-step-000003" / "learner"))
    (ckpts / "latest").write_text("rl-step-000003")
    return ckpts, model


def test_export_writes_the_checkpoints_weights(run_with_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    ckpts, trained = run_with_checkpoint
    out = export_hf(ckpts / "rl-step-000003", tmp_path / "hf")
    exported = AutoModelForCausalLM.from_pretrained(out)
    sft = AutoModelForCausalLM.from_pretrained(ckpts / "sft")
    for name, p in trained.state_dict().items():
        assert torch.equal(exported.state_dict()[name], p), name
        assert not torch.equal(sft.state_dict()[name], p), name  # the checkpoint's weights, not the starting ones
    ids = torch.tensor([[1, 5, 9, 13]])
    assert torch.equal(exported(ids).logits, trained(ids).logits)
    assert (out / "tokenizer.json").exists()


def test_export_cli_follows_latest_and_rejects_other_folders(run_with_checkpoint, tmp_path, capsys):
    ckpts, _ = run_with_checkpoint
    assert main(["export", str(ckpts / "latest"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").exists()
    with pytest.raises(FileNotFoundError, match="not an RL checkpoint"):
        export_hf(ckpts / "sft", tmp_path / "bad")
