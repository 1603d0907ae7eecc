"""Benchmark: seconds per weight sync, host path vs collective path vs a raw broadcast floor.

    .venv/bin/python bench/weight_sync.py [--models tiny smollm2] [--smollm2 DIR] [--repeats 3]
        [--bucket-mb 64] [--learner-ranks 1] [--out bench/results/weight_sync.json]

For each model, one vLLM CPU engine (``RolloutGroup``) and the FSDP2 learner (``LearnerGroup``)
run as the driver runs them, on an embedded Ray cluster, and the same weights are synced again
and again as new versions, alternating the paths (after one warm-up sync of each):

* host: ``learner.export_weights`` (gather, pack, ``ray.put``) then ``rollout.update_weights``;
* collective: ``learner.stage_weights`` (gather) then ``rollout.broadcast_weights`` (learner
  rank 0 broadcasts over gloo while the engine loads); the warm-up forms the weight group.

Each is timed as the driver waits for it (``total``), split into the learner's part (export or
stage) and the engine's (``sync_seconds``: drain, receive or fetch, load, vLLM's reload).

The raw floor is a gloo broadcast of the same bytes, the collective path's own bucket layout
packed beforehand, between two plain processes: the same transport with nothing else (no FSDP
gather, no packing, no vLLM load, no Ray). That is the floor a collective sync could reach by
moving bytes alone, so ``collective_over_raw`` (collective total / raw, for the larger model)
is the price of everything around the wire. An in-process ``copy_`` of every tensor into
preallocated ones is printed as well: the memory-bandwidth bound no cross-process transport
beats. The tiny model is built as tests/ray/conftest.py builds it; SmolLM2-135M is made with
``forge-ray prepare-model smollm2`` when ``--smollm2`` does not exist. After the last sync of
each path the engine's weights are checked against the learner's (``compare_fingerprints``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "weight_sync.json"


def tiny_model(out_dir: str) -> str:
    from forge_ray.config import load_job
    from forge_ray.models.tiny import make_tiny_model
    from forge_ray.pipeline import tiny_corpus

    return str(make_tiny_model(Path(out_dir), seed=0, corpus=tiny_corpus(load_job(None))))


def smollm2(path: str) -> str:
    if not (Path(path) / "config.json").exists():
        subprocess.run([str(ROOT / ".venv" / "bin" / "forge-ray"), "prepare-model", "smollm2", path], check=True)
    return path


def _state(model_dir: str) -> list[tuple[str, Any]]:
    """The weights the learner syncs: the checkpoint's tensors, a tied head left out."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return [(k, v.detach().clone()) for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")]


def _raw_rank(rank: int, model_dir: str, bucket_mb: int, repeats: int, meet: Any, out: Any) -> None:
    """One of the two processes of the raw floor: rank 0 broadcasts the packed buckets."""
    import torch

    from forge_ray.rollout.collective import HEADER_BYTES, host_store, join, pack, plan

    torch.set_num_threads(1)
    named = _state(model_dir)
    specs = plan(named, 0, bucket_mb * 2**20)
    tensors = dict(named)
    if rank == 0:
        store, rdv = host_store("127.0.0.1", 2, epoch=0)
        meet.put(rdv)
        bufs = [pack(s, [tensors[n] for n in s.names]) for s in specs]
    else:
        rdv, store = meet.get(timeout=600), None
        bufs = [torch.empty(HEADER_BYTES + s.nbytes, dtype=torch.uint8) for s in specs]
    group = join(rdv, rank, store=store)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        group.agree(0, specs)  # both ranks start together
        t0 = time.perf_counter()
        for work in [group.broadcast(b) for b in bufs]:
            work.wait()
        times.append(time.perf_counter() - t0)
    if rank == 1:
        ok = all(torch.equal(b[HEADER_BYTES:], pack(s, [tensors[n] for n in s.names])[HEADER_BYTES:]) for b, s in zip(bufs, specs))
        out.put({"raw_seconds": statistics.median(times[1:]), "raw_ok": ok, "bytes": sum(s.nbytes for s in specs)})
    group.close()


