"""The trajectory buffer's staleness rule, on the plain class (no Ray)."""
import asyncio

from forge_ray.buffer import Group, TrajectoryBuffer
from forge_ray.types import Status, TrajectoryMeta


def meta(gid: str, i: int, version: int) -> TrajectoryMeta:
    return TrajectoryMeta(gid, gid, i, version, Status.OK, 0.0, 0)


def test_a_group_without_sampled_tokens_is_never_stale():
    """A trajectory without turns has min_version -1: its group used to lag every learner
    version by version + 1, so it was handed back as stale and its prompt replayed forever."""
    empty = Group("e", "e", [meta("e", 0, -1), meta("e", 1, -1)])
    mixed = Group("m", "m", [meta("m", 0, -1), meta("m", 1, 3)])
    assert empty.min_version is None and empty.lag(7) == 0
    assert mixed.min_version == 3 and mixed.lag(5) == 2

    async def scenario():
        buf = TrajectoryBuffer(group_size=2, max_staleness=1, capacity=10)
        for gid, versions in (("e", (-1, -1)), ("old", (0, 4)), ("new", (4, 5))):
            for i, v in enumerate(versions):
                await buf.put(meta(gid, i, v), [f"ref-{gid}-{i}"])
        return await buf.take(2, version=5, timeout_s=1)

    taken = asyncio.run(scenario())
    assert [g.group_id for g in taken.groups] == ["e", "new"] and [g.group_id for g in taken.stale] == ["old"]


def test_groups_are_taken_in_issue_order_not_completion_order():
    def group_meta(gid: str, i: int, issue: int) -> TrajectoryMeta:
        return TrajectoryMeta(gid, gid, i, 0, Status.OK, 0.0, 0, issue=issue)

    async def scenario():
        buf = TrajectoryBuffer(group_size=1, max_staleness=1, capacity=10)
        for gid, issue in (("short-5", 5), ("short-4", 4), ("long-1", 1), ("short-3", 3)):  # completion order
            await buf.put(group_meta(gid, 0, issue), [gid])
        first = await buf.take(2, version=0, timeout_s=1)
        second = await buf.take(2, version=0, timeout_s=1)
        return [g.group_id for g in first.groups], [g.group_id for g in second.groups]

    assert asyncio.run(scenario()) == (["long-1", "short-3"], ["short-4", "short-5"])


def test_take_hands_stale_groups_back_at_once():
    """A learner waiting for n fresh groups while only stale ones are ready would wait forever
    (their prompts are re-queued only once take returns): take returns with what is fresh."""
    async def scenario():
        buf = TrajectoryBuffer(group_size=1, max_staleness=0, capacity=10)
        await buf.put(meta("old", 0, 0), ["ref-old"])
        await buf.put(meta("new", 0, 1), ["ref-new"])
        return await asyncio.wait_for(buf.take(3, version=1), 5)

    taken = asyncio.run(scenario())
    assert [g.group_id for g in taken.groups] == ["new"] and [g.group_id for g in taken.stale] == ["old"]
