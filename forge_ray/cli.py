"""``forge-ray``: the command line.

    forge-ray run jobs/quickstart.yaml [--set section.field=value ...]
    forge-ray make-tiny-model OUT_DIR [--seed 0]
    forge-ray doctor
"""
from __future__ import annotations

import argparse
import logging
import sys


def _run(args: argparse.Namespace) -> int:
    from forge_ray.config import load_job
    from forge_ray.pipeline import run_job

    job = load_job(args.job, args.set)
    run_job(job, args.resume)
    return 0


def _make_tiny(args: argparse.Namespace) -> int:
    from forge_ray.config import load_job
    from forge_ray.models.tiny import make_tiny_model
    from forge_ray.pipeline import tiny_corpus

    job = load_job(None, [f"env.name={args.env}"])
    out = make_tiny_model(args.out_dir, args.seed, corpus=tiny_corpus(job) if args.env else [])
    print(out)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from forge_ray.doctor import report

    for key, value in report():
        print(f"{key:<18} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forge-ray", description="Ray-native RL for agentic LLMs")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a job YAML end to end (model, SFT, RL, evaluation)")
    run.add_argument("job", help="job YAML, e.g. jobs/quickstart.yaml")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a config field (repeatable)")
    run.add_argument("--resume", default=None, metavar="RUN_DIR", help="write into an existing run directory")
    run.set_defaults(fn=_run)
    tiny = sub.add_parser("make-tiny-model", help="build the tiny Qwen3-architecture model and its tokenizer")
    tiny.add_argument("out_dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--env", default="calculator", help="environment whose conversations train the tokenizer ('' for none)")
    tiny.set_defaults(fn=_make_tiny)
    doctor = sub.add_parser("doctor", help="print what this machine offers")
    doctor.set_defaults(fn=_doctor)
    return p


def main(argv: list[str] | None = None) -> int:
    from forge_ray.config import ConfigError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"forge-ray: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
