"""``forge-ray eval BENCHMARK ...``: benchmark evaluations as subcommands.

    forge-ray eval bfcl --model DIR [--categories simple_python,multiple,...] [--limit N] --out FILE.json
    forge-ray eval bfcl (--gold | --empty) --out FILE.json [--bfcl-root DIR [--bfcl-model-name NAME]]
    forge-ray eval tau2 --domain retail|airline --model DIR (--user-model DIR | --user-endpoint URL ... | --user-policy) [--trials K --temperature T] [--limit N] --out FILE.json
    forge-ray eval tau2 --domain retail --gold --out FILE.json
    forge-ray eval swe --tasks DIR (--model DIR | --gold | --empty | --tests-only) [--limit N] --out FILE.json
    forge-ray eval code --set humaneval|DIR (--model DIR [--samples K] | --gold | --empty) [--limit N] --out FILE.json

Each benchmark is one ``_add_<name>(evsub)`` function that adds its subparser (with
``set_defaults(fn=...)``) and is listed in ``BENCHMARKS``; heavy imports happen in the
handler, so ``forge-ray --help`` stays fast.
"""
from __future__ import annotations

import argparse
import sys

from forge_ray.eval.code import add_code_parser
from forge_ray.eval.swe import add_swe_parser
from forge_ray.eval.tau2 import add_tau2_parser


def _categories(text: str) -> tuple[str, ...]:
    from envs.function_calling.bfcl_data import CATEGORIES
    from envs.function_calling.multi_turn_data import MULTI_TURN_CATEGORIES

    known = (*CATEGORIES, *MULTI_TURN_CATEGORIES)
    chosen = tuple(c.strip() for c in text.split(",") if c.strip())
    unknown = [c for c in chosen if c not in known]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown BFCL categories {unknown or [text]}; supported: {','.join(known)}")
    return chosen


def _run_bfcl(args: argparse.Namespace) -> int:
    from forge_ray.eval.bfcl import BFCL_MODEL_NAME, BfclEvalConfig, run_bfcl

    if sum([bool(args.model), args.gold, args.empty]) != 1:
        print("forge-ray eval bfcl: give exactly one of --model DIR, --gold or --empty", file=sys.stderr)
        return 2
    if args.bfcl_model_name and not args.bfcl_root:
        print("forge-ray eval bfcl: --bfcl-model-name needs --bfcl-root DIR", file=sys.stderr)
        return 2
    if args.bfcl_root:
        from forge_ray.eval.bfcl import check_bfcl_model_name

        try:
            check_bfcl_model_name(args.bfcl_model_name or BFCL_MODEL_NAME)
        except ValueError as e:
            print(f"forge-ray eval bfcl: --bfcl-model-name: {e}", file=sys.stderr)
            return 2
    run_bfcl(BfclEvalConfig(
        categories=args.categories, model=args.model, gold=args.gold, empty=args.empty, limit=args.limit, out=args.out,
        details=args.details, log_every=args.log_every, max_new_tokens=args.max_new_tokens, max_context=args.max_context,
        kv_cache_mb=args.kv_cache_mb, dtype=args.dtype, device=args.device, bfcl_root=args.bfcl_root,
        bfcl_model_name=args.bfcl_model_name,
    ))
    return 0


def _add_bfcl(evsub: argparse._SubParsersAction) -> None:
    from envs.function_calling.bfcl_data import NON_LIVE_CATEGORIES

    p = evsub.add_parser("bfcl", help="BFCL accuracy: single-turn (official AST checker) and multi-turn (official state checker)")
    p.add_argument("--model", default=None, metavar="DIR", help="model folder served by vLLM (greedy, forge_ray's agent loop)")
    p.add_argument("--gold", action="store_true", help="replay the possible answers instead of a model (checks the path)")
    p.add_argument("--empty", action="store_true", help="replay an empty answer, no call (0 on the AST categories, 1 on irrelevance)")
    p.add_argument("--categories", type=_categories, default=NON_LIVE_CATEGORIES,
                   help=f"comma-separated: non-live, live_* or multi_turn_* (default: {','.join(NON_LIVE_CATEGORIES)})")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N tasks of each category")
    p.add_argument("--out", default=None, metavar="FILE.json", help='write {category: {"accuracy", "n"}} here')
    p.add_argument("--details", default=None, metavar="FILE.jsonl", help="one line per task: output text, verdict, error")
    p.add_argument("--log-every", type=int, default=50, metavar="N", help="tasks per engine batch and progress line (default 50)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--max-context", type=int, default=2048, help="prompt + answer tokens (also vLLM's max_model_len)")
    p.add_argument("--kv-cache-mb", type=int, default=2048, help="vLLM KV cache on CPU")
    p.add_argument("--dtype", default=None, help="engine dtype (default float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--bfcl-root", default=None, metavar="DIR",
                   help="also write BFCL's result files, DIR/result/<model>/{non_live,live}/BFCL_v4_<category>_result.json, "
                        "for `BFCL_PROJECT_ROOT=DIR bfcl evaluate`")
    p.add_argument("--bfcl-model-name", default=None, metavar="NAME",
                   help="BFCL registry name the files are filed under: a prompt-mode model whose handler decodes Python "
                        "call lists (default Qwen/Qwen3-0.6B)")
    p.set_defaults(fn=_run_bfcl)


# One entry per benchmark.
BENCHMARKS = [_add_bfcl, add_tau2_parser, add_code_parser, add_swe_parser]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``eval`` and its benchmarks on the top-level ``forge-ray`` subparsers."""
    ev = sub.add_parser("eval", help="evaluate a model on a benchmark (bfcl, ...)")
    evsub = ev.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for add in BENCHMARKS:
        add(evsub)
