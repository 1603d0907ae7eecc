"""The driver's take with refill (DAPO dynamic sampling), on the real buffer class, no Ray."""
import asyncio
from types import SimpleNamespace

from forge_ray.buffer import TrajectoryBuffer
from forge_ray.config import load_job
from forge_ray.feeder import collect as _collect
from forge_ray.metrics import Run
from forge_ray.types import Status, TrajectoryMeta


class Handle:
    """``actor.method.remote(...)`` over a plain object, for the driver's calls."""

    def __init__(self, obj):
        self._obj = obj

    def __getattr__(self, name):
        return SimpleNamespace(remote=getattr(self._obj, name))


class Feeder:
    """Issues one fresh group with signal per admitted prompt."""

    def __init__(self, buffer, domain=""):
        self.buffer, self.admitted, self.requeued, self.next, self.step_domain = buffer, 0, [], 100, domain

    def domain(self):
        return self.step_domain

    async def guard(self, awaitable):
        return await awaitable

    def requeue(self, task_id):
        self.requeued.append(task_id)

    def admit(self, k):
        self.admitted += k
        for _ in range(k):
            self.next += 1
            gid = f"{self.step_domain}::new{self.next}" if self.step_domain else f"new{self.next}"
            asyncio.get_running_loop().create_task(put(self.buffer, gid, (1.0, 0.0), self.next))


async def put(buf, gid, rewards, issue, version=0):
    for i, r in enumerate(rewards):
        await buf.put(TrajectoryMeta(gid, gid, i, version, Status.OK, r, 5, issue=issue), [f"{gid}-{i}"])


def collect(tmp_path, refill_rounds, groups, domain=""):
    job = load_job(None, ["learner.batch_groups=3", f"learner.refill_rounds={refill_rounds}", "reward.turn_weight=0.0"])
    run = Run(job, tmp_path)

    async def scenario():
        buf = TrajectoryBuffer(group_size=2, max_staleness=1, capacity=100)
        for issue, (gid, rewards) in enumerate(groups):
            await put(buf, gid, rewards, issue)
        feeder = Feeder(buf, domain)
        actors = SimpleNamespace(buffer=Handle(buf))
        taken = await asyncio.wait_for(_collect(job, run, SimpleNamespace(version=0), actors, feeder), 10)
        return [g.group_id for g in taken.groups], feeder.admitted

    return asyncio.run(scenario())


def test_zero_variance_groups_are_replaced_not_shrunk(tmp_path):
    groups = [("flat0", (1.0, 1.0)), ("good1", (1.0, 0.0)), ("flat2", (0.0, 0.0)), ("good3", (0.0, 1.0))]
    ids, admitted = collect(tmp_path, 2, groups)
    # first take: flat0 good1 flat2 (issue order); two dropped -> two more prompts; second take: good3 + one new
    assert admitted == 2
    assert sum(i.startswith("good") or i.startswith("new") for i in ids) == 3  # M groups with signal
    assert ids[:3] == ["good1", "good3", ids[2]] and ids[2].startswith("new") and set(ids[3:]) == {"flat0", "flat2"}


def test_without_refill_the_batch_shrinks(tmp_path):
    groups = [("flat0", (1.0, 1.0)), ("good1", (1.0, 0.0)), ("flat2", (0.0, 0.0)), ("good3", (0.0, 1.0))]
    ids, admitted = collect(tmp_path, 0, groups)
    assert admitted == 0 and ids == ["good1", "flat0", "flat2"]


def test_a_mixed_step_takes_its_own_domain_only(tmp_path):
    """env.mix: the step's domain is "b"; the earlier-issued groups of "a" stay buffered, and the
    refill for b's flat group is a prompt of b."""
    groups = [("a::g0", (1.0, 0.0)), ("b::g1", (1.0, 0.0)), ("a::g2", (0.0, 1.0)), ("b::flat3", (0.0, 0.0)),
              ("b::g4", (0.0, 1.0)), ("a::g5", (1.0, 0.0))]
    ids, admitted = collect(tmp_path, 2, groups, domain="b")
    assert admitted == 1 and ids[:2] == ["b::g1", "b::g4"] and ids[2].startswith("b::new") and ids[3:] == ["b::flat3"]
