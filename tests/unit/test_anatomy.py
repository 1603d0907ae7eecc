"""The step anatomy's arithmetic and files (forge_ray/anatomy.py)."""
import json
import time

import pytest

from forge_ray.anatomy import EngineActivity, EngineReport, Timeline, covered, episode_breakdown, plot_timeline, step_figures
from forge_ray.types import EpisodeTime, Status, TrajectoryMeta


def meta(wall, engine, env, score):
    return TrajectoryMeta("t", "g", 0, 0, Status.OK, 1.0, 10, time=EpisodeTime(wall, engine, env, score))


def test_covered_takes_the_union_clipped_to_the_window():
    assert covered([(0, 2), (1, 3), (5, 6)], 0, 10) == pytest.approx(4.0)  # overlap counted once
    assert covered([(0, 2), (1, 3), (5, 6)], 2.5, 5.5) == pytest.approx(1.0)  # 2.5-3 and 5-5.5
    assert covered([(4, 5), (0, 1)], 0, 10) == pytest.approx(2.0)  # unsorted
    assert covered([(1, 2), (1.2, 1.5)], 0, 3) == pytest.approx(1.0)  # nested
    assert covered([], 0, 1) == 0.0


def test_engine_activity_records_busy_intervals_of_overlapping_requests():
    act = EngineActivity()
    act.begin()
    act.begin()  # a second request while the first runs: still one interval
    act.end()
    assert act.report.intervals == []
    act.end()
    assert len(act.report.intervals) == 1
    act.put(0.5)
    act.begin()  # open at pop time: cut at now, continues from there
    report = act.pop()
    assert len(report.intervals) == 2 and report.put_seconds == 0.5 and report.groups == 1
    assert act.pop().intervals[0][0] == pytest.approx(report.intervals[-1][1])
    act.end()
    assert len(act.pop().intervals) == 1


def test_episode_breakdown_is_the_mean_and_the_rest_is_other():
    row = episode_breakdown([meta(10, 6, 2, 1), meta(4, 2, 1, 0), meta(0, 0, 0, 0)])  # wall 0: not timed, left out
    assert row["anatomy/episode_wall_s"] == 7.0 and row["anatomy/episode_engine_s"] == 4.0
    assert row["anatomy/episode_env_s"] == 1.5 and row["anatomy/episode_score_s"] == 0.5
    assert row["anatomy/episode_other_s"] == 1.0
    assert episode_breakdown([]) == {}


def test_step_figures_give_each_engines_generating_fraction():
    reports = [EngineReport([(0, 5)], put_seconds=0.2, groups=2), EngineReport([(0, 1), (9, 12)])]
    row = step_figures(reports, [meta(2, 1, 0.5, 0.25)], 0.0, 10.0)
    assert row["anatomy/step_s"] == 10.0
    assert row["anatomy/engine_generating_frac"] == pytest.approx(0.35)  # (0.5 + 0.2) / 2
    assert row["anatomy/engine_generating_min"] == pytest.approx(0.2)
    assert row["anatomy/put_s_per_group"] == pytest.approx(0.1)
    assert row["anatomy/episode_other_s"] == 0.25


def test_timeline_writes_spans_and_engine_lanes_and_plots(tmp_path):
    tl = Timeline(tmp_path / "timeline.jsonl")
    now = time.time()
    tl.mark = now - 4  # the step began 4 s ago
    tl.span("wait_rollout", now - 3, now - 2)
    tl.span("train", now - 2, now - 1)
    row = tl.step(1, [EngineReport([(now - 3, now - 1)])], [])
    assert row["anatomy/engine_generating_frac"] > 0
    rows = [json.loads(x) for x in (tmp_path / "timeline.jsonl").read_text().splitlines()]
    assert {(r["lane"], r["name"]) for r in rows} == {("driver", "wait_rollout"), ("learner", "train"), ("engine 0", "generate")}
    assert all(r["step"] == 1 for r in rows) and tl.spans == []
    out = plot_timeline(tmp_path / "timeline.jsonl", tmp_path / "timeline.png")
    assert out is not None and out.stat().st_size > 0
    assert plot_timeline(tmp_path / "missing.jsonl", tmp_path / "x.png") is None


def test_trajectories_dump_to_json_and_back(tmp_path):
    """``run.dump_rollouts`` writes whole trajectories that read back equal (bench/step_cost.py
    replays them)."""
    from forge_ray.types import RewardBreakdown, Trajectory, Turn

    traj = Trajectory("t1", "g1", 3, 2, [1, 2, 3, 4], [0.0, 0.0, -0.5, -0.25], [0, 0, 1, 1], [Turn(2, 4, 7, "stop")],
                      Status.TRUNCATED, [{"role": "user", "content": "hi"}], RewardBreakdown(0.5, {"correct": 1.0}, [1.0], None),
                      env_seconds=0.1, gen_seconds=0.2, wall_seconds=0.4)
    row = json.loads(json.dumps(traj.to_json()))
    assert Trajectory.from_json(row) == traj
    bare = Trajectory("t2", "g2", 0, 1, [5], [0.0], [0], [], Status.OK, [])
    assert Trajectory.from_json(json.loads(json.dumps(bare.to_json()))) == bare
