"""``forge-ray``: the command line.

    forge-ray run jobs/quickstart.yaml [--set section.field=value ...]
    forge-ray submit jobs/quickstart.yaml --address http://HEAD:8265 [--set ...] [--follow | --no-wait | --print-only]
    forge-ray make-tiny-model OUT_DIR [--seed 0]
    forge-ray doctor
    forge-ray eval bfcl (--model DIR | --gold | --empty) [--categories simple_python,...] [--limit N] [--out FILE.json] [--bfcl-root DIR]
    forge-ray prepare-model smollm2 OUT_DIR
    forge-ray sandbox run [--backend auto|bwrap|process|container] [--timeout S] [--memory-mb M] [--workdir DIR] -- CMD ARGS...
    forge-ray swe make-tasks PACKAGE[==VERSION]|DIR ... --out DIR [--heldout PKG ...] [--max-per-package N] [--seed S]
    forge-ray data build-mt SOURCE... --out DIR --tokenizer MODEL_DIR [--seq-len N] [--enhance MODEL_DIR|none] [--eval-tasks DIR]
    forge-ray data fetch-releases PACKAGE... --last N --out DIR
    forge-ray code make-exercises PACKAGE[==VERSION]|DIR ... --out DIR [--heldout PKG ...] [--max-per-package N]
    forge-ray serve CHECKPOINT [--name ID] [--host H] [--port 8000] [--replicas N | --min-replicas A --max-replicas B] [--max-model-len N] [--kv-cache-mb M] [--address auto]
    forge-ray merge --base SFT_DIR --models A B ... --method sce|ties|task_arithmetic|linear [--density P] [--weights W ...] --out DIR
    forge-ray decontam bfcl [--synthetic N] [--seed S] [--out FILE.json]
    forge-ray tts --model DIR --env NAME [--env-kwargs JSON] --tasks K --n 1,2,4,8,16 --selectors first,majority,... --topk 20 --out DIR [--judge MODEL_DIR]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys


def _run(args: argparse.Namespace) -> int:
    if args.install_extras is not None:  # before anything imports the dependencies it may install
        from forge_ray.submit import ensure_installed

        ensure_installed(args.install_extras)
    from forge_ray.config import load_job
    from forge_ray.pipeline import run_job

    job = load_job(args.job, args.set)
    run_job(job, args.resume)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from forge_ray.submit import SubmitError, build_submission, render_cli, submit

    sub = build_submission(args.job, args.set, args.address)
    if args.print_only:
        print(render_cli(sub))
        return 0
    try:
        return submit(sub, follow=args.follow, wait=not args.no_wait)
    except SubmitError as e:
        print(f"forge-ray: {e}", file=sys.stderr)
        return 3


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


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from forge_ray.checkpoint import export_hf

    path = Path(args.checkpoint)
    if path.name == "latest" and path.is_file():  # the pointer file names the newest checkpoint
        path = path.parent / path.read_text().strip()
    print(export_hf(path, args.out_dir, args.base_model))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forge-ray", description="Ray-native RL for agentic LLMs")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a job YAML end to end (model, SFT, RL, evaluation)")
    run.add_argument("job", help="job YAML, e.g. jobs/quickstart.yaml")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a config field (repeatable)")
    run.add_argument("--resume", default=None, metavar="RUN_DIR", help="write into an existing run directory")
    run.add_argument("--install-extras", default=None, metavar="EXTRA",
                     help="pip-install forge_ray[EXTRA] from this source tree first if this Python lacks forge_ray (set by submit)")
    run.set_defaults(fn=_run)
    submit_p = sub.add_parser("submit", help="submit a job YAML to a running Ray cluster (Ray Jobs API)")
    submit_p.add_argument("job", help="job YAML inside this repository, e.g. jobs/quickstart.yaml")
    submit_p.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"),
                      help="the head's dashboard URL (default: $RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265)")
    submit_p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a config field (repeatable)")
    how = submit_p.add_mutually_exclusive_group()
    how.add_argument("--follow", action="store_true", help="stream the job's logs until it ends; exit 1 if it fails")
    how.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
    how.add_argument("--print-only", action="store_true", help="print the equivalent `ray job submit` command and exit")
    submit_p.set_defaults(fn=_submit)
    export = sub.add_parser("export", help="write an RL checkpoint's policy as a Hugging Face folder")
    export.add_argument("checkpoint", help="runs/<run>/checkpoints/rl-step-NNNNNN, or runs/<run>/checkpoints/latest")
    export.add_argument("out_dir")
    export.add_argument("--base-model", default=None, help="config and tokenizer source (default: the run's sft/ or base/ folder)")
    export.set_defaults(fn=_export)
    tiny = sub.add_parser("make-tiny-model", help="build the tiny Qwen3-architecture model and its tokenizer")
    tiny.add_argument("out_dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--env", default="calculator", help="environment whose conversations train the tokenizer ('' for none)")
    tiny.set_defaults(fn=_make_tiny)
    doctor = sub.add_parser("doctor", help="print what this machine offers")
    doctor.set_defaults(fn=_doctor)
    __import__("forge_ray.eval.cli", fromlist=["add_parser"]).add_parser(sub)
    __import__("forge_ray.models.cli", fromlist=["add_parser"]).add_parser(sub)
    __import__("forge_ray.env.sandbox_cli", fromlist=["add_parser"]).add_parser(sub)
    __import__("forge_ray.data.cli", fromlist=["add_parser"]).add_parser(sub)
    __import__("forge_ray.merge", fromlist=["add_parser"]).add_parser(sub)
    __import__("forge_ray.tts.run", fromlist=["add_parser"]).add_parser(sub)
    __import__("forge_ray.serve.cli", fromlist=["add_parser"]).add_parser(sub)
    # envs/ at the edge, as pipeline.py does: argparse only, the factory loads on use
    __import__("envs.swe.factory_cli", fromlist=["add_parser"]).add_parser(sub)
    __import__("envs.exercises.mine_cli", fromlist=["add_parser"]).add_parser(sub)
    __import__("envs.function_calling.decontam", fromlist=["add_parser"]).add_parser(sub)
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