def raw_floor(model_dir: str, bucket_mb: int, repeats: int) -> dict[str, Any]:
    """Gloo broadcast of the packed buckets between two plain processes; in-process copy_."""
    import multiprocessing as mp

    import torch

    ctx = mp.get_context("spawn")
    meet, out = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_raw_rank, args=(r, model_dir, bucket_mb, repeats, meet, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    result = out.get(timeout=900)
    for p in procs:
        p.join()
    torch.set_num_threads(1)  # as the learner's ranks; more threads on a busy 2-core box only contend
    named = _state(model_dir)
    dst = [torch.empty_like(t) for _, t in named]
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        for d, (_, t) in zip(dst, named):
            d.copy_(t)
        times.append(time.perf_counter() - t0)
    return {**result, "copy_seconds": statistics.median(times[1:])}


async def _one_sync(path: str, version: int, rollout: Any, learner: Any, bucket_mb: int) -> dict[str, float]:
    t0 = time.perf_counter()
    if path == "host":
        exported = await learner.export_weights(version, bucket_mb)
        t1 = time.perf_counter()
        syncs = await rollout.update_weights(version, exported)
    else:
        exported = await learner.stage_weights(version, bucket_mb)
        t1 = time.perf_counter()
        syncs = await rollout.broadcast_weights(version, exported, learner)
    t2 = time.perf_counter()
    return {"total": t2 - t0, "learner": t1 - t0, "engine": max(s["sync_seconds"] for s in syncs), "bytes": syncs[0]["sync_bytes"]}


async def engine_paths(model_dir: str, bucket_mb: int, repeats: int, learner_ranks: int) -> dict[str, Any]:
    """Start one engine and the learner on ``model_dir``; time both paths, alternating."""
    from envs import factory
    from forge_ray.config import LearnerConfig
    from forge_ray.learner.group import LearnerGroup
    from forge_ray.rollout.agent_loop import EpisodeSpec
    from forge_ray.rollout.group import RolloutGroup
    from forge_ray.rollout.weight_sync import compare_fingerprints, learner_fingerprint

    rollout = RolloutGroup(model_dir, 1, dict(max_model_len=512, kv_cache_mb=128), factory("calculator"), EpisodeSpec(), {"CPU": 1})
    learner = LearnerGroup(LearnerConfig(num_workers=learner_ranks), model_dir, "float32", "cpu", {"CPU": 1})
    try:
        await asyncio.gather(rollout.start(), learner.setup())
        runs: dict[str, list[dict[str, float]]] = {"host": [], "collective": []}
        version, checks = 0, {}
        for i in range(repeats + 1):
            for path in ("host", "collective") if i % 2 == 0 else ("collective", "host"):
                version += 1
                result = await _one_sync(path, version, rollout, learner, bucket_mb)
                if i:  # the first round is a warm-up (and forms the weight group)
                    runs[path].append(result)
                if i == repeats:
                    served = await rollout.workers[0].fingerprint.remote()
                    checks[path] = compare_fingerprints(served, learner_fingerprint(await learner.state_for_check())) == []
        out = {path: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for path, rs in runs.items()}
        return {**out, "weights_match": checks, "weight_groups": rollout.epochs}
    finally:
        rollout.shutdown()
        learner.shutdown()


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{'model':10}{'MB':>8}{'path':>12}{'total s':>10}{'learner s':>11}{'engine s':>10}{'x raw':>8}")
    for name, r in results.items():
        raw = r["raw"]["raw_seconds"]
        mb = r["raw"]["bytes"] / 2**20
        for path in ("host", "collective"):
            p = r[path]
            print(f"{name:10}{mb:>8.1f}{path:>12}{p['total']:>10.3f}{p['learner']:>11.3f}{p['engine']:>10.3f}{p['total'] / raw:>8.1f}")
        print(f"{name:10}{mb:>8.1f}{'raw gloo':>12}{raw:>10.3f}{'':>11}{'':>10}{1.0:>8.1f}")
        print(f"{name:10}{mb:>8.1f}{'copy_':>12}{r['raw']['copy_seconds']:>10.3f}{'':>11}{'':>10}{r['raw']['copy_seconds'] / raw:>8.1f}")
        print(f"{name:10}served weights == learner's: {r['weights_match']}; raw bytes intact: {r['raw']['raw_ok']}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    ap.add_argument("--smollm2", default="/tmp/forge_weight_sync_smollm2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-mb", type=int, default=64)
    ap.add_argument("--learner-ranks", type=int, default=1)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)

    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False,
             runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}})
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model_dir = tiny_model(tmp) if name == "tiny" else smollm2(args.smollm2)
            results[name] = asyncio.run(engine_paths(model_dir, args.bucket_mb, args.repeats, args.learner_ranks))
            results[name]["raw"] = raw_floor(model_dir, args.bucket_mb, args.repeats)
    ray.shutdown()
    print_table(results)
    big = results[args.models[-1]]
    doc = {"command": " ".join(["bench/weight_sync.py", *(argv if argv is not None else sys.argv[1:])]),
           "settings": vars(args), "models": results,
           "collective_over_raw": big["collective"]["total"] / big["raw"]["raw_seconds"],
           "host_over_raw": big["host"]["total"] / big["raw"]["raw_seconds"],
           "collective_over_host": big["collective"]["total"] / big["host"]["total"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"\ncollective / raw ({args.models[-1]}): {doc['collective_over_raw']:.2f}   host / raw: {doc['host_over_raw']:.2f}"
          f"   collective / host: {doc['collective_over_host']:.2f}   -> {args.out}")
    return doc


if __name__ == "__main__":
    main()
