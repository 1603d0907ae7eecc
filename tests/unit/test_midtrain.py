"""Mid-training's evaluation on packed rows, checked against documents scored one at a time."""
from __future__ import annotations

import math
import random

import pytest

from forge_ray.models.tiny import make_tiny_model
from forge_ray.train.midtrain import epoch_order, token_loss

SEQ_LEN = 48


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0, vocab_size=512, hidden_size=64, num_layers=2,
                               num_heads=4, num_kv_heads=2, intermediate_size=128, max_position=SEQ_LEN))


def _docs(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 250) for _ in range(rng.randint(1, 30))] + [2] for _ in range(n)]


def _rows(docs: list[list[int]]) -> list[dict]:
    from forge_ray.data.pack import pack

    return [{"input_ids": ids + [0] * (SEQ_LEN - len(ids)), "doc_lens": lens} for ids, lens in pack(docs, SEQ_LEN)]


def _alone(model_path: str, docs: list[list[int]]) -> tuple[float, int]:
    """Mean NLL with every document run through the model on its own (no packing at all)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            ids = torch.tensor([doc])
            logits = model(input_ids=ids).logits[0, :-1]
            nll += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            n += len(doc) - 1
    return nll / n, n


def test_token_loss_equals_documents_scored_alone(tiny, tmp_path):
    from forge_ray.data.pack import write_shards

    docs = _docs(12)
    rows = _rows(docs)
    assert len(rows) < len(docs)  # several documents share a row: attention must stay inside each
    expected, n = _alone(tiny, docs)
    assert n == sum(len(d) - 1 for d in docs)
    got = token_loss(tiny, rows, SEQ_LEN, batch_rows=3)
    assert got["tokens"] == n
    assert math.isfinite(got["loss"]) and got["loss"] == pytest.approx(expected, rel=1e-5)

    from forge_ray.data.pack import pack

    paths = write_shards(pack(docs, SEQ_LEN), tmp_path, "pr", SEQ_LEN, pad_id=0, rows_per_shard=2)
    assert len(paths) > 1
    from_files = token_loss(tiny, [str(p) for p in paths], SEQ_LEN)
    assert from_files["tokens"] == n and from_files["loss"] == pytest.approx(expected, rel=1e-5)
    folder = token_loss(tiny, [tmp_path / "pr"], SEQ_LEN, max_rows=2)  # a folder of shards, first rows only
    assert folder["tokens"] == sum(sum(d - 1 for d in r["doc_lens"]) for r in rows[:2])


def test_epoch_order_is_a_seeded_permutation():
    a = epoch_order(20, seed=3, stage=1, epoch=0)
    assert sorted(a) == list(range(20)) and a == epoch_order(20, seed=3, stage=1, epoch=0)
    assert a != epoch_order(20, seed=3, stage=1, epoch=1) and a != epoch_order(20, seed=3, stage=0, epoch=0)
