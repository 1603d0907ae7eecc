"""Benchmark: mid-training data pipeline throughput per CPU, stage by stage, and the projection
to daVinci-Dev's corpus.

    .venv/bin/python bench/mt_pipeline.py --tokenizer MODEL_DIR [--source git:. --source pypi:PKG==V1,V2 ...]
                                          [--eval-tasks data/swe_tasks] [--nodes 1,8,64] [--cores-per-node 64]

Runs every stage of ``forge_ray/data/build.py`` in this one process (one CPU) over the same PR
records, timing each: read (git / sdists), filter, render (both formats, replay-checked),
decontaminate (13-gram index of the evaluation items), tokenise + MinHash, dedup (LSH), pack.
Prints items per second per CPU for each stage (items = rows not yet dropped entering it; for
read, the PR records it produces) and the CPU-hours the whole chain needs for
daVinci-Dev's 68.6B-token PR corpus (~10M samples; the per-token cost of each stage is scaled
by the mean sample length measured here), then the wall-clock hours on N nodes of C cores, the
stages being embarrassingly parallel except dedup's LSH. LLM enhancement runs on accelerators
and is not in this figure. Writes ``bench/results/mt_pipeline.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DAVINCI_TOKENS = 68.6e9  # D^ctx: 26.7B general + 41.9B Python (papers.md §3.2)
DAVINCI_SAMPLES = 10.0e6  # ~4M general + ~6M Python PRs


def _timed(label: str, fn, items: list, timings: dict) -> list:
    t0 = time.perf_counter()
    out = [y for x in items for y in fn(x)]
    live = lambda rows: sum(1 for r in rows if not (isinstance(r, dict) and r.get("drop")))  # noqa: E731
    timings[label] = {"seconds": time.perf_counter() - t0, "in": live(items), "out": live(out)}  # rows not dropped before
    return out


def run(args: argparse.Namespace) -> dict:
    from forge_ray.data import build
    from forge_ray.data.decontam import near_duplicates
    from forge_ray.data.pack import pack

    cfg = build.BuildConfig(sources=args.source, out="/dev/null", tokenizer=args.tokenizer, eval_tasks=args.eval_tasks,
                            seq_len=args.seq_len)
    timings: dict = {}
    from forge_ray.pipeline import episode_sources

    rows = _timed("read", lambda s: list(build.read_spec(s, cfg.release_cache, episode_sources())), args.source, timings)
    blocked, index = build.eval_targets(cfg)
    rows = _timed("filter", lambda r: [build.filter_pr(r, blocked)], rows, timings)
    if args.enhance:
        rows = _enhance(rows, args, timings)
    rows = _timed("render", build.Renderer(args.tokenizer), rows, timings)
    rows = _timed("decontaminate", lambda r, d=build.Decontaminator(index, cfg.ngram_threshold): [d(r)], rows, timings)
    kept_chars = sum(len(r["text"]) for r in rows if not r["drop"])
    rows = _timed("tokenise+minhash", lambda r, t=build.Tokenizer(args.tokenizer, cfg.max_tokens): [t(r)], rows, timings)
    kept = [r for r in rows if not r["drop"]]
    t0 = time.perf_counter()
    dups = near_duplicates([(r["id"], r["sig"]) for r in kept], cfg.dedup_threshold)
    timings["dedup"] = {"seconds": time.perf_counter() - t0, "in": len(kept), "out": len(kept) - len(dups)}
    t0 = time.perf_counter()
    seqs = pack([r["tokens"] for r in kept if r["id"] not in dups], args.seq_len, split_min=args.seq_len // 8)
    timings["pack"] = {"seconds": time.perf_counter() - t0, "in": len(kept) - len(dups), "out": len(seqs)}
    tokens = sum(len(r["tokens"]) for r in kept)
    return {"timings": timings, "samples": len(kept), "tokens": tokens, "chars": kept_chars,
            "mean_tokens": tokens / max(len(kept), 1)}


def _enhance(rows: list, args: argparse.Namespace, timings: dict) -> list:
    """The enhancement stage on the first ``--enhance-n`` kept PRs: one vLLM engine (this
    process), all summaries in one batch, then all commit messages (as an ``Enhancer`` actor does)."""
    import pandas as pd

    from forge_ray.data.enhance import Enhancer

    todo = [i for i, r in enumerate(rows) if r["kind"] == "pr" and not r["drop"]][: args.enhance_n]
    enhancer = Enhancer(args.enhance, max_model_len=8192)
    t0 = time.perf_counter()
    out = enhancer(pd.DataFrame([rows[i] for i in todo]))
    timings["enhance"] = {"seconds": time.perf_counter() - t0, "in": len(todo), "out": len(todo)}
    for i, row in zip(todo, out.to_dict("records")):
        rows[i] = row
    return rows


def project(result: dict, nodes: list[int], cores: int) -> dict:
    """CPU-seconds per sample of each stage, scaled to daVinci-Dev's mean sample length."""
    scale = (DAVINCI_TOKENS / DAVINCI_SAMPLES) / max(result["mean_tokens"], 1)
    per_sample = {}
    for k, v in result["timings"].items():
        if k == "enhance":  # runs on accelerators: not in the CPU figure
            continue
        n = v["out"] if k == "read" else v["in"]  # read: per PR record produced, not per source spec
        per_sample[k] = v["seconds"] / max(n, 1) * (1 if k in ("read", "filter", "dedup") else scale)
    cpu_hours = sum(per_sample.values()) * DAVINCI_SAMPLES / 3600
    return {"length_scale": scale, "cpu_seconds_per_sample": per_sample, "cpu_hours": cpu_hours,
            "wall_hours": {n: cpu_hours / (n * cores) for n in nodes}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--source", action="append", default=[])
    p.add_argument("--eval-tasks", default="data/swe_tasks")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--nodes", default="1,8,64")
    p.add_argument("--cores-per-node", type=int, default=64)
    p.add_argument("--enhance", default="", metavar="MODEL_DIR", help="also time LLM enhancement with this model")
    p.add_argument("--enhance-n", type=int, default=8, help="PRs to enhance (the first kept ones)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "mt_pipeline.json"))
    args = p.parse_args()
    args.source = args.source or ["git:."]
    result = run(args)
    proj = project(result, [int(n) for n in args.nodes.split(",")], args.cores_per_node)
    print(f"{'stage':<18}{'in':>7}{'out':>7}{'seconds':>10}{'items/s/CPU':>12}{'CPU s/sample @daVinci':>23}")
    for k, v in result["timings"].items():
        rate = (v["out"] if k == "read" else v["in"]) / v["seconds"] if v["seconds"] else float("inf")
        print(f"{k:<18}{v['in']:>7}{v['out']:>7}{v['seconds']:>10.2f}{rate:>12.2f}{proj['cpu_seconds_per_sample'].get(k, float('nan')):>23.4f}")
    print(f"kept samples {result['samples']}, {result['tokens']} tokens (mean {result['mean_tokens']:.0f}); "
          f"daVinci-Dev samples are {proj['length_scale']:.2f}x as long")
    print(f"68.6B-token corpus: {proj['cpu_hours']:.0f} CPU-hours; wall hours on N nodes x {args.cores_per_node} cores: "
          + ", ".join(f"{n}: {h:.1f}" for n, h in proj["wall_hours"].items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "machine": platform.node(), **result,
                                          "projection": proj}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
