"""Interruptible rollouts in the agent loop: an engine call aborted by a weight update keeps its
tokens and their version, and the turn goes on under the new weights (``_sample_turn``)."""
import asyncio

from forge_ray.rollout.agent_loop import EpisodeSpec, _sample_turn
from forge_ray.types import Generation, Status, Trajectory, Turn

STOP = 2
PROMPT = [11, 12, 13]


class Engine:
    """Replies in turn with scripted generations; records what each call was asked."""

    def __init__(self, *replies):
        self.replies, self.calls = list(replies), []

    async def generate(self, tokens, *, max_tokens, **_):
        self.calls.append((list(tokens), max_tokens))
        return self.replies.pop(0)


def play(engine, budget=10):
    traj = Trajectory("t", "g", 0, len(PROMPT), list(PROMPT), [0.0] * 3, [0] * 3, [], Status.OK, [])
    gen = asyncio.run(_sample_turn(engine.generate, EpisodeSpec(), traj, budget, STOP, 1e18, None))
    return traj, gen


def test_an_interrupted_turn_goes_on_under_the_new_weights():
    engine = Engine(Generation([5, 6, 7], [-0.1, -0.2, -0.3], "abort", 3), Generation([8, STOP], [-0.4, -0.5], "stop", 4))
    traj, gen = play(engine)
    assert engine.calls == [(PROMPT, 10), (PROMPT + [5, 6, 7], 7)]  # the rest of the turn's budget, from where it stopped
    assert traj.tokens == PROMPT + [5, 6, 7, 8, STOP] and traj.logprobs[3:] == [-0.1, -0.2, -0.3, -0.4, -0.5]
    assert traj.loss_mask == [0, 0, 0, 1, 1, 1, 1, 1]
    assert traj.turns == [Turn(3, 8, 3, "stop", ((6, 4),))] and gen.finish_reason == "stop"
    assert traj.token_versions() == [-1, -1, -1, 3, 3, 3, 4, 4] and traj.min_version == 3


def test_an_abort_before_any_token_or_at_the_budget():
    engine = Engine(Generation([], [], "abort", 3), Generation([9, STOP], [-0.1, -0.2], "stop", 4))
    traj, _ = play(engine)
    assert traj.turns == [Turn(3, 5, 4, "stop", ())]  # no token of version 3: the turn is version 4's
    engine = Engine(Generation([5, 6], [-0.1, -0.2], "abort", 3))
    traj, gen = play(engine, budget=2)
    assert traj.turns == [Turn(3, 5, 3, "length", ())] and gen.finish_reason == "length" and len(engine.calls) == 1


def test_turns_round_trip_through_json():
    traj, _ = play(Engine(Generation([5], [-0.1], "abort", 1), Generation([STOP], [-0.2], "stop", 2)))
    again = Trajectory.from_json(traj.to_json())
    assert again.turns == traj.turns and again.token_versions() == traj.token_versions()
