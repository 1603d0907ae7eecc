"""From buffer groups to learner items: advantages, masking, zero-variance drop."""
import pytest

from forge_ray.buffer import Group
from forge_ray.learner.batching import plan_update
from forge_ray.types import Status, TrajectoryMeta


def group(gid, rewards, statuses=None):
    g = Group(gid, gid)
    for i, r in enumerate(rewards):
        status = (statuses or [Status.OK] * len(rewards))[i]
        g.metas.append(TrajectoryMeta(gid, gid, i, 0, status, r, 10 + i))
        g.refs.append(f"ref-{gid}-{i}")
    return g


def test_advantages_masking_and_drops():
    plan = plan_update([
        group("a", [1.0, 0.0, 0.0, 1.0]),  # mean .5, sample std sqrt(1/3): +-0.866
        group("b", [1.0, 1.0, 1.0, 1.0]),  # no signal: dropped
        group("c", [1.0, 0.0, 0.0, 0.0], [Status.OK, Status.TRUNCATED, Status.OK, Status.ENV_FAILURE]),
    ], drop_zero_variance=True)
    assert plan.groups_used == 2 and plan.groups_zero_variance == 1
    assert plan.env_failures == 1 and plan.masked == 1
    advs = {box[0]: adv.value for box, adv, _ in plan.items}
    assert advs["ref-a-0"] == pytest.approx(0.8660, abs=1e-3) and advs["ref-a-1"] == pytest.approx(-0.8660, abs=1e-3)
    # group c without the env failure: rewards [1, 0, 0] -> mean 1/3, std sqrt(1/3): (1-1/3)/0.577 = 1.1547
    assert advs["ref-c-0"] == pytest.approx(1.1547, abs=1e-3) and advs["ref-c-2"] == pytest.approx(-0.5774, abs=1e-3)
    assert "ref-c-1" not in advs and "ref-c-3" not in advs  # truncated: no loss; env failure: not counted
    assert [n for box, _, n in plan.items if box[0] == "ref-a-3"] == [13]


def test_zero_variance_kept_when_asked():
    plan = plan_update([group("b", [0.0, 0.0])], drop_zero_variance=False)
    assert plan.groups_used == 1 and [adv.value for _, adv, _ in plan.items] == [0.0, 0.0]


def test_turn_credit_from_step_rewards():
    g = group("t", [1.0, 0.0])
    g.metas[0] = TrajectoryMeta("t", "t", 0, 0, Status.OK, 1.0, 10, turn_rewards=(1.0, 1.0))
    g.metas[1] = TrajectoryMeta("t", "t", 1, 0, Status.OK, 0.0, 10, turn_rewards=(1.0, 0.0, 0.0))
    plan = plan_update([g], drop_zero_variance=True, turn_weight=0.5)
    # outcome advantages: rewards [1, 0] -> mean .5, sample std .7071 -> +-0.7071
    # turn means: k0 (1+1)/2 = 1, k1 (1+0)/2 = .5, k2 (0+0)/2 = 0
    (a0, a1) = [adv for _, adv, _ in plan.items]
    assert a0.value == pytest.approx(0.7071, abs=1e-3) and a0.per_turn == pytest.approx([0.0, 0.25])
    assert a1.value == pytest.approx(-0.7071, abs=1e-3) and a1.per_turn == pytest.approx([0.0, -0.25, 0.0])


def test_equal_outcomes_with_different_turns_are_kept():
    g = group("t", [0.0, 0.0])
    g.metas[0] = TrajectoryMeta("t", "t", 0, 0, Status.OK, 0.0, 10, turn_rewards=(1.0, 0.0))
    g.metas[1] = TrajectoryMeta("t", "t", 1, 0, Status.OK, 0.0, 10, turn_rewards=(0.0,))
    assert plan_update([g], drop_zero_variance=True, turn_weight=1.0).groups_used == 1
    assert plan_update([g], drop_zero_variance=True, turn_weight=0.0).groups_used == 0


def _traj(n_turns: int):
    from forge_ray.types import Trajectory, Turn

    turns = [Turn(2 + 3 * k, 4 + 3 * k, 0, "stop") for k in range(n_turns)]
    mask = [0] * (2 + 3 * n_turns)
    for t in turns:
        mask[t.start : t.end] = [1] * (t.end - t.start)
    return Trajectory("t", "t", 0, 2, list(range(len(mask))), [0.0] * len(mask), mask, turns, Status.OK, [])


def test_turn_weight_without_step_rewards_keeps_the_outcome_advantage():
    """An environment that gives no per-turn rewards: every sampled token still carries the
    trajectory's advantage (it used to be silently 0 with ``turn_weight`` > 0)."""
    from forge_ray.learner.worker import pad_batch

    plan = plan_update([group("n", [1.0, 0.0])], drop_zero_variance=True, turn_weight=0.5)
    advs = [adv for _, adv, _ in plan.items]
    data = pad_batch([_traj(2), _traj(2)], advs)
    sampled = data["mask"].bool()
    assert data["advantages"][0][sampled[0]].tolist() == pytest.approx([0.7071] * 4, abs=1e-3)
    assert data["advantages"][1][sampled[1]].tolist() == pytest.approx([-0.7071] * 4, abs=1e-3)


def test_turn_bonus_lands_on_its_turn_and_missing_turns_keep_the_value():
    from forge_ray.learner.worker import pad_batch
    from forge_ray.types import Advantage

    data = pad_batch([_traj(3)], [Advantage(1.0, (0.5,))])
    sampled = data["advantages"][0][data["mask"][0].bool()].tolist()
    assert sampled == pytest.approx([1.5, 1.5, 1.0, 1.0, 1.0, 1.0])
