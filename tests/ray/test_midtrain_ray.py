"""Mid-training through Ray Train on 2 gloo workers: two stages in order, the loss goes down, the
HF folder loads, and a run stopped after step 5 resumes from its checkpoint to the same result
as the uninterrupted run."""
from __future__ import annotations

import random
import shutil

import pytest

SEQ_LEN, ROWS, BATCH, EPOCHS = 64, 8, 4, 2  # 2 batches x 2 epochs = 4 steps per stage, 8 in all
STAGES = ("general", "python")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from forge_ray.data.pack import pack, write_shards
    from forge_ray.models.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("midtrain")
    model = make_tiny_model(root / "tiny", seed=0, vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                            num_kv_heads=2, intermediate_size=128, max_position=SEQ_LEN)
    stages = []
    for k, name in enumerate(STAGES):
        rng = random.Random(k)
        motif = [rng.randrange(3, 250) for _ in range(12)]  # repetitive documents: quick to learn
        docs = [[motif[(i + j) % 12] for j in range(rng.randint(8, 30))] + [2] for i in range(3 * ROWS)]
        rows = pack(docs, SEQ_LEN)[:ROWS]
        assert len(rows) == ROWS
        paths = write_shards(rows, root / "data", name, SEQ_LEN, pad_id=0, rows_per_shard=3)
        stages.append({"name": name, "shards": [str(p) for p in paths]})
    return root, str(model), stages


def _run(root, model, stages, sub, **kw):
    from forge_ray.train.midtrain import run_midtrain

    return run_midtrain(stages, model, root / sub / "model", "cpu", lr=3e-3, batch_size=BATCH, epochs=EPOCHS,
                        seq_len=SEQ_LEN, num_workers=2, seed=0, report_every=4, **kw)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_two_stages_then_resume(ray_cluster, setup):
    import torch
    from transformers import AutoModelForCausalLM

    from forge_ray.train.midtrain import token_loss
    from forge_ray.train.sft import _lr_at

    root, model, stages = setup
    train = [p for s in stages for p in s["shards"]]
    ref = _run(root, model, stages, "ref", checkpoint_every=2)
    # Ray Train v2 takes one report per ~2 s (its result queue holds one), so report every 4 steps.
    assert [(m["step"], m["stage"]) for m in ref] == [(4, "general"), (8, "python")]
    assert [m["lr"] for m in ref] == pytest.approx([_lr_at(3, 8, 3e-3), _lr_at(7, 8, 3e-3)])
    assert 0 < ref[0]["tokens"] < ref[1]["tokens"]
    AutoModelForCausalLM.from_pretrained(root / "ref" / "model")
    before, after = token_loss(model, train, SEQ_LEN), token_loss(str(root / "ref" / "model"), train, SEQ_LEN)
    assert after["tokens"] == before["tokens"] == ref[-1]["tokens"] // EPOCHS
    assert after["loss"] < before["loss"] - 0.5, (before, after)
    assert [p.name for p in (root / "ref" / "midtrain-resume").glob("midtrain-step-*")] == ["midtrain-step-000008"]

    # Stop after step 5 (the 1st batch of stage "python"), drop the HF folder, call again: the
    # second call restores step 5's checkpoint and trains steps 6-8 only, on the same data order.
    part = _run(root, model, stages, "resume", checkpoint_every=2, max_steps=5)
    assert [m["step"] for m in part] == [4, 5]  # every 4th step and where it stops
    assert (root / "resume" / "midtrain-resume" / "latest").read_text() == "midtrain-step-000005"
    shutil.rmtree(root / "resume" / "model")
    full = _run(root, model, stages, "resume", checkpoint_every=2)
    assert [(m["step"], m["attempt"]) for m in full] == [(4, 1), (5, 1), (8, 2)]
    assert full[:2] == part  # restored from the checkpoint, not recomputed
    for key in ("loss", "grad_norm", "lr", "tokens"):
        assert full[-1][key] == pytest.approx(ref[-1][key], rel=1e-4), key
    a, b = _weights(root / "ref" / "model"), _weights(root / "resume" / "model")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
