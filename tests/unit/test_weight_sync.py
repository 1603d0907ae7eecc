"""Weight-sync packing and fingerprints (pure parts; the engine round trip is in tests/ray)."""
import torch

from forge_ray.rollout.weight_sync import bucketize, compare_fingerprints, learner_fingerprint, pack_tensors, unpack_tensors


def test_pack_roundtrip_mixed_dtypes():
    tensors = [torch.randn(3, 4), torch.arange(5, dtype=torch.float32), torch.randn(2, 2).to(torch.bfloat16)]
    info = pack_tensors(["a", "b", "c"], tensors)
    assert isinstance(info["data"], bytes)
    out = unpack_tensors(info)
    assert [n for n, _ in out] == ["a", "b", "c"]
    for (_, got), want in zip(out, tensors):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_bucketize_respects_budget():
    named = [(f"t{i}", torch.zeros(256)) for i in range(10)]  # 1 KiB each
    buckets = bucketize(named, 3 * 1024)
    assert [len(b) for b in buckets] == [3, 3, 3, 1]
    assert len(bucketize([("big", torch.zeros(4096)), ("s", torch.zeros(1))], 1024)) == 2


def test_fingerprint_fuses_projections_like_vllm():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(8, 4, generator=g) for _ in range(3))
    state = {"model.layers.0.self_attn.q_proj.weight": q, "model.layers.0.self_attn.k_proj.weight": k,
             "model.layers.0.self_attn.v_proj.weight": v, "model.norm.weight": torch.ones(4)}
    fp = learner_fingerprint(state)
    assert set(fp) == {"model.layers.0.self_attn.qkv_proj.weight", "model.norm.weight"}
    fused = torch.cat([q, k, v])
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    engine = {"model.layers.0.self_attn.qkv_proj.weight": {"probe": (x @ fused.T).tolist()},
              "model.norm.weight": {"digest": fp["model.norm.weight"]["digest"]}}
    assert compare_fingerprints(engine, fp) == []
    engine["model.norm.weight"] = {"digest": "0" * 16}
    assert compare_fingerprints(engine, fp) == ["model.norm.weight: digest 0000000000000000 != " + fp["model.norm.weight"]["digest"]]


def test_reload_warnings_dropped_only_for_layers_without_weights():
    import logging

    from forge_ray.rollout.weight_sync import ExpectedReloadWarnings

    def record(msg, *args):
        return logging.LogRecord("vllm", logging.WARNING, __file__, 1, msg, args, None)

    tied, untied = ExpectedReloadWarnings(tied_head=True), ExpectedReloadWarnings(tied_head=False)
    failed = "%s: Failed to load weights"
    assert not tied.filter(record(failed, "RotaryEmbedding")) and not untied.filter(record(failed, "MRotaryEmbedding"))
    assert not tied.filter(record(failed, "ParallelLMHead"))
    assert untied.filter(record(failed, "ParallelLMHead"))  # an untied head must load its own weights
    assert tied.filter(record(failed, "QKVParallelLinear")) and tied.filter(record("%s: Delayed processing", "RotaryEmbedding"))


def test_engine_refuses_buckets_of_another_version_or_count():
    import pytest

    from forge_ray.rollout.weight_sync import WeightSyncError, check_bucket
    from forge_ray.types import WeightBucket

    b = WeightBucket(version=3, index=1, count=2, payload={}, nbytes=0)
    check_bucket(b, 3, 1, 2)
    with pytest.raises(WeightSyncError, match=r"bucket 1 of 2 for v4: got bucket 1 of 2 for v3"):
        check_bucket(b, 4, 1, 2)  # a stale version's bucket
    with pytest.raises(WeightSyncError, match="got bucket 1 of 2"):
        check_bucket(b, 3, 1, 3)  # the refs hold fewer buckets than the version has
    with pytest.raises(WeightSyncError):
        check_bucket(b, 3, 0, 2)  # out of order
