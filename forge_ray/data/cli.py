"""``forge-ray data``: build the mid-training corpus.

    forge-ray data build-mt SOURCE... --out DIR --tokenizer MODEL_DIR [--seq-len 4096] [--enhance MODEL_DIR|none]
                            [--eval-tasks SWE_TASKS_DIR] [--no-humaneval] [--no-decontaminate]
    forge-ray data fetch-releases PACKAGE... --last N --out DIR

SOURCE is ``git:PATH``, ``releases:DIR``, ``pypi:PKG==V1,V2``, ``parquet:GLOB``,
``swe-experts:TASKS_DIR`` or ``episodes:FILE.jsonl`` (docs/midtraining.md).
"""
from __future__ import annotations

import argparse
import json


def _build(args: argparse.Namespace) -> int:
    from forge_ray.data.build import BuildConfig, build_mt
    from forge_ray.config import load_job
    from forge_ray.pipeline import episode_sources, init_ray

    init_ray(load_job(None, [f"cluster.num_cpus={args.num_cpus}"]))
    cfg = BuildConfig(sources=args.sources, out=args.out, tokenizer=args.tokenizer, seq_len=args.seq_len,
                      max_tokens=args.max_tokens, enhance=args.enhance, eval_tasks=args.eval_tasks,
                      humaneval=not args.no_humaneval, decontaminate=not args.no_decontaminate,
                      upsample_pass=args.upsample_pass, release_cache=args.release_cache)
    manifest = build_mt(cfg, episode_sources())
    print(json.dumps({k: getattr(manifest, k) for k in ("read", "kept", "dropped", "env_labels", "tokens", "sequences",
                                                        "packing_efficiency", "seconds")}, indent=2))
    print(f"wrote {args.out}/manifest.json")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``forge-ray data`` and its commands."""
    from forge_ray.data import releases

    data = sub.add_parser("data", help="mid-training data (build-mt, fetch-releases)")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    p = dsub.add_parser("build-mt", help="PRs and SWE episodes -> decontaminated, packed parquet shards (Ray Data)")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="git:PATH, releases:DIR, pypi:PKG==V1,V2, parquet:GLOB, "
                   "swe-experts:TASKS_DIR, episodes:FILE.jsonl")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--tokenizer", required=True, metavar="MODEL_DIR", help="the model whose tokenizer counts and packs")
    p.add_argument("--seq-len", type=int, default=4096, help="tokens per packed sequence")
    p.add_argument("--max-tokens", type=int, default=32768, help="drop samples longer than this")
    p.add_argument("--enhance", default="none", metavar="MODEL_DIR", help="model that writes PR summaries and commit messages")
    p.add_argument("--eval-tasks", default="", metavar="DIR", help="SWE tasks folder whose held-out split is decontaminated against")
    p.add_argument("--no-humaneval", action="store_true", help="do not decontaminate against HumanEval")
    p.add_argument("--no-decontaminate", action="store_true", help="keep evaluation repositories (a held-out loss set)")
    p.add_argument("--upsample-pass", type=int, default=3, help="copies of each passing environment episode")
    p.add_argument("--release-cache", default="data/mt_releases", metavar="DIR", help="where pypi: sources keep their sdists")
    p.add_argument("--num-cpus", type=int, default=0, help="CPUs of the embedded Ray cluster (0 = all)")
    p.set_defaults(fn=_build)
    releases.add_parser(dsub)
