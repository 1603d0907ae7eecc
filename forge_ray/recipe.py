"""Klear-AgentForge's recipe as one job (``domains:`` in the job file; docs/merging.md):

    base model (the tiny model's tokenizer trained on every domain's text)
    -> one shared SFT on the mixed expert data of all domains        checkpoints/sft
    -> RL per domain from that SFT checkpoint, one domain after another  checkpoints/rl_<domain>
    -> merge of the per-domain policies (SCE by default)             checkpoints/merged
    -> with ``env.mix``: joint multi-task RL from the same SFT         checkpoints/rl_mix
    -> every model (SFT, each RL policy, the merge) on every domain's held-out tasks:
       the merge-cost table, merge_cost.json / merge_cost.md / plots/merge_cost.png

``pipeline._stages`` calls ``run_recipe`` when the job has domains. Each domain's RL is the
driver's ``run_rl`` on the job as that domain sees it (``config.domain_job``; the mix's is
``mix.mix_job``, one domain per step by the schedule), through a
``DomainRun``: its metrics rows carry ``domain``, its W&B keys are ``rl/<domain>/...``.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from forge_ray.config import JobConfig, domain_job
from forge_ray.metrics import Run
from forge_ray.pipeline import finished_stage

log = logging.getLogger("forge_ray.recipe")


# ---------------------------------------------------------------- the job


def run_recipe(job: JobConfig, run: Run, device: str) -> dict[str, Any]:
    """Every stage of the recipe in order; returns the job's summary fields."""
    from forge_ray import pipeline

    seconds: dict[str, float] = {}
    with _stage(seconds, "base"):
        model = finished_stage(run, "base") or pipeline.base_model(job, run, corpus=_corpus(job) if not job.model.path else None)
    if job.mid_train.enabled:
        with _stage(seconds, "mid_train"):
            model = finished_stage(run, "mid_train") or pipeline.midtrain_stage(job, run, model, device)
    start_name = "sft" if job.sft.enabled else "base"
    if job.sft.enabled:
        with _stage(seconds, "sft"):
            model = finished_stage(run, "sft") or mixed_sft(job, run, model, device)
    policies, domains = {}, {}
    for domain in job.domains:
        if domain.rl:
            with _stage(seconds, f"rl_{domain.name}"):
                policies[domain.name], domains[domain.name] = rl_stage(run, domain.name, domain_job(job, domain), model, device)
    models = {start_name: model, **{f"rl_{name}": path for name, path in policies.items()}}
    if job.merge.enabled:
        with _stage(seconds, "merge"):
            models["merged"] = merge_stage(job, run, model, list(policies.values()))
    if job.env.mix:  # joint multi-task RL, Klear's alternative to the merge
        from forge_ray.mix import mix_job

        with _stage(seconds, "rl_mix"):
            models["rl_mix"], domains["mix"] = rl_stage(run, "mix", mix_job(job), model, device)
    with _stage(seconds, "eval"):
        results = asyncio.run(evaluate_models(job, run, models, device))
    table = build_table(results, [d.name for d in job.domains], _merge_record(job) if job.merge.enabled else None)
    write_table(run.dir, table)
    _wandb_table(run, table)
    report = table_markdown(table)
    log.info("merge-cost table (held-out success):\n%s\nstage seconds: %s", report, seconds)
    print(f"\n{report}\nstage seconds: {json.dumps(seconds)}")
    return {f"{start_name}_checkpoint": model, "domains": domains, "merged_checkpoint": models.get("merged"),
            "merge_cost": table, "stage_seconds": seconds}


