"""CollapseGuard on synthetic RL runs. Trip steps are worked out by hand in the comments:
window 5, warm-up 3 steps, baseline = mean of steps 4..8, collapses start at step S = 20."""
import json
import random
import typing
from pathlib import Path

import pytest

from forge_ray.guard import METRIC_KEYS, CollapseGuard, GuardConfig, Verdict, read_signals

ROOT = Path(__file__).resolve().parents[2]
S = 20  # first collapsed step


def cfg(**kw) -> GuardConfig:
    return GuardConfig(**{"enabled": True, "window": 5, "warmup_steps": 3, **kw})


def healthy(step: int) -> dict:
    """A flat, healthy step: entropy 1, reward 0.8, 100 tokens per trajectory, grad norm 1."""
    return {"entropy": 1.0, "reward_mean": 0.8, "tokens": 1600.0, "sequences": 16.0, "grad_norm": 1.0,
            "loss": 0.01, "version": step, "time/train": 1.0}


def run(guard: CollapseGuard, steps: range, change=lambda step, m: None) -> dict[int, Verdict]:
    """Feed ``steps``; ``change(step, metrics)`` edits each step's metrics in place. Returns the verdicts by step."""
    out = {}
    for step in steps:
        m = healthy(step)
        change(step, m)
        v = guard.observe(step, m)
        if v is not None:
            out[step] = v
    return out


def test_metric_keys_are_what_the_driver_logs():
    # The row of driver._log_step: reward_mean there, the rest from FSDPWorker.train_step's metrics.
    driver = (ROOT / "forge_ray/driver.py").read_text()
    worker = (ROOT / "forge_ray/learner/worker.py").read_text()
    assert '"reward_mean"' in driver
    for key in ("entropy", "grad_norm", "tokens", "sequences"):
        assert f'"{key}"' in worker or f"{key}=" in worker, key
    assert read_signals(healthy(1)) == {"entropy": 1.0, "reward": 0.8, "length": 100.0, "grad_norm": 1.0}
    assert set(METRIC_KEYS) == {"entropy", "reward", "length", "grad_norm"}


def test_healthy_noisy_run_never_trips():
    # 300 steps: entropy drifting down 1.0 -> 0.6 (not below 0.3 x ~1.0), reward rising 0.2 -> 0.7 with
    # noise, a 3:1 multi-task reward pattern (every 4th step 0.4 lower), lengths 80..120, grad norms with single blips.
    rng = random.Random(0)
    guard = CollapseGuard(cfg())

    def noisy(step, m):
        m["entropy"] = 1.0 - 0.4 * step / 300 + rng.uniform(-0.05, 0.05)
        m["reward_mean"] = 0.2 + 0.5 * step / 300 + rng.uniform(-0.1, 0.1) - (0.4 if step % 4 == 0 else 0.0)
        m["tokens"] = 16 * rng.uniform(80, 120)
        m["grad_norm"] = rng.uniform(0.5, 1.5) * (8.0 if step % 37 == 0 else 1.0)

    assert run(guard, range(1, 301), noisy) == {}
    assert guard.last_good_step == 300
    assert 0.9 < guard.baselines["entropy"] < 1.1 and 80 < guard.baselines["length"] < 120


def test_entropy_collapse_trips_after_the_window():
    # Baseline 1.0. From S: 0.6, 0.3, 0.1, 0.05, 0.05 (5% of baseline). Smoothed (mean of 5):
    # S+3: (1 + 0.6 + 0.3 + 0.1 + 0.05) / 5 = 0.41 >= 0.3; S+4: (0.6 + 0.3 + 0.1 + 0.05 + 0.05) / 5 = 0.22 < 0.3.
    falling = [0.6, 0.3, 0.1, 0.05]
    guard = CollapseGuard(cfg())

    def collapse(step, m):
        if step >= S:
            m["entropy"] = falling[min(step - S, 3)]

    verdicts = run(guard, range(1, S + 4), collapse)
    assert verdicts == {} and guard.last_good_step == S + 3  # not yet: the mean still reads 0.41
    verdicts = run(guard, range(S + 4, S + 5), collapse)
    v = verdicts[S + 4]
    assert v.step == S + 4 and v.action == "alert" and len(v.reasons) == 1
    assert v.reasons[0] == "entropy=0.22 < 0.3 x baseline 1"
    assert guard.last_good_step == S - 1  # the step before the window that tripped: all of S..S+4 is suspect
    assert run(guard, range(S + 5, S + 10), collapse) == {}  # still collapsed: said once, not every step
    assert guard.last_good_step == S - 1


