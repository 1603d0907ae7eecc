"""Collapse guard: watches the RL step metrics and calls a collapse before the run wastes its data.

    guard = CollapseGuard(GuardConfig(enabled=True, action="rollback"))
    verdict = guard.observe(step, row)  # row: the driver's "rl" metrics of that step
    if verdict: ...                      # verdict.reasons, verdict.action, guard.last_good_step

Klear-AgentForge's joint multi-task RL "must be monitored for collapse before all samples are
consumed". Four signals, each smoothed as the mean of its last ``window`` observations:

    entropy    falls below ``entropy_floor`` x its baseline        (the policy turns deterministic)
    reward     falls ``reward_drop`` below its best smoothed value
    length     leaves [baseline / ``length_ratio``, baseline x ``length_ratio``]  (blow-up or terse)
    grad_norm  rises above ``grad_norm_max`` x the running median of earlier grad norms

Steps up to ``warmup_steps`` are ignored; the baselines are the means of the first ``window``
observations after them. A non-finite value trips its signal at once. A signal missing from a
step's metrics is left as it was (per-domain steps need not log everything). A verdict is
returned when a signal trips that was not tripped at its previous observation, so an alert is
not repeated every step; it re-arms once the signal recovers. Pure Python, no Ray, no torch.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Literal

# Signal -> key of the driver's "rl" row (driver._log_step), or (numerator, denominator) keys.
METRIC_KEYS: dict[str, str | tuple[str, str]] = {
    "entropy": "entropy",  # learner: mean per-token entropy of the policy over the loss tokens
    "reward": "reward_mean",  # driver: mean scored reward of the step's taken groups
    "length": ("tokens", "sequences"),  # learner: loss (sampled) tokens / trajectories = mean response length
    "grad_norm": "grad_norm",  # learner: global grad norm before clipping, mean over the step's optimizer steps
}
HISTORY = 256  # grad norms kept for the running median, and clean steps kept for last_good_step


@dataclass(frozen=True)
class GuardConfig:
    enabled: bool = False  # watch the RL metrics for collapse (observe() does nothing when off)
    action: Literal["alert", "stop", "rollback"] = "alert"  # on a verdict: log it, end RL, or restore the last good checkpoint at a lower LR
    window: int = 5  # observations averaged into each smoothed value and into each baseline
    entropy_floor: float = 0.3  # collapse when smoothed entropy < this fraction of its baseline (0 = off)
    reward_drop: float = 0.3  # collapse when smoothed reward < its running best minus this, absolute (0 = off)
    length_ratio: float = 3.0  # collapse when smoothed response length > this x baseline or < baseline / this (0 = off)
    grad_norm_max: float = 10.0  # collapse when smoothed grad norm > this x the running median of earlier ones (0 = off)
    lr_factor: float = 0.5  # rollback multiplies the learning rate by this
    warmup_steps: int = 10  # steps ignored at the start: no baseline, no verdict

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"guard.window must be >= 1, got {self.window}")
        if self.length_ratio and self.length_ratio <= 1:
            raise ValueError(f"guard.length_ratio must be > 1 (or 0 = off), got {self.length_ratio}")
        if not 0 < self.lr_factor <= 1:
            raise ValueError(f"guard.lr_factor must be in (0, 1], got {self.lr_factor}")
        if min(self.entropy_floor, self.reward_drop, self.grad_norm_max, self.warmup_steps) < 0:
            raise ValueError("guard thresholds and warmup_steps must be >= 0")


@dataclass
class Verdict:
    step: int  # the step whose metrics tripped the guard
    reasons: list[str] = field(default_factory=list)  # one per tripped signal: "entropy=0.04 < 0.3 x baseline 0.98"
    action: str = "alert"  # GuardConfig.action


def read_signals(metrics: dict[str, Any]) -> dict[str, float]:
    """The signals present in ``metrics`` (via ``METRIC_KEYS``); absent or non-numeric ones are left out."""
    def num(key: str) -> float | None:
        v = metrics.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    out = {}
    for name, key in METRIC_KEYS.items():
        if isinstance(key, tuple):
            top, bottom = num(key[0]), num(key[1])
            value = top / bottom if top is not None and bottom else None
        else:
            value = num(key)
        if value is not None:
            out[name] = value
    return out


class CollapseGuard:
    def __init__(self, cfg: GuardConfig) -> None:
        self.cfg = cfg
        self._recent: dict[str, list[list[float]]] = {n: [] for n in METRIC_KEYS}  # [step, value] of the last `window`
        self._baseline: dict[str, float] = {}  # mean of the first `window` observations after warm-up
        self._best: float | None = None  # best smoothed reward so far
        self._grads: list[float] = []  # grad norms judged healthy (running median)
        self._tripped: set[str] = set()  # signals tripped at their latest observation
        self._clean: list[int] = []  # recent steps that no tripped window covers

    @property
    def last_good_step(self) -> int | None:
        """The latest step outside every window that tripped a signal: the newest step whose
        metrics are all trusted, so the newest checkpoint at or before it predates the collapse.
        None before any step, or when no clean step is left in memory."""
        return self._clean[-1] if self._clean else None

    @property
    def baselines(self) -> dict[str, float]:
        return dict(self._baseline)

    def observe(self, step: int, metrics: dict[str, Any]) -> Verdict | None:
        """Feed one step's metrics; returns a Verdict when a signal newly trips, else None."""
        if not self.cfg.enabled:
            return None
        if step <= self.cfg.warmup_steps:
            self._mark_clean(step)
            return None
        values, reasons, starts = read_signals(metrics), {}, {}
        for name, value in values.items():
            if not math.isfinite(value):
                reasons[name], starts[name] = f"{name}={value} is not finite", step
                continue
            reason = self._judge(name, step, value)
            if reason:
                reasons[name], starts[name] = reason, int(self._recent[name][0][0])
        new = set(reasons) - self._tripped
        self._tripped = (self._tripped - set(values)) | set(reasons)
        if self._tripped:  # the steps of a window that tripped are suspect, this one included
            first = min(starts.values(), default=step)
            self._clean = [s for s in self._clean if s < first]
        else:
            self._mark_clean(step)
        if not new:
            return None
        return Verdict(step, [reasons[n] for n in METRIC_KEYS if n in reasons], self.cfg.action)

    def _judge(self, name: str, step: int, value: float) -> str | None:
        """Add ``value`` to the signal's window; the reason it trips, or None."""
        cfg, recent = self.cfg, self._recent[name]
        recent.append([step, value])
        del recent[: -cfg.window]
        if len(recent) < cfg.window:
            return None
        smooth = sum(v for _, v in recent) / len(recent)
        if name not in self._baseline:
            self._baseline[name] = smooth
            if name == "reward":
                self._best = smooth
            if name == "grad_norm":
                self._grads = [v for _, v in recent]
            return None
        base = self._baseline[name]
        reason = None
        if name == "entropy" and cfg.entropy_floor and base > 0 and smooth < cfg.entropy_floor * base:
            reason = f"entropy={smooth:.4g} < {cfg.entropy_floor:g} x baseline {base:.4g}"
        elif name == "reward":
            if cfg.reward_drop and smooth < self._best - cfg.reward_drop:
                reason = f"reward={smooth:.4g} < best {self._best:.4g} - {cfg.reward_drop:g}"
            self._best = max(self._best, smooth)
        elif name == "length" and cfg.length_ratio and base > 0:
            if smooth > cfg.length_ratio * base:
                reason = f"length={smooth:.4g} > {cfg.length_ratio:g} x baseline {base:.4g}"
            elif smooth < base / cfg.length_ratio:
                reason = f"length={smooth:.4g} < baseline {base:.4g} / {cfg.length_ratio:g}"
        elif name == "grad_norm":
            median = statistics.median(self._grads)
            if cfg.grad_norm_max and median > 0 and smooth > cfg.grad_norm_max * median:
                reason = f"grad_norm={smooth:.4g} > {cfg.grad_norm_max:g} x median {median:.4g}"
            else:  # a spike stays out of the reference it is measured against
                self._grads = (self._grads + [value])[-HISTORY:]
        return reason

    def _mark_clean(self, step: int) -> None:
        self._clean = (self._clean + [step])[-HISTORY:]

    def rewind(self) -> None:
        """After a rollback: forget the recent windows and tripped signals (baselines, best reward
        and the grad-norm median stay); judging resumes once a window has filled again."""
        self._recent = {n: [] for n in METRIC_KEYS}
        self._tripped = set()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state, for the driver's checkpoint (a resumed run keeps its baselines)."""
        return {"recent": {n: [list(p) for p in r] for n, r in self._recent.items()}, "baseline": dict(self._baseline),
                "best": self._best, "grads": list(self._grads), "tripped": sorted(self._tripped), "clean": list(self._clean)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._recent = {n: [list(p) for p in state["recent"].get(n, [])] for n in METRIC_KEYS}
        self._baseline = {n: float(v) for n, v in state["baseline"].items()}
        self._best = state["best"]
        self._grads = [float(v) for v in state["grads"]]
        self._tripped = set(state["tripped"])
        self._clean = [int(s) for s in state["clean"]]
