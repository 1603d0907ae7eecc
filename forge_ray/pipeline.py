"""A job end to end: base model -> expert data -> SFT (Ray Train) -> RL (the driver) ->
evaluation, summary, plots. ``forge-ray run jobs/X.yaml`` calls ``run_job``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from forge_ray.config import JobConfig
from forge_ray.metrics import PeakRSS, Run, plot_curves

log = logging.getLogger("forge_ray")


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def worker_env_vars() -> dict[str, str]:
    """Environment for every Ray worker of the job.

    Under ``ray job submit`` / ``forge-ray submit`` the job's own runtime env reaches this driver
    through ``RAY_JOB_CONFIG_JSON_ENV_VAR``, and ``ray.init`` refuses to merge it with a driver
    runtime env that names the same variable: the job's value wins, so leave those out here.
    """
    env_vars = {"TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    injected = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if injected:
        job_env = (json.loads(injected).get("runtime_env") or {}).get("env_vars") or {}
        env_vars = {k: v for k, v in env_vars.items() if k not in job_env}
    return env_vars


def init_ray(job: JobConfig) -> None:
    """Join ``cluster.address`` ("auto" inside a submitted job) or start the embedded local cluster."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": worker_env_vars()}, "log_to_driver": True}
    if job.cluster.address:
        ray.init(address=job.cluster.address, **kwargs)
    else:
        ray.init(num_cpus=job.cluster.num_cpus or None, include_dashboard=False, **kwargs)


def demo_source(job: JobConfig) -> Any:
    """The task source of the demonstrations: ``env.kwargs`` updated by ``sft.env_kwargs``."""
    from envs import make_tasks

    return make_tasks(job.env.name, **{**job.env.kwargs, **job.sft.env_kwargs})


def tiny_corpus(job: JobConfig, n: int = 400) -> list[str]:
    """In-domain documents for the tiny tokenizer: rendered expert conversations (the SFT's),
    at most ``sft.examples`` of them (experts that play through a sandbox take seconds each)."""
    from jinja2 import Template

    from forge_ray.chat import TOOL_CHAT_TEMPLATE
    from forge_ray.train.sft import expert_conversations

    source = demo_source(job)
    template = Template(TOOL_CHAT_TEMPLATE)
    tasks = source.tasks("train", min(n, job.sft.examples), job.env.seed + 20_000)
    return [template.render(messages=t.messages + expert, tools=t.tools, add_generation_prompt=False)
            for t, expert in expert_conversations(source, tasks, "tiny tokenizer corpus")]


def base_model(job: JobConfig, run: Run) -> str:
    if job.model.path:  # a local folder is made absolute for the actors; anything else passes through
        return str(Path(job.model.path).resolve()) if Path(job.model.path).exists() else job.model.path
    from forge_ray.models.tiny import make_tiny_model

    m = job.model
    out = make_tiny_model(run.dir / "checkpoints" / "base", m.tiny_seed, num_layers=m.tiny_layers, hidden_size=m.tiny_hidden,
                          intermediate_size=3 * m.tiny_hidden, num_heads=m.tiny_heads, num_kv_heads=m.tiny_kv_heads,
                          max_position=m.tiny_max_position,
                          corpus=tiny_corpus(job))
    log.info("built the tiny model into %s", out)
    return str(out)


def sft_stage(job: JobConfig, run: Run, model_path: str, device: str) -> str:
    from forge_ray.train.sft import run_sft, write_expert_data

    data = run.dir / "sft_data.jsonl"
    stats = write_expert_data(job, demo_source(job), model_path, data)
    log.info("SFT data: %d expert conversations, %.0f tokens on average -> %s", stats["examples"], stats["mean_tokens"], data)
    out = run.dir / "checkpoints" / "sft"
    t0 = time.perf_counter()
    rows = run_sft(job, model_path, data, out, device)
    for row in rows:
        run.log("sft", int(row["step"]), {k: row[k] for k in ("loss", "grad_norm", "lr", "epoch") if k in row})
    log.info("SFT done in %.0f s (final loss %.4f) -> %s", time.perf_counter() - t0, rows[-1]["loss"] if rows else float("nan"), out)
    return str(out)


def _done(run: Run, stage: str) -> str | None:
    """A stage's model folder when a resumed run already finished it, else None."""
    path = run.dir / "checkpoints" / stage
    if run.resumed and (path / "config.json").exists() and (path / "tokenizer_config.json").exists():
        log.info("resume: %s stage already done -> %s", stage, path)
        return str(path)
    return None


def run_job(job: JobConfig, resume_dir: str | None = None) -> dict[str, Any]:
    """Run every enabled stage of ``job``; returns (and writes) the summary."""
    from forge_ray.driver import run_rl

    t0 = time.time()
    run = Run.create(job, resume_dir)
    rss = PeakRSS()
    device = resolve_device(job.cluster.device)
    init_ray(job)
    summary: dict[str, Any] = {"run_dir": str(run.dir), "device": device, "mode": job.run.mode}
    model = _done(run, "base") or base_model(job, run)
    if job.sft.enabled:
        model = _done(run, "sft") or sft_stage(job, run, model, device)
        summary["sft_checkpoint"] = model
    if job.run.steps > 0:
        summary.update(asyncio.run(run_rl(job, run, model, device)))
    summary["wall_seconds"] = round(time.time() - t0, 1)
    summary["peak_rss_gb"] = round(rss.stop(), 3)
    plot_curves(run, run.dir / "plots" / "reward.png")
    run.finish(summary)
    print_summary(summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    categories = summary.get("by_category", {})
    rows = [("held-out success, SFT", summary.get("sft_success")), ("held-out success, RL", summary.get("rl_success")),
            *((f"  {c}: SFT -> RL (n={s['n']})", f"{s['accuracy']:.3f} -> {categories['rl'][c]['accuracy']:.3f}")
              for c, s in categories.get("sft", {}).items() if c in categories.get("rl", {})),
            ("eval tasks", summary.get("eval_tasks")), ("RL steps (policy version)", summary.get("policy_version")),
            ("trajectories / s", summary.get("trajectories_per_s")), ("rollout idle fraction", summary.get("rollout_idle_frac")),
            ("learner idle fraction", summary.get("learner_idle_frac")), ("weight sync s (mean)", summary.get("sync_seconds_mean")),
            ("wall seconds", summary.get("wall_seconds")), ("peak RSS GB", summary.get("peak_rss_gb"))]
    width = max(len(k) for k, _ in rows)
    print("\n" + "-" * (width + 16))
    for k, v in rows:
        if v is not None:
            print(f"{k:<{width}}  {v:>14.3f}" if isinstance(v, float) else f"{k:<{width}}  {v!s:>14}")
    print("-" * (width + 16))
    print(f"run directory: {summary['run_dir']}  (summary.json, metrics.jsonl, plots/reward.png, checkpoints/)\n")
