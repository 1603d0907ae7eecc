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


# The collective transport's pure parts (forge_ray/rollout/collective.py), and its protocol
# over a real gloo group whose ranks are threads of this process.


def _named():
    g = torch.Generator().manual_seed(1)
    return [("a", torch.randn(3, 5, generator=g)), ("b", torch.randn(7, generator=g).to(torch.bfloat16)),
            ("c", torch.randn(2, 3, generator=g).to(torch.float16)), ("d", torch.randn(40, 40, generator=g)), ("e", torch.tensor(2.5))]


def test_collective_plan_pack_unpack_roundtrip():
    from forge_ray.rollout.collective import ALIGN, HEADER_BYTES, BucketHeader, pack, plan, read_header, unpack

    named = _named()
    specs = plan(named, version=7, bucket_bytes=1024)
    assert [s.names for s in specs] == [["a", "b", "c"], ["d"], ["e"]]  # d (6400 bytes) is a bucket of its own
    assert [(s.version, s.index, s.count) for s in specs] == [(7, 0, 3), (7, 1, 3), (7, 2, 3)]
    assert specs[0].dtype_names == ["float32", "bfloat16", "float16"] and specs[2].shapes == [[]]
    assert specs[0].nbytes == 3 * ALIGN and specs[1].nbytes == 6400  # every tensor starts aligned
    tensors = dict(named)
    for spec in specs:
        buf = pack(spec, [tensors[n] for n in spec.names])
        assert buf.numel() == HEADER_BYTES + spec.nbytes
        assert read_header(buf) == BucketHeader(7, spec.index, spec.count, spec.nbytes)
        for name, got in unpack(buf, spec):
            assert got.dtype == tensors[name].dtype and torch.equal(got, tensors[name])
    meta = [(n, torch.empty(t.shape, dtype=t.dtype, device="meta")) for n, t in named]
    assert plan(meta, 7, 1024) == specs  # the manifest needs no data


def test_collective_manifest_checks_and_layout_digest():
    from forge_ray.rollout.collective import layout_digest, manifest_problem, plan

    specs = plan(_named(), version=3, bucket_bytes=1024)
    assert manifest_problem(specs, 3) == ""
    assert "got bucket 0 of 3 for v3" in manifest_problem(specs, 4)  # another version's manifest
    assert "got bucket 0 of 3" in manifest_problem(specs[:2], 3)  # cut short: the count disagrees
    renamed = [("z", t) if n == "a" else (n, t) for n, t in _named()]
    assert layout_digest(plan(renamed, 3, 1024)) != layout_digest(specs) == layout_digest(plan(_named(), 4, 1024))
    assert 0 < layout_digest(specs) < 2**60


def _run_ranks(fns):
    """Run one callable per rank in threads; returns their results (exceptions as values)."""
    import threading

    out = [None] * len(fns)

    def run(i):
        try:
            out[i] = fns[i]()
        except BaseException as e:  # noqa: BLE001 - a rank's failure is the result under test
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    return out


def test_collective_broadcast_refusals_and_pipeline_over_gloo():
    import pytest

    from forge_ray.rollout.collective import Rendezvous, host_store, join, plan
    from forge_ray.rollout.weight_sync import WeightSyncError

    store, rdv = host_store("127.0.0.1", 3, epoch=1, timeout_s=30)
    assert isinstance(rdv, Rendezvous) and rdv.port > 0 and rdv.world_size == 3
    groups = _run_ranks([lambda: join(rdv, 0, store=store)] + [lambda r=r: join(rdv, r) for r in (1, 2)])
    named = _named()
    specs = plan(named, version=5, bucket_bytes=1024)
    loaded = {1: [], 2: []}

    def sync(version, engine_specs, sender_version=5):
        return _run_ranks([lambda: groups[0].send(sender_version, specs, dict(named))]
                          + [lambda r=r: groups[r].receive(version, engine_specs, loaded[r].extend) for r in (1, 2)])

    results = sync(5, specs)
    assert results == [sum(s.nbytes for s in specs)] * 3
    for r in (1, 2):
        assert [n for n, _ in loaded[r]] == [n for n, _ in named]
        assert all(torch.equal(got, want) for (_, got), (_, want) in zip(loaded[r], named))
        loaded[r].clear()

    # Refusals: every rank raises before any bucket moves, and the group stays in step.
    stale = sync(6, specs)  # the engines were told v6; the learner sends v5
    assert all(isinstance(e, WeightSyncError) for e in stale)
    assert "rank 1 refused v6: weight bucket 0 of 3 for v6: got bucket 0 of 3 for v5" in str(stale[1])
    assert "refused by another rank" in str(stale[0])
    short = sync(5, specs[:2])  # a manifest cut short: the bucket count disagrees
    assert all(isinstance(e, WeightSyncError) for e in short) and "got bucket 0 of 3" in str(short[2])
    unstaged = _run_ranks([lambda: groups[0].send(5, specs, dict(named), problem="learner has v4 staged")]
                          + [lambda r=r: groups[r].receive(5, specs, loaded[r].extend) for r in (1, 2)])
    assert "rank 0 refused v5: learner has v4 staged" in str(unstaged[0]) and isinstance(unstaged[1], WeightSyncError)
    assert loaded == {1: [], 2: []}  # nothing was loaded by a refused sync
    assert sync(5, specs) == [sum(s.nbytes for s in specs)] * 3
    for g in groups:
        g.close()
    with pytest.raises(Exception):
        groups[1].receive(5, specs, loaded[1].extend)
