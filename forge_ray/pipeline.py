"""A job end to end: base model -> [mid-training data and mid-training (Ray Data, Ray Train)]
-> expert data -> SFT (Ray Train) -> RL (the driver) -> evaluation, summary, plots. ``forge-ray run jobs/X.yaml`` calls ``run_job``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from forge_ray.anatomy import plot_timeline
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
    """Join ``cluster.address`` ("auto" inside a submitted job) or start the embedded local
    cluster (never joining another one found on the machine: the job's ``num_cpus`` is its own)."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": worker_env_vars()}, "log_to_driver": True}
    if job.cluster.address:
        ray.init(address=job.cluster.address, **kwargs)
    else:  # "local": a cluster of its own, even when `ray start` left one running on this machine
        ray.init(address="local", num_cpus=job.cluster.num_cpus or None, include_dashboard=False, **kwargs)


def environment(name: str, env_kwargs: dict, task_kwargs: dict) -> tuple[Any, Any]:
    """(task source, env factory) of the environment registered as ``name``: for the commands
    that play a named environment outside a job (``forge-ray tts``)."""
    import envs

    return envs.make_tasks(name, **task_kwargs), envs.factory(name, env_kwargs)


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


def base_model(job: JobConfig, run: Run, corpus: list[str] | None = None) -> str:
    if job.model.path:  # a local folder is made absolute for the actors; anything else passes through
        return str(Path(job.model.path).resolve()) if Path(job.model.path).exists() else job.model.path
    from forge_ray.models.tiny import make_tiny_model

    m = job.model
    out = make_tiny_model(run.dir / "checkpoints" / "base", m.tiny_seed, num_layers=m.tiny_layers, hidden_size=m.tiny_hidden,
                          intermediate_size=3 * m.tiny_hidden, num_heads=m.tiny_heads, num_kv_heads=m.tiny_kv_heads,
                          max_position=m.tiny_max_position,
                          corpus=tiny_corpus(job) if corpus is None else corpus)
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


def midtrain_stage(job: JobConfig, run: Run, model_path: str, device: str) -> str:
    """build-mt into the run directory (kept on resume), then mid-training stage by stage."""
    from forge_ray.data.build import subset_shards
    from forge_ray.train.midtrain import run_midtrain

    m = job.mid_train
    data = mt_data(job, run, model_path, m.sources, "mt_data", decontaminate=True)
    stages = [{"name": "+".join(subsets), "shards": subset_shards(data, subsets)} for subsets in m.stages]
    stages = [s for s in stages if s["shards"]]
    if not stages:
        raise RuntimeError(f"mid-training: build-mt kept no sample for the stages {m.stages}; see {data}/manifest.json")
    out = run.dir / "checkpoints" / "mid_train"
    t0 = time.perf_counter()
    rows = run_midtrain(stages, model_path, out, device, lr=m.lr, batch_size=m.batch_size, epochs=m.epochs, seq_len=m.seq_len,
                        num_workers=m.num_workers, seed=m.seed, checkpoint_every=m.checkpoint_every, dtype=job.model.dtype,
                        logprob_chunk=job.learner.logprob_chunk)
    for row in rows:
        run.log("mid_train", int(row["step"]), {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))})
    log.info("mid-training done in %.0f s (%d steps, final loss %.4f) -> %s", time.perf_counter() - t0,
             rows[-1]["step"] if rows else 0, rows[-1]["loss"] if rows else float("nan"), out)
    return str(out)


def episode_sources() -> dict[str, Any]:
    """The environment-native sources ``build-mt`` understands beyond files (``swe-experts:DIR``):
    handed to it from here, the edge where ``envs`` may be imported."""
    from envs.swe.tasks import expert_episodes

    return {"swe-experts": expert_episodes}


def mt_data(job: JobConfig, run: Run, tokenizer: str, sources: list, name: str, decontaminate: bool) -> Path:
    """``forge-ray data build-mt`` of ``sources`` into ``<run>/<name>`` (skipped when its manifest exists)."""
    from forge_ray.data.build import BuildConfig, build_mt

    m = job.mid_train
    out = run.dir / name
    if (out / "manifest.json").exists():
        return out
    eval_tasks = m.eval_tasks or (job.env.kwargs.get("tasks_dir", "") if job.env.name == "swe" else "")
    manifest = build_mt(BuildConfig(sources=list(sources), out=str(out), tokenizer=tokenizer, seq_len=m.seq_len,
                                    max_tokens=m.max_tokens, enhance=m.enhance, eval_tasks=eval_tasks,
                                    decontaminate=decontaminate, upsample_pass=m.upsample_pass), episode_sources())
    log.info("build-mt -> %s: kept %s, dropped %s, tokens %s, packing efficiency %s (%.0f s)", out, manifest.kept,
             manifest.dropped, manifest.tokens, manifest.packing_efficiency, manifest.seconds)
    return out


