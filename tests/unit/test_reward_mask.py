"""A trajectory whose reward could not be computed is masked, never trained on as a zero."""
import pytest

from forge_ray.buffer import Group
from forge_ray.learner.batching import plan_update
from forge_ray.rollout.group import trajectory_meta
from forge_ray.types import RewardBreakdown, Status, Trajectory, TrajectoryMeta


def test_score_errors_leave_loss_and_statistics():
    g = Group("s", "s")
    rewards = [1.0, 0.0, 0.0, 0.0]
    errors = [None, None, "score failed: TimeoutError", None]
    for i, (r, e) in enumerate(zip(rewards, errors)):
        g.metas.append(TrajectoryMeta("s", "s", i, 0, Status.OK, r, 10, reward_error=e))
        g.refs.append(f"ref-{i}")
    plan = plan_update([g], drop_zero_variance=True)
    assert plan.score_errors == 1 and plan.env_failures == 0 and plan.masked == 0
    advs = {box[0]: adv.value for box, adv, _ in plan.items}
    assert "ref-2" not in advs
    # statistics over [1, 0, 0]: mean 1/3, sample std sqrt(1/3) -> (1 - 1/3) / 0.5774 = 1.1547
    assert advs["ref-0"] == pytest.approx(1.1547, abs=1e-3) and advs["ref-1"] == pytest.approx(-0.5774, abs=1e-3)
    assert plan.rewards == [1.0, 0.0, 0.0]


def test_meta_carries_the_reward_error():
    def traj(status, reward):
        return Trajectory("t", "t#1", 0, 1, [1], [0.0], [0], [], status, [], reward)

    assert trajectory_meta(traj(Status.OK, RewardBreakdown(0.0, error="boom"))).reward_error == "boom"
    assert trajectory_meta(traj(Status.OK, RewardBreakdown(1.0))).reward_error is None
    assert trajectory_meta(traj(Status.OK, None)).reward_error == "not scored"
    # an env failure is counted as such, not as a score error
    meta = trajectory_meta(traj(Status.ENV_FAILURE, RewardBreakdown(0.0, error="RayActorError")))
    assert meta.reward_error is None
    assert plan_update([Group("t", "t#1", [meta], ["r"])], False).env_failures == 1
