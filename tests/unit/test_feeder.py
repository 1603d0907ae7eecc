"""Prompt accounting and the feeder's admission rule, with a scripted rollout at the edge."""
import asyncio
from collections import Counter
from types import SimpleNamespace

import pytest

from forge_ray.checkpoint import inflight
from forge_ray.feeder import AccountingError, Feeder, PromptPool
from forge_ray.types import Task


def tasks(n):
    return [Task(f"t{i}", "x", [], []) for i in range(n)]


def test_pool_ledger_and_requeue_order():
    pool = PromptPool(tasks(3))
    a, _ = pool.next()
    b, _ = pool.next()
    pool.requeue(a.id)
    again, attempt = pool.next()
    assert again.id == a.id and attempt == 2  # re-queued prompts go first, with a new attempt number
    pool.consume(b.id)
    pool.consume(a.id)
    assert pool.check(Counter()) == {"prompts_issued": 3, "prompts_consumed": 2, "prompts_requeued": 1, "prompts_abandoned": 0,
                                     "prompts_outstanding": 0, "prompts_lost": 0}
    with pytest.raises(AccountingError, match="none of its issues is outstanding"):
        pool.consume(a.id)


def test_pool_tells_a_lost_prompt_from_an_outstanding_one():
    pool = PromptPool(tasks(3))
    a, _ = pool.next()
    b, _ = pool.next()
    c, _ = pool.next()
    pool.abandon(c.id)  # still generating when the run stopped
    assert pool.check(Counter({a.id: 1, b.id: 1}))["prompts_outstanding"] == 2  # both buffered: outstanding, not lost
    assert pool.lost(Counter({a.id: 1})) == Counter({b.id: 1})
    with pytest.raises(AccountingError, match=f"1 prompts lost: e.g. {b.id}"):
        pool.check(Counter({a.id: 1}))  # b is neither generating nor buffered
    assert pool.check(Counter({a.id: 1, b.id: 1}))["prompts_abandoned"] == 1


def test_pool_refuses_to_settle_an_issue_twice():
    pool = PromptPool(tasks(1))
    t, _ = pool.next()
    pool.requeue(t.id)
    with pytest.raises(AccountingError, match="re-queued but none"):
        pool.requeue(t.id)


class ScriptedRollout:
    """Stands in for the engines: each group takes a fixed time; one prompt fails once."""

    def __init__(self, fail_once: str):
        self.calls = []
        self.fail_once = fail_once

    async def run_group(self, task, group_id, n, buffer, **_):
        self.calls.append(group_id)
        await asyncio.sleep(0.01)
        if task.id == self.fail_once and group_id.endswith("#1"):
            raise RuntimeError("engine died")
        return [SimpleNamespace(num_tokens=3)] * n


def test_feeder_admission_follows_steps_and_staleness():
    async def scenario():
        pool = PromptPool(tasks(100))
        rollout = ScriptedRollout(fail_once="t1")
        feeder = Feeder(pool, rollout, None, group_size=4, batch_prompts=6, batch_groups=4, max_staleness=1)
        feeder.start()
        await asyncio.sleep(0.1)
        first = feeder.issued  # N + (0 + 1) * M = 10, plus one re-queue after t1's failure
        feeder.step_done()
        await asyncio.sleep(0.1)
        second = feeder.issued
        await feeder.stop()
        return first, second, rollout.calls, feeder

    first, second, calls, feeder = asyncio.run(scenario())
    assert first == 11 and second == 15
    assert "t1#1" in calls and "t1#2" in calls  # the failed group was retried under a new attempt
    assert feeder.trajectories == 4 * (len(calls) - 1)
    assert feeder.busy() > 0 and feeder.inflight == 0


def test_sync_mode_admits_one_batch_per_step():
    async def scenario():
        feeder = Feeder(PromptPool(tasks(50)), ScriptedRollout(fail_once=""), None, group_size=2, batch_prompts=4, batch_groups=4, max_staleness=0)
        feeder.start()
        await asyncio.sleep(0.1)
        counts = [feeder.issued]
        for _ in range(2):
            feeder.step_done()
            await asyncio.sleep(0.1)
            counts.append(feeder.issued)
        await feeder.stop()
        return counts

    assert asyncio.run(scenario()) == [4, 8, 12]