def heldout_pr_loss(job: JobConfig, run: Run, model_path: str, label: str, summary: dict[str, Any]) -> None:
    """Per-token loss of ``model_path`` on PR samples of held-out packages (never trained on)."""
    if not job.mid_train.heldout_sources:
        return
    from forge_ray.data.build import subset_shards
    from forge_ray.train.midtrain import token_loss

    data = mt_data(job, run, model_path, job.mid_train.heldout_sources, "mt_heldout", decontaminate=False)
    result = token_loss(model_path, subset_shards(data, ["py", "gen"]), job.mid_train.seq_len)
    summary.setdefault("heldout_pr_loss", {})[label] = round(result["loss"], 4)
    run.log("heldout_pr", len(summary["heldout_pr_loss"]), {"loss": result["loss"], "tokens": result["tokens"]})
    log.info("held-out PR loss (%s): %.4f over %d tokens", label, result["loss"], result["tokens"])


def finished_stage(run: Run, stage: str) -> str | None:
    """A stage's model folder when a resumed run already finished it, else None."""
    path = run.dir / "checkpoints" / stage
    if run.resumed and (path / "config.json").exists() and (path / "tokenizer_config.json").exists():
        log.info("resume: %s stage already done -> %s", stage, path)
        return str(path)
    return None


def run_job(job: JobConfig, resume_dir: str | None = None) -> dict[str, Any]:
    """Run every enabled stage of ``job``; returns (and writes) the summary."""
    t0 = time.time()
    run = Run.create(job, resume_dir)
    try:
        summary = _stages(job, run)
    except BaseException as e:
        run.abort(e)  # the W&B run ends as failed instead of being left running
        raise
    summary["wall_seconds"] = round(time.time() - t0, 1)
    if not job.domains:  # the recipe plots each domain's reward curve (plots/reward_<domain>.png)
        plot_curves(run, run.dir / "plots" / "reward.png")
    plot_timeline(run.dir / "timeline.jsonl", run.dir / "plots" / "timeline.png")
    run.finish(summary)
    print_summary(summary)
    return summary


def _stages(job: JobConfig, run: Run) -> dict[str, Any]:
    """Every enabled stage in order: base model, mid-training, SFT, RL."""
    from forge_ray.cluster.worker_logs import route_worker_logs
    from forge_ray.driver import run_rl

    rss = PeakRSS()
    device = resolve_device(job.cluster.device)
    t0 = time.perf_counter()
    init_ray(job)
    log.info("Ray up in %.1f s", time.perf_counter() - t0)
    route_worker_logs(run.log_handler)
    summary: dict[str, Any] = {"run_dir": str(run.dir), "device": device, "mode": job.run.mode}
    if job.domains:  # Klear-AgentForge's recipe: shared SFT, RL per domain, merge, merge-cost table
        from forge_ray.recipe import run_recipe

        summary.update(run_recipe(job, run, device))
        summary["peak_rss_gb"] = round(rss.stop(), 3)
        return summary
    model = finished_stage(run, "base") or base_model(job, run)
    heldout_pr_loss(job, run, model, "base", summary)
    if job.mid_train.enabled:
        model = finished_stage(run, "mid_train") or midtrain_stage(job, run, model, device)
        summary["mid_train_checkpoint"] = model
        heldout_pr_loss(job, run, model, "mid_train", summary)
    if job.sft.enabled:
        rss.phase("sft")
        model = finished_stage(run, "sft") or sft_stage(job, run, model, device)
        summary["sft_checkpoint"] = model
        heldout_pr_loss(job, run, model, "sft", summary)
    if job.run.steps > 0:
        rss.phase("rl")
        summary.update(asyncio.run(run_rl(job, run, model, device)))
    summary["peak_rss_gb"] = round(rss.stop(), 3)
    summary["peak_pss_gb"] = rss.pss_gb()  # per phase: "rl" is the RL phase (engines, learner ranks, buffer, Ray)
    summary["rl_pss_by_process_gb"] = rss.pss_by_process_gb("rl")
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
    if summary.get("heldout_pr_loss"):
        losses = summary["heldout_pr_loss"]
        rows.insert(0, (f"held-out PR loss ({' -> '.join(losses)})", " -> ".join(f"{v:.3f}" for v in losses.values())))
    width = max(len(k) for k, _ in rows)
    print("\n" + "-" * (width + 16))
    for k, v in rows:
        if v is not None:
            print(f"{k:<{width}}  {v:>14.3f}" if isinstance(v, float) else f"{k:<{width}}  {v!s:>14}")
    print("-" * (width + 16))
    print(f"run directory: {summary['run_dir']}  (summary.json, metrics.jsonl, timeline.jsonl, plots/, checkpoints/)\n")
