"""forge_ray's own metrics in the Ray dashboard (Prometheus, through ``ray.util.metrics``).

Every process that records creates the metric objects lazily, once; values reach the node's
metrics agent and from there ``http://NODE:METRICS_EXPORT_PORT/metrics`` and the dashboard's
Metrics view. Names all start with ``forge_``; tags say which role recorded them.

    record("learner_step_seconds", 2.4)          # a gauge: the latest value
    count("rollout_tokens", 512, role="rollout")  # a counter: Prometheus takes the rate
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

GAUGES = {
    "policy_version": "policy version the learner has published",
    "buffer_ready_groups": "complete GRPO groups waiting in the trajectory buffer (queue depth)",
    "staleness": "policy versions between the learner and the oldest turn it trained on",
    "learner_step_seconds": "seconds of the last learner update",
    "weight_sync_seconds": "seconds of the last weight sync to the rollout engines",
    "rollout_tokens_per_s": "sampled tokens per second over the last learner step",
    "rollout_busy_fraction": "fraction of wall time the rollout engines had episodes in flight",
    "reward_latency_seconds": "seconds to score a finished episode",
    "reward_mean": "mean reward of the trajectories of the last learner step",
    "env_busy_fraction": "fraction of an env actor's slot-time spent in reset/step/score (last window)",
    "env_step_seconds": "seconds of the last env-pool step call, round trip",
    "env_leases_waiting": "episodes waiting for an env-pool slot (queue depth)",
}
COUNTERS = {
    "rollout_tokens": "tokens sampled by the rollout engines",
    "trajectories": "finished trajectories",
    "prompts_consumed": "prompts whose groups the learner consumed",
    "env_failures": "episodes lost to an env-pool failure (actor died or a call timed out)",
}

_made: dict[str, Any] = {}


def _metric(name: str) -> Any:
    if name not in _made:
        from ray.util import metrics

        if name in GAUGES:
            _made[name] = metrics.Gauge(f"forge_{name}", description=GAUGES[name], tag_keys=("role",))
        elif name in COUNTERS:
            _made[name] = metrics.Counter(f"forge_{name}", description=COUNTERS[name], tag_keys=("role",))
        else:
            raise KeyError(f"unknown forge_ray metric {name!r}; known: {', '.join(sorted(GAUGES | COUNTERS))}")
    return _made[name]


def _safe(fn) -> None:
    try:
        fn()
    except KeyError:
        raise
    except Exception as e:  # an observer never takes the run down (e.g. Ray not initialised)
        log.debug("metric not recorded: %s", e)


def record(name: str, value: float, role: str = "driver") -> None:
    """Set gauge ``forge_<name>``."""
    _safe(lambda: _metric(name).set(float(value), tags={"role": role}))


def count(name: str, value: float = 1.0, role: str = "driver") -> None:
    """Add ``value`` to counter ``forge_<name>``."""
    if value > 0:
        _safe(lambda: _metric(name).inc(float(value), tags={"role": role}))


def record_step(row: dict, token_rate: float, ready: int, consumed: int) -> None:
    """One RL step's figures (the driver's ``metrics.jsonl`` row) as Ray dashboard metrics."""
    record("policy_version", row["version"])
    record("staleness", row["staleness_max"])
    record("reward_mean", row["reward_mean"])
    record("buffer_ready_groups", ready)
    record("rollout_tokens_per_s", token_rate)
    count("prompts_consumed", consumed)
    for name, key in (("learner_step_seconds", "time/train"), ("weight_sync_seconds", "sync_seconds")):
        if key in row:
            record(name, row[key])