@contextlib.contextmanager
def _stage(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall seconds of stage ``name`` into ``seconds``."""
    t0 = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - t0, 1)


def _corpus(job: JobConfig) -> list[str]:
    """The tiny tokenizer's corpus: rendered expert conversations of every domain."""
    from forge_ray.pipeline import tiny_corpus

    return [doc for domain in job.domains for doc in tiny_corpus(domain_job(job, domain))]


# ---------------------------------------------------------------- SFT on every domain


def mixed_sft(job: JobConfig, run: Run, model_path: str, device: str) -> str:
    """Write each domain's expert data (``sft_data_<domain>.jsonl``), concatenate them into
    ``sft_data.jsonl`` (the SFT shuffles every epoch), and fine-tune on it with Ray Train."""
    from forge_ray.pipeline import demo_source
    from forge_ray.train.sft import run_sft, write_expert_data

    data = run.dir / "sft_data.jsonl"
    with open(data, "w") as mixed:
        for domain in job.domains:
            djob = domain_job(job, domain)
            part = run.dir / f"sft_data_{domain.name}.jsonl"
            stats = write_expert_data(djob, demo_source(djob), model_path, part)
            log.info("SFT data, %s: %d expert conversations, %.0f tokens on average -> %s", domain.name, stats["examples"],
                     stats["mean_tokens"], part)
            mixed.write(part.read_text())
    out = run.dir / "checkpoints" / "sft"
    t0 = time.perf_counter()
    rows = run_sft(job, model_path, data, out, device)
    for row in rows:
        run.log("sft", int(row["step"]), {k: row[k] for k in ("loss", "grad_norm", "lr", "epoch") if k in row})
    log.info("shared SFT done in %.0f s (final loss %.4f) -> %s", time.perf_counter() - t0,
             rows[-1]["loss"] if rows else float("nan"), out)
    return str(out)


# ---------------------------------------------------------------- RL per domain


class _DomainWandb:
    """The run's W&B handle, logging one domain's keys as ``<stage>/<domain>/<key>`` (the
    ``<stage>/step`` axes as they are), so the domains' curves stay apart."""

    def __init__(self, wandb_run: Any, domain: str):
        self._wb, self._domain = wandb_run, domain

    def log(self, data: dict, *args: Any, **kwargs: Any) -> Any:
        keys = {k: k if k.endswith("/step") else k.replace("/", f"/{self._domain}/", 1) for k in data}
        return self._wb.log({keys[k]: v for k, v in data.items()}, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wb, name)


@dataclasses.dataclass
class DomainRun(Run):
    """The job's run as one domain's RL sees it: the rows it logs carry ``domain``, the rows it
    reads (and truncates on resume) are its domain's only."""

    domain: str = ""

    @classmethod
    def of(cls, run: Run, job: JobConfig, domain: str) -> "DomainRun":
        fields = {f.name: getattr(run, f.name) for f in dataclasses.fields(Run)}
        wandb = _DomainWandb(run._wandb, domain) if run._wandb is not None else None
        return cls(**{**fields, "job": job, "_wandb": wandb, "timers": {}}, domain=domain)

    def log(self, stage: str, step: int, metrics: dict[str, Any]) -> None:
        super().log(stage, step, {"domain": self.domain, **metrics})

    def read_metrics(self, stage: str) -> list[dict]:
        return [r for r in super().read_metrics(stage) if r.get("domain") == self.domain]

    def rollouts_dir(self) -> Path:
        return super().rollouts_dir() / self.domain

    def truncate(self, step: int) -> None:
        path = self.dir / "metrics.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            keep = [r for r in rows if r.get("domain") != self.domain or r["stage"] not in ("rl", "eval") or r["step"] <= step]
            path.write_text("".join(json.dumps(r) + "\n" for r in keep))


def rl_stage(run: Run, name: str, djob: JobConfig, model_path: str, device: str) -> tuple[str, dict[str, Any]]:
    """The driver's RL of ``djob`` (a domain's job, or the mix's) from ``model_path``; its policy
    ends in ``checkpoints/rl_<name>`` (its step checkpoints, if any, in ``rl_<name>_steps``).
    Returns the policy's folder and the RL summary (also ``domains/<name>.json``)."""
    from forge_ray.driver import run_rl
    from forge_ray.metrics import plot_curves

    record = run.dir / "domains" / f"{name}.json"
    done = finished_stage(run, f"rl_{name}")
    if done and record.exists():
        return done, json.loads(record.read_text())
    drun = DomainRun.of(run, djob, name)
    env = "+".join(djob.env.mix) if djob.env.mix else djob.env.name
    log.info("RL on %s (%s, %d steps) from %s", name, env, djob.run.steps, model_path)
    summary = asyncio.run(run_rl(djob, drun, model_path, device))
    out = _stash_policy(run.dir / "checkpoints", name)
    summary = {**summary, "rl_checkpoint": str(out), "env": env}
    record.parent.mkdir(exist_ok=True)
    record.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    plot_curves(drun, run.dir / "plots" / f"reward_{name}.png")
    log.info("%s: held-out success %.3f -> %.3f; policy -> %s", name, summary["sft_success"], summary["rl_success"], out)
    return str(out), summary


def _stash_policy(checkpoints: Path, name: str) -> Path:
    """Move the driver's ``rl/`` to ``rl_<name>/``, and its step checkpoints (``rl-step-*``,
    ``latest``) to ``rl_<name>_steps/``, out of the next domain's way (it would resume them)."""
    out = checkpoints / f"rl_{name}"
    if out.exists():
        shutil.rmtree(out)
    (checkpoints / "rl").rename(out)
    steps = sorted(checkpoints.glob("rl-step-*")) + [p for p in (checkpoints / "latest",) if p.exists()]
    if steps:
        stash = checkpoints / f"rl_{name}_steps"
        stash.mkdir(exist_ok=True)
        for path in steps:
            path.rename(stash / path.name)
    return out


# ---------------------------------------------------------------- merge


def _merge_record(job: JobConfig) -> dict[str, Any]:
    m = job.merge
    return {"method": m.method, "density": m.density if m.method in ("sce", "ties") else None,
            "weights": list(m.weights) or None, "sce_energy": m.sce_energy if m.method == "sce" else None}


def merge_stage(job: JobConfig, run: Run, base: str, policies: list[str]) -> str:
    """``merge_models`` of the per-domain policies over ``base`` (the shared SFT) into
    ``checkpoints/merged``: the base's config, tokenizer and chat template, ``merge.json``."""
    from forge_ray.merge import merge_models

    out = run.dir / "checkpoints" / "merged"
    if run.resumed and (out / "merge.json").exists():
        log.info("resume: merge already done -> %s", out)
        return str(out)
    if out.exists():  # a merge cut short: merge_models wants an empty folder
        shutil.rmtree(out)
    m = _merge_record(job)
    merge_models(base, policies, m["method"], density=m["density"], weights=m["weights"], out_dir=out,
                 sce_energy=job.merge.sce_energy)
    log.info("merged %d policies with %s -> %s", len(policies), m["method"], out)
    return str(out)


# ---------------------------------------------------------------- evaluation


class DomainEvaluator:
    """A Ray actor: one vLLM engine on a model folder (the RL rollout worker, its environments
    in-process), evaluating the model on one domain after another."""

    def __init__(self, model_path: str, engine_kwargs: dict):
        from forge_ray.rollout.group import RolloutWorker

        self.worker = RolloutWorker(model_path, engine_kwargs, None, None)

    async def start(self) -> float:
        return await self.worker.start()

    async def evaluate(self, factory: Any, spec: Any, tasks: list, greedy: bool) -> list:
        """The worker's own evaluation, with this domain's environments and episode limits."""
        self.worker.env_factory, self.worker.spec = factory, spec
        return await self.worker.evaluate(tasks, greedy)

    def shutdown(self) -> None:
        self.worker.shutdown()


class _OnDomain:
    """What ``forge_ray.eval.evaluate`` plays on: an evaluator bound to one domain."""

    def __init__(self, actor: Any, factory: Any, spec: Any):
        self.actor, self.factory, self.spec = actor, factory, spec

    async def evaluate(self, tasks: list, greedy: bool) -> list:
        return await self.actor.evaluate.remote(self.factory, self.spec, tasks, greedy)


def _domain_setups(job: JobConfig) -> dict[str, tuple[Any, Any, list]]:
    """Per domain: its environment factory, episode limits and held-out tasks (the driver's)."""
    from forge_ray.driver import env_factory, task_source
    from forge_ray.rl_actors import episode_spec

    out = {}
    for domain in job.domains:
        djob = domain_job(job, domain)
        e = djob.env
        out[domain.name] = (env_factory(djob), episode_spec(djob), task_source(djob).tasks("heldout", e.eval_tasks, e.seed))
    return out


async def evaluate_models(job: JobConfig, run: Run, models: dict[str, str], device: str) -> dict[str, dict[str, dict]]:
    """``{model: {domain: evaluation}}``: each model folder served by an engine of its own (all at
    once, as the cluster's CPUs/GPUs allow), played greedily (``run.eval_greedy``) on every
    domain's held-out tasks, as the driver evaluates."""
    import ray

    djobs = [domain_job(job, d) for d in job.domains]
    engine_kwargs = dict(dtype=job.model.dtype, max_model_len=max(j.rollout.max_context + j.rollout.max_new_tokens for j in djobs),
                         kv_cache_mb=max(j.rollout.kv_cache_mb for j in djobs), device=device, seed=job.run.seed,
                         gpu_memory_utilization=job.rollout.gpu_memory_utilization)
    options: dict[str, Any] = dict(num_cpus=1, num_gpus=1 if device == "cuda" else 0, max_concurrency=1000)
    if job.cluster.rollout_resources:  # where the RL engines run (cluster.yaml node types)
        options["resources"] = dict(job.cluster.rollout_resources)
    remote, setups = ray.remote(DomainEvaluator).options(**options), _domain_setups(job)
    evals = await asyncio.gather(*(_evaluate_model(remote, path, engine_kwargs, setups, job.run.eval_greedy)
                                   for path in models.values()))
    results = dict(zip(models, evals))
    for i, (name, by_domain) in enumerate(results.items()):
        for domain, result in by_domain.items():
            run.log("merge_eval", i, {"model": name, "domain": domain, **result})
            log.info("held-out success of %s on %s: %.3f (n=%d)", name, domain, result["success"], result["n"])
    return results


async def _evaluate_model(remote: Any, path: str, engine_kwargs: dict, setups: dict, greedy: bool) -> dict[str, dict]:
    """One evaluator actor on ``path``: every domain's evaluation, one after another."""
    from forge_ray.eval import evaluate

    actor = remote.remote(str(Path(path).resolve()), engine_kwargs)
    try:
        await actor.start.remote()
        return {domain: await evaluate(_OnDomain(actor, factory, spec), tasks, greedy)
                for domain, (factory, spec, tasks) in setups.items()}
    finally:
        await _stop(actor)


async def _stop(actor: Any) -> None:
    import ray

    try:
        await asyncio.wait_for(actor.shutdown.remote(), timeout=60)
    except Exception as e:  # a dead engine has nothing left to stop
        log.warning("evaluator shutdown: %s", e)
    ray.kill(actor)


# ---------------------------------------------------------------- the merge-cost table


def build_table(results: dict[str, dict[str, dict]], domains: list[str], merge: dict | None = None) -> dict[str, Any]:
    """merge_cost.json: one row per model (in ``results``' order) with its held-out success on
    each domain and their mean; ``merge_cost[d]`` = success of ``rl_<d>`` on ``d`` minus the
    merged model's (> 0: the merge lost that much of the specialist), and its mean."""
    rows = []
    for model, by_domain in results.items():
        success = {d: round(float(by_domain[d]["success"]), 4) for d in domains}
        rows.append({"model": model, "success": success, "mean": round(sum(success.values()) / max(len(domains), 1), 4)})
    table: dict[str, Any] = {"domains": list(domains), "rows": rows, "merge_cost": {}, "merge": merge,
                             "eval_tasks": {d: next((r[d]["n"] for r in results.values()), 0) for d in domains}}
    if "merged" in results:
        cost = {d: round(float(results[f"rl_{d}"][d]["success"]) - float(results["merged"][d]["success"]), 4)
                for d in domains if f"rl_{d}" in results}
        table["merge_cost"] = {**cost, "mean": round(sum(cost.values()) / max(len(cost), 1), 4)} if cost else {}
    return table


def table_markdown(table: dict[str, Any]) -> str:
    """The table as markdown: rows = models, columns = domains (n tasks each) and the mean, then
    the merge cost."""
    domains = table["domains"]
    head = [f"{d} (n={table['eval_tasks'].get(d, '?')})" for d in domains]
    lines = ["| model | " + " | ".join(head) + " | mean |", "|---" * (len(domains) + 2) + "|"]
    for row in table["rows"]:
        lines.append(f"| {row['model']} | " + " | ".join(f"{row['success'][d]:.3f}" for d in domains) + f" | {row['mean']:.3f} |")
    cost = table.get("merge_cost") or {}
    if cost:
        cells = [f"{cost[d]:+.3f}" if d in cost else "" for d in domains]
        lines.append("| merge cost (rl_<domain> - merged) | " + " | ".join(cells) + f" | {cost['mean']:+.3f} |")
    merge = table.get("merge")
    if merge:
        lines.append("")
        lines.append("merge: " + ", ".join(f"{k} {v}" for k, v in merge.items() if v is not None))
    return "\n".join(lines)


def plot_merge_cost(table: dict[str, Any], out: Path) -> Path:
    """Grouped bars: one group per domain (and the mean), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [*table["domains"], "mean"]
    rows = table["rows"]
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.5 + 0.45 * len(groups) * len(rows)), 4))
    for i, row in enumerate(rows):
        values = [row["success"][d] for d in table["domains"]] + [row["mean"]]
        xs = [g + (i - (len(rows) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=row["model"])
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("held-out success")
    ax.set_ylim(0, 1.08)
    ax.set_title("merge cost: each model on each domain")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _wandb_table(run: Run, table: dict[str, Any]) -> None:
    """The table into the run's W&B: a ``merge_cost/table`` and a summary value per cell."""
    if run._wandb is None:
        return
    try:
        import wandb

        columns = ["model", *table["domains"], "mean"]
        data = [[r["model"], *(r["success"][d] for d in table["domains"]), r["mean"]] for r in table["rows"]]
        run._wandb.log({"merge_cost/table": wandb.Table(columns=columns, data=data)})
        run._wandb.summary.update({f"merge_cost/{r['model']}/{d}": r["success"][d] for r in table["rows"] for d in table["domains"]})
    except Exception as e:  # W&B is an observer: it must never take a run down
        log.warning("W&B merge-cost table: %s", e)


def write_table(run_dir: Path, table: dict[str, Any]) -> None:
    """``merge_cost.json``, ``merge_cost.md`` and ``plots/merge_cost.png`` in the run directory."""
    (run_dir / "merge_cost.json").write_text(json.dumps(table, indent=2) + "\n")
    (run_dir / "merge_cost.md").write_text(table_markdown(table) + "\n")
    plot_merge_cost(table, run_dir / "plots" / "merge_cost.png")
