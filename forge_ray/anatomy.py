"""Step anatomy: where an RL step's time goes, in every run.

Three sources, all on one wall clock (``time.time()``, shared by the actors of one machine and,
to NTP precision, of a cluster):

- the driver's named timers (``Run.timer``): waiting for groups, training, exporting, syncing,
  checkpointing; each becomes a span on its actor's lane;
- each rollout worker's ``EngineActivity``: the intervals when its engine had at least one
  request in flight (generating) and its object-store puts;
- each episode's ``EpisodeTime`` (in its ``TrajectoryMeta``): engine, environment, scoring, and
  the rest (the agent loop and its Ray calls).

Per step they become ``anatomy/*`` columns of the ``rl`` rows of ``metrics.jsonl`` (and W&B),
and spans in ``timeline.jsonl``; ``plot_timeline`` draws ``plots/timeline.png`` from those,
one lane per actor.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

Interval = tuple[float, float]

LANES = {"wait_rollout": "driver", "spawn": "driver", "startup": "driver", "eval": "driver", "train": "learner", "export": "learner", "sync": "learner",
         "checkpoint": "learner"}  # driver timer -> the lane it is drawn on


@dataclass
class EngineReport:
    """What a rollout worker did since its last report: the intervals its engine was generating
    and the seconds it spent putting finished trajectories into the object store and buffer."""

    intervals: list[Interval] = field(default_factory=list)
    put_seconds: float = 0.0
    groups: int = 0


class EngineActivity:
    """Tracks the intervals during which an engine has at least one request in flight."""

    def __init__(self) -> None:
        self.inflight = 0
        self.since: float | None = None
        self.report = EngineReport()

    def begin(self) -> None:
        if self.inflight == 0:
            self.since = time.time()
        self.inflight += 1

    def end(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self.since is not None:
            self.report.intervals.append((self.since, time.time()))
            self.since = None

    def put(self, seconds: float) -> None:
        self.report.put_seconds += seconds
        self.report.groups += 1

    def pop(self) -> EngineReport:
        """The report since the last pop; an interval still open is cut at now."""
        out, self.report = self.report, EngineReport()
        if self.since is not None:
            now = time.time()
            out.intervals.append((self.since, now))
            self.since = now
        return out


def covered(intervals: Sequence[Interval], t0: float, t1: float) -> float:
    """Seconds of ``[t0, t1]`` covered by the union of ``intervals``."""
    total, reach = 0.0, t0
    for a, b in sorted(intervals):
        a, b = max(a, reach), min(b, t1)
        if b > a:
            total += b - a
            reach = b
    return total


def episode_breakdown(metas: Sequence[Any]) -> dict[str, float]:
    """Mean seconds per episode in the engine, the environment, scoring and the rest."""
    times = [m.time for m in metas if m.time.wall > 0]
    if not times:
        return {}
    n = len(times)
    mean = {k: sum(getattr(t, k) for t in times) / n for k in ("wall", "engine", "env", "score")}
    mean["other"] = max(mean["wall"] - mean["engine"] - mean["env"] - mean["score"], 0.0)
    return {f"anatomy/episode_{k}_s": round(v, 4) for k, v in mean.items()}


def step_figures(reports: Sequence[EngineReport], metas: Sequence[Any], t0: float, t1: float) -> dict[str, float]:
    """The ``anatomy/*`` columns of one step that ran from ``t0`` to ``t1`` (the driver's
    own timers are the row's ``time/*`` columns)."""
    wall = max(t1 - t0, 1e-9)
    row: dict[str, float] = {"anatomy/step_s": round(wall, 4)}
    busy = [covered(r.intervals, t0, t1) / wall for r in reports]
    if busy:
        row["anatomy/engine_generating_frac"] = round(sum(busy) / len(busy), 4)
        row["anatomy/engine_generating_min"] = round(min(busy), 4)
    groups = sum(r.groups for r in reports)
    if groups:
        row["anatomy/put_s_per_group"] = round(sum(r.put_seconds for r in reports) / groups, 5)
    resumed = sum(getattr(m, "resumed", 0) for m in metas)
    return {**row, **episode_breakdown(metas), **({"anatomy/turns_resumed": resumed} if resumed else {})}


class Timeline:
    """The run's spans: kept per step for the anatomy, appended to ``timeline.jsonl``."""

    def __init__(self, path: Path):
        self.path = path
        self.spans: list[dict] = []
        self.mark = time.time()  # where the current step began

    def span(self, name: str, t0: float, t1: float, lane: str | None = None) -> None:
        self.spans.append({"lane": lane or LANES.get(name, "driver"), "name": name, "t0": t0, "t1": t1})

    def step(self, step: int, reports: Sequence[EngineReport], metas: Sequence[Any]) -> dict[str, float]:
        """Close the current step: its figures, with the spans and engine intervals written out."""
        now = time.time()
        row = step_figures(reports, metas, self.mark, now)
        rows = [{**s, "step": step} for s in self.spans]
        rows += [{"lane": f"engine {i}", "name": "generate", "t0": a, "t1": b, "step": step}
                 for i, r in enumerate(reports) for a, b in r.intervals]
        with open(self.path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        self.spans, self.mark = [], now
        return row


async def engine_reports(rollout: Any) -> list[EngineReport]:
    """Every rollout worker's report since the last call (an empty one for a dead worker)."""
    import asyncio

    results = await asyncio.gather(*(w.activity.remote() for w in rollout.workers), return_exceptions=True)
    return [r if isinstance(r, EngineReport) else EngineReport() for r in results]


COLOURS = {"wait_rollout": "#bbbbbb", "spawn": "#eeeeee", "startup": "#dddddd", "eval": "#17becf", "train": "#1f77b4", "export": "#9467bd", "sync": "#ff7f0e",
           "checkpoint": "#8c564b", "generate": "#2ca02c"}


def plot_timeline(path: Path, out: Path, zoom_steps: int = 3) -> Path | None:
    """``plots/timeline.png``: one lane per actor over the whole run, and a zoom on
    ``zoom_steps`` steps from the middle of it. None when the run has no timeline."""
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min(r["t0"] for r in rows)
    lanes = sorted({r["lane"] for r in rows}, key=lambda lane: (lane != "driver", lane != "learner", lane))
    steps = sorted({r["step"] for r in rows})
    mid = steps[len(steps) // 2] if steps else 0
    zoomed = [r for r in rows if mid <= r["step"] < mid + zoom_steps]
    fig, axes = plt.subplots(2, 1, figsize=(11, 1.2 + 0.9 * len(lanes)), squeeze=False)
    for ax, part, title in ((axes[0][0], rows, "whole run"), (axes[1][0], zoomed, f"steps {mid}-{mid + zoom_steps - 1}")):
        _lanes(ax, part, lanes, start)
        ax.set_title(title, fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    fig.legend(handles, list(COLOURS), loc="upper center", ncol=len(COLOURS), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _lanes(ax: Any, rows: Sequence[dict], lanes: list[str], start: float) -> None:
    for y, lane in enumerate(lanes):
        for name, colour in COLOURS.items():
            bars = [(r["t0"] - start, r["t1"] - r["t0"]) for r in rows if r["lane"] == lane and r["name"] == name]
            if bars:
                ax.broken_barh(bars, (y - 0.4, 0.8), color=colour)
    ax.set_yticks(range(len(lanes)), lanes)
    ax.set_xlabel("seconds since the first span")
    ax.grid(axis="x", alpha=0.3)