def test_reward_drop_from_running_best():
    # Baseline 0.5 (steps 4..8), then 0.8 from step 9: running best 0.8 (not the baseline).
    # From S the reward is 0.45: smoothed 0.8 - 0.07k; k=4: 0.52 >= 0.5, k=5: 0.45 < 0.8 - 0.3.
    guard = CollapseGuard(cfg(action="stop"))

    def drop(step, m):
        m["reward_mean"] = 0.5 if step <= 8 else 0.8 if step < S else 0.45

    verdicts = run(guard, range(1, S + 8), drop)
    assert list(verdicts) == [S + 4]
    v = verdicts[S + 4]
    assert v.action == "stop" and v.reasons == ["reward=0.45 < best 0.8 - 0.3"]
    assert guard.baselines["reward"] == 0.5
    assert guard.last_good_step == S - 1


@pytest.mark.parametrize("per_seq, reason", [
    (340.0, "length=340 > 3 x baseline 100"),  # blow-up: 100 + 48k > 300 first at k=5 (k=4: 292)
    (20.0, "length=20 < baseline 100 / 3"),  # terse replies: 100 - 16k < 33.3 first at k=5 (k=4: 36)
])
def test_length_leaves_its_band_both_ways(per_seq, reason):
    guard = CollapseGuard(cfg(action="rollback"))

    def change(step, m):
        if step >= S:
            m["tokens"] = 16 * per_seq

    verdicts = run(guard, range(1, S + 8), change)
    assert list(verdicts) == [S + 4]
    assert verdicts[S + 4].reasons == [reason] and verdicts[S + 4].action == "rollback"
    assert guard.last_good_step == S - 1


def test_grad_norm_sustained_spike_trips_a_single_blip_does_not():
    # Median 1.0. A single 12 at step 12 moves the mean to 3.2: no verdict. From S the norm stays 12:
    # smoothed 1 + 2.2k; k=4: 9.8 <= 10, k=5: 12 > 10 x 1.
    guard = CollapseGuard(cfg())

    def spike(step, m):
        if step == 12 or step >= S:
            m["grad_norm"] = 12.0

    verdicts = run(guard, range(1, S + 8), spike)
    assert list(verdicts) == [S + 4]
    assert verdicts[S + 4].reasons == ["grad_norm=12 > 10 x median 1"]
    assert guard.last_good_step == S - 1


def test_non_finite_value_trips_at_once():
    guard = CollapseGuard(cfg())
    verdicts = run(guard, range(1, S + 1), lambda step, m: m.update(grad_norm=float("nan")) if step == S else None)
    assert list(verdicts) == [S] and verdicts[S].reasons == ["grad_norm=nan is not finite"]
    assert guard.last_good_step == S - 1


def test_several_signals_in_one_verdict_and_rearm_after_recovery():
    # Entropy and length both move at S: one verdict naming both. Recovery from S+10 clears them;
    # a second collapse at S+30 is reported again.
    guard = CollapseGuard(cfg())

    def both(step, m):
        if S <= step < S + 10 or step >= S + 30:
            m["entropy"], m["tokens"] = 0.01, 16 * 400.0

    # entropy 1 - 0.198k < 0.3 and length 100 + 60k > 300 both first at k=4
    verdicts = run(guard, range(1, S + 40), both)
    assert list(verdicts) == [S + 3, S + 33]
    assert [r.split("=")[0] for r in verdicts[S + 3].reasons] == ["entropy", "length"]
    assert guard.last_good_step == S + 29 - 1  # S+29 lies in the window (S+29..S+33) that tripped


def test_a_signal_tripping_later_gets_its_own_verdict():
    # Length 1000 trips at k=2 (100 + 180k > 300); entropy 0.01 joins at k=4: a second verdict, naming both.
    guard = CollapseGuard(cfg())
    verdicts = run(guard, range(1, S + 8), lambda step, m: m.update(entropy=0.01, tokens=16000.0) if step >= S else None)
    assert list(verdicts) == [S + 1, S + 3]
    assert verdicts[S + 1].reasons == ["length=460 > 3 x baseline 100"]
    assert [r.split("=")[0] for r in verdicts[S + 3].reasons] == ["entropy", "length"]
    # the length window that tripped, S-3..S+1, reaches back before the onset: conservative
    assert guard.last_good_step == S - 4