def test_resume_requeues_what_was_generating_and_keeps_the_ledger_exact():
    """Part 1 issues 5 prompts, consumes 2, has 1 complete group buffered and 2 generating when
    the checkpoint is taken; part 2 restores and runs to the end: each prompt consumed once."""
    pool = PromptPool(tasks(8))
    for _ in range(5):
        pool.next()
    pool.consume("t0")
    pool.consume("t1")
    saved = pool.state()  # t2 buffered, t3 and t4 generating: all three outstanding

    async def part2():
        fresh = PromptPool(tasks(8))
        fresh.restore(saved)
        feeder = Feeder(fresh, None, None, group_size=2, batch_prompts=2, batch_groups=2, max_staleness=1)
        buffered = Counter({"t2": 1})
        requeue = inflight(fresh.outstanding, buffered)
        feeder.restore(steps=1, trajectories=10, busy_seconds=1.0, requeue=requeue)
        return fresh, feeder, requeue

    fresh, feeder, requeue = asyncio.run(part2())
    assert sorted(requeue) == ["t3", "t4"]
    assert feeder.issued == 5 and feeder.extra == 2 and feeder.steps == 1
    assert fresh.check(Counter({"t2": 1}))["prompts_outstanding"] == 1  # t2; t3 and t4 are re-queued
    order = [fresh.next()[0].id for _ in range(5)]
    assert order[:2] == ["t3", "t4"] or order[:2] == ["t4", "t3"]  # re-queued prompts first
    assert set(order[2:]) == {"t5", "t6", "t7"}
    for t in ["t2", *order]:
        fresh.consume(t)
    assert fresh.check(Counter()) == {"prompts_issued": 10, "prompts_consumed": 8, "prompts_requeued": 2, "prompts_abandoned": 0,
                                      "prompts_outstanding": 0, "prompts_lost": 0}


def test_restore_rejects_a_ledger_of_other_prompts():
    pool = PromptPool(tasks(2))
    state = PromptPool(tasks(4)).state()
    with pytest.raises(AccountingError, match="was env changed"):
        pool.restore(state)


class BrokenRollout:
    """Every group fails the same way, as a broken environment would make it."""

    def __init__(self):
        self.calls = Counter()

    async def run_group(self, task, group_id, n, buffer, **_):
        self.calls[task.id] += 1
        await asyncio.sleep(0.001)
        raise ValueError("env exploded")


def test_feeder_gives_up_on_a_prompt_that_always_fails():
    from forge_ray.feeder import FeederGaveUp

    async def scenario():
        pool = PromptPool(tasks(20))
        rollout = BrokenRollout()
        feeder = Feeder(pool, rollout, None, group_size=2, batch_prompts=2, batch_groups=2, max_staleness=0, max_failures=3)
        feeder.start()
        never = asyncio.get_running_loop().create_future()  # the buffer's take, which never fills
        with pytest.raises(FeederGaveUp, match=r"failed 3 times in a row; last: ValueError: env exploded"):
            await asyncio.wait_for(feeder.guard(never), 10)
        assert never.cancelled()
        await feeder.stop()
        assert max(rollout.calls.values()) >= 3
        assert pool.check(Counter())["prompts_consumed"] == 0  # the ledger still balances: every issue re-queued or abandoned

    asyncio.run(scenario())


def test_feeder_guard_passes_results_through():
    async def scenario():
        feeder = Feeder(PromptPool(tasks(1)), BrokenRollout(), None, group_size=1, batch_prompts=0, batch_groups=1, max_staleness=0)
        feeder.start()
        assert await feeder.guard(asyncio.sleep(0.01, result="taken")) == "taken"
        await feeder.stop()

    asyncio.run(scenario())


class SlowRollout:
    """Groups that never finish on their own: only stopping the feeder ends them."""

    async def run_group(self, task, group_id, n, buffer, **_):
        await asyncio.sleep(3600)


def test_stopping_marks_groups_still_playing_abandoned_not_lost():
    async def scenario():
        pool = PromptPool(tasks(10))
        feeder = Feeder(pool, SlowRollout(), None, group_size=2, batch_prompts=3, batch_groups=2, max_staleness=0)
        feeder.start()
        await asyncio.sleep(0.05)
        assert feeder.generating == Counter({"t0": 1, "t1": 1, "t2": 1})
        with pytest.raises(AccountingError, match="3 prompts lost"):
            pool.check(Counter())  # before the stop they are outstanding, and the buffer holds none of them
        await feeder.stop()
        return pool.check(Counter())

    assert asyncio.run(scenario()) == {"prompts_issued": 3, "prompts_consumed": 0, "prompts_requeued": 0, "prompts_abandoned": 3,
                                       "prompts_outstanding": 0, "prompts_lost": 0}
