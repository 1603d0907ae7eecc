"""The run directory and what goes into it: config, log, metrics JSONL, W&B, plots, peak RSS.

    run = Run.create(job)            # runs/<name>-<timestamp>/ with config.yaml and log.txt
    run.log("rl", step, {...})       # one JSON line per call, mirrored to W&B
    with run.timer("train"): ...     # named wall-clock timers, summed per step; spans of the timeline
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forge_ray.config import JobConfig, dump_job

log = logging.getLogger("forge_ray")


class PeakRSS:
    """Samples the memory of this process and all its descendants (the embedded Ray cluster, its
    workers, the engines' processes) and keeps the peaks: resident (RSS, shared pages counted in
    every process) and proportional (PSS, shared pages split among their users: what the job
    really costs), the latter per phase of the job (``phase``)."""

    def __init__(self, every_s: float = 1.0, pss_every: int = 5):
        self.peak_bytes = 0
        self.pss_every, self.samples = pss_every, 0  # PSS reads smaps_rollup (ms per process): every pss_every-th sample
        self.peak_pss: dict[str, int] = {}
        self.by_process: dict[str, dict[str, int]] = {}  # per phase: PSS per kind of process at the phase's peak
        self.current = "job"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def phase(self, name: str) -> None:
        """Count PSS samples from now on under ``name`` (e.g. "sft", "rl")."""
        self.current = name

    def sample(self) -> int:
        import psutil

        me = psutil.Process()
        full = self.samples % self.pss_every == 0
        self.samples += 1
        total = pss = 0
        kinds: dict[str, int] = {}
        for p in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                info = p.memory_full_info() if full else p.memory_info()  # full: Linux's pss too
                total += info.rss
                pss += getattr(info, "pss", info.rss)
                kind = process_kind(p) if p is not me else "driver"
                kinds[kind] = kinds.get(kind, 0) + getattr(info, "pss", info.rss)
        self.peak_bytes = max(self.peak_bytes, total)
        if full and pss > self.peak_pss.get(self.current, 0):
            self.peak_pss[self.current] = pss
            self.by_process[self.current] = kinds
        return total

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.sample()

    def stop(self) -> float:
        """Stop sampling; the peak RSS in GiB."""
        self._stop.set()
        return self.peak_bytes / 2**30

    def pss_gb(self) -> dict[str, float]:
        """Peak PSS per phase, GiB."""
        return {k: round(v / 2**30, 3) for k, v in self.peak_pss.items()}

    def pss_by_process_gb(self, phase: str) -> dict[str, float]:
        """PSS per kind of process at ``phase``'s peak, GiB, largest first."""
        kinds = self.by_process.get(phase, {})
        return {k: round(v / 2**30, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}


def process_kind(p: Any) -> str:
    """What a process of the job is: a Ray actor or task by its title (``ray::RolloutWorker``),
    ``ray::IDLE`` for pooled workers, vLLM's engine core, or the executable's name."""
    cmd = p.cmdline()
    title = cmd[0] if cmd else p.name()
    if title.startswith("ray::"):
        return title.split(".")[0].split(" ")[0]
    if "EngineCore" in p.name() or "EngineCore" in title:
        return "vllm EngineCore"
    for known in ("raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env", "monitor.py"):
        if any(known in part for part in cmd[:3]):
            return known
    return p.name()


@dataclass
class Run:
    job: JobConfig
    dir: Path
    started: float = field(default_factory=time.time)
    timers: dict[str, float] = field(default_factory=dict)
    resumed: bool = False
    _wandb: Any = None
    log_handler: logging.Handler | None = None  # the run's log.txt
    timeline: Any = None  # anatomy.Timeline: every timer's span, for the step anatomy

    @classmethod
    def create(cls, job: JobConfig, resume_dir: str | None = None) -> "Run":
        stamp = time.strftime("%Y%m%d-%H%M%S")
        # Absolute: Ray Train workers and actors do not share the driver's working directory.
        path = (Path(resume_dir) if resume_dir else Path(job.run.root) / f"{job.run.name}-{stamp}").resolve()
        if resume_dir and not (path / "config.yaml").exists():
            raise FileNotFoundError(f"--resume {resume_dir}: not a forge_ray run directory (no config.yaml)")
        for sub in ("checkpoints", "plots"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        dump_job(job, path / "config.yaml")
        from forge_ray.anatomy import Timeline

        run = cls(job, path, resumed=bool(resume_dir), timeline=Timeline(path / "timeline.jsonl"))
        run._attach_log_file()
        run._wandb = _start_wandb(job, path)
        log.info("run directory: %s", path)
        return run

    def _attach_log_file(self) -> None:
        handler = logging.FileHandler(self.dir / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        self.log_handler = handler

    def log(self, stage: str, step: int, metrics: dict[str, Any]) -> None:
        row = {"stage": stage, "step": step, "time": round(time.time() - self.started, 3), **metrics}
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._wandb is not None:
            self._wandb.log({f"{stage}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))} | {f"{stage}/step": step})

    @contextlib.contextmanager
    def timer(self, name: str):
        t0, wall = time.perf_counter(), time.time()
        try:
            yield
        finally:
            self.timers[name] = self.timers.get(name, 0.0) + time.perf_counter() - t0
            if self.timeline is not None:
                self.timeline.span(name, wall, time.time())

    def pop_timers(self) -> dict[str, float]:
        out, self.timers = {f"time/{k}": round(v, 4) for k, v in self.timers.items()}, {}
        return out

    def truncate(self, step: int) -> None:
        """Forget RL rows past ``step`` (a resumed run redoes those steps; the axis continues)."""
        path = self.dir / "metrics.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            keep = [r for r in rows if r["stage"] not in ("rl", "eval") or r["step"] <= step]
            path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def log_samples(self, step: int, trajectories: list[Any]) -> None:
        """Sample trajectories (prompt, turns, reward breakdown) to samples.jsonl and a W&B table."""
        rows = [sample_row(step, t) for t in trajectories]
        with open(self.dir / "samples.jsonl", "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        if self._wandb is not None and rows:
            import wandb

            columns = list(rows[0])
            table = wandb.Table(columns=columns, data=[[json.dumps(r[c]) if isinstance(r[c], (dict, list)) else r[c] for c in columns] for r in rows])
            self._wandb.log({"rl/samples": table, "rl/step": step})

    def dump_rollouts(self, step: int, trajectories: list[Any]) -> None:
        """``step``'s trajectories, whole (``Trajectory.to_json``), to ``rollouts/step_NNNNNN.jsonl``."""
        path = self.rollouts_dir() / f"step_{step:06d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            f.writelines(json.dumps(t.to_json()) + "\n" for t in trajectories)

    def rollouts_dir(self) -> Path:
        return self.dir / "rollouts"

    def read_metrics(self, stage: str) -> list[dict]:
        path = self.dir / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [r for r in rows if r["stage"] == stage]

    def abort(self, error: BaseException) -> None:
        """The job failed: say so in the log and end the W&B run as failed."""
        log.error("run failed: %s: %s", type(error).__name__, str(error).splitlines()[0] if str(error) else "")
        if self._wandb is not None:
            self._wandb.finish(exit_code=1)
            self._wandb = None

    def finish(self, summary: dict[str, Any]) -> None:
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self._wandb is not None:
            self._wandb.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
            self._wandb.finish()


def sample_row(step: int, traj: Any) -> dict[str, Any]:
    """One trajectory as a flat record: the task's last prompt message, then the turns."""
    prompt_msgs = traj.messages[: len(traj.messages) - _continuation_len(traj)]
    reward = traj.reward
    return {
        "step": step, "task_id": traj.task_id, "status": traj.status.value,
        "prompt": prompt_msgs[-1]["content"] if prompt_msgs else "",
        "turns": "\n".join(f"[{m['role']}] {m['content']}" for m in traj.messages[len(prompt_msgs):]),
        "reward": reward.total if reward else None,
        "reward_parts": dict(reward.parts) if reward else {}, "turn_rewards": list(reward.per_turn or []) if reward else [],
        "error": reward.error if reward else None,
        "versions": traj.versions,
    }


def _continuation_len(traj: Any) -> int:
    """Messages after the prompt: from the first assistant message on."""
    for i, m in enumerate(traj.messages):
        if m["role"] == "assistant":
            return len(traj.messages) - i
    return 0


def _start_wandb(job: JobConfig, run_dir: Path) -> Any:
    mode = job.run.wandb_mode
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    if mode == "disabled":
        return None
    try:
        import wandb

        id_file = run_dir / "wandb_id"  # a resumed run continues the same W&B run
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        wb = wandb.init(project=job.run.wandb_project, name=run_dir.name, dir=str(run_dir), mode=mode,
                        config=job.to_dict(), id=run_id, resume="allow")
        for stage in ("mid_train", "sft", "rl", "eval"):  # each stage has its own step axis, which survives resumes
            wb.define_metric(f"{stage}/step")
            wb.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
        return wb
    except Exception as e:  # W&B is an observer: it must never take a run down
        log.warning("W&B disabled: %s", e)
        return None


def plot_curves(run: Run, out: Path) -> Path:
    """Reward per RL step (mean and a 5-step moving average) with the evaluation points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run.read_metrics("rl")
    evals = run.read_metrics("eval")
    fig, ax = plt.subplots(figsize=(7, 4))
    if rows:
        steps = [r["step"] for r in rows]
        reward = [r["reward_mean"] for r in rows]
        ax.plot(steps, reward, alpha=0.4, label="train reward (mean)")
        k = 5
        smooth = [sum(reward[max(0, i - k + 1) : i + 1]) / len(reward[max(0, i - k + 1) : i + 1]) for i in range(len(reward))]
        ax.plot(steps, smooth, label=f"train reward ({k}-step avg)")
    for e in evals:
        ax.scatter([e["step"]], [e["success"]], marker="o", s=50, zorder=3)
        ax.annotate(f"{e['name']} {e['success']:.2f}", (e["step"], e["success"]), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("RL step")
    ax.set_ylabel("reward / held-out success")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