def test_warmup_is_ignored():
    # Wild values during the 3 warm-up steps (and a NaN): no verdict, and they are not in the baseline.
    guard = CollapseGuard(cfg())
    wild = {"entropy": 100.0, "reward_mean": 5.0, "tokens": 1e6, "sequences": 1.0, "grad_norm": float("inf")}
    for step in range(1, 4):
        assert guard.observe(step, wild) is None
    assert run(guard, range(4, 40)) == {}
    assert guard.baselines == {"entropy": 1.0, "reward": 0.8, "length": 100.0, "grad_norm": 1.0}
    # and no verdict before a baseline exists: a collapse right after warm-up becomes the baseline
    late = CollapseGuard(cfg(warmup_steps=50))
    assert run(late, range(1, 51), lambda step, m: m.update(entropy=0.01)) == {}
    assert late.baselines == {} and late.last_good_step == 50


def test_missing_keys_are_ignored():
    # A step without learner metrics (no update made) or a domain that logs only its reward.
    guard = CollapseGuard(cfg())
    run(guard, range(1, 15))
    assert guard.observe(15, {}) is None
    assert guard.observe(16, {"reward_mean": 0.8, "sequences": 0.0}) is None
    assert guard.observe(17, {"tokens": 5.0}) is None  # no sequences: no length
    assert guard.last_good_step == 17
    assert run(guard, range(18, 30)) == {}


def test_disabled_guard_does_nothing():
    guard = CollapseGuard(GuardConfig())
    assert run(guard, range(1, 40), lambda step, m: m.update(entropy=0.0)) == {}
    assert guard.last_good_step is None and guard.baselines == {}


@pytest.mark.parametrize("action", ["alert", "stop", "rollback"])
def test_action_is_carried_in_the_verdict(action):
    guard = CollapseGuard(cfg(action=action))
    verdicts = run(guard, range(1, S + 8), lambda step, m: m.update(entropy=0.0) if step >= S else None)
    assert [v.action for v in verdicts.values()] == [action]


def test_state_dict_round_trip_through_json():
    # Stop half-way into a reward collapse, restore into a fresh guard, finish both: the same verdicts.
    def drop(step, m):
        m["reward_mean"] = 0.5 if step <= 8 else 0.8 if step < S else 0.45

    first = CollapseGuard(cfg())
    assert run(first, range(1, S + 2), drop) == {}
    state = json.loads(json.dumps(first.state_dict()))
    second = CollapseGuard(cfg())
    second.load_state_dict(state)
    assert second.state_dict() == first.state_dict()
    assert second.baselines == first.baselines and second.last_good_step == first.last_good_step
    rest = range(S + 2, S + 8)
    assert run(second, rest, drop) == run(first, rest, drop)
    assert list(run(CollapseGuard(cfg()), range(1, S + 8), drop)) == [S + 4]  # a guard that saw it all agrees


def test_rewind_after_rollback_keeps_baselines():
    guard = CollapseGuard(cfg(action="rollback"))
    verdicts = run(guard, range(1, S + 5), lambda step, m: m.update(entropy=0.0) if step >= S else None)
    assert list(verdicts) == [S + 3]
    guard.rewind()  # the driver restored a checkpoint <= last_good_step; the step axis goes on
    assert guard.baselines["entropy"] == 1.0
    assert run(guard, range(S + 5, S + 20)) == {}
    assert guard.last_good_step == S + 19
    again = run(guard, range(S + 20, S + 30), lambda step, m: m.update(entropy=0.0))
    assert list(again) == [S + 23]


def test_config_checks_and_type_hints():
    with pytest.raises(ValueError, match="window"):
        GuardConfig(window=0)
    with pytest.raises(ValueError, match="length_ratio"):
        GuardConfig(length_ratio=0.5)
    with pytest.raises(ValueError, match="lr_factor"):
        GuardConfig(lr_factor=0.0)
    hints = typing.get_type_hints(GuardConfig)  # what config.build_job reads for a `guard:` section
    assert typing.get_args(hints["action"]) == ("alert", "stop", "rollback") and hints["window"] is int
