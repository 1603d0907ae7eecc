"""Joint multi-task RL's pure parts (forge_ray/mix.py): the schedule, per-domain admission and
prompt queues, the mixed environment and task source on real environments, the per-domain guard."""
from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from forge_ray.config import load_job
from forge_ray.feeder import Feeder, PromptPool
from forge_ray.guard import GuardConfig
from forge_ray.mix import MixedGuard, domain_of, due, mix_job, step_columns, step_domain, tag
from forge_ray.types import Task

MIX = ["a", "a", "a", "b"]


def test_schedule_repeats_and_counts_exactly():
    assert [step_domain(MIX, k) for k in range(1, 10)] == ["a", "a", "a", "b", "a", "a", "a", "b", "a"]
    assert [due(MIX, "b", k) for k in (0, 3, 4, 7, 8, 40)] == [0, 0, 1, 1, 2, 10]
    assert due(MIX, "a", 40) == 30 and due([], "", 5) == 5 and step_domain([], 3) == ""


def test_tags_travel_in_the_id():
    (t,) = tag("calc", [Task("x/1", "calculator", [], [], meta={"k": 1})], {"max_new_tokens": 8})
    assert t.id == "calc::x/1" and domain_of(t.id) == "calc" and domain_of("x/1") == ""
    assert t.meta == {"k": 1, "domain": "calc", "episode": {"max_new_tokens": 8}}


def tasks(domain, n):
    return tag(domain, [Task(f"t{i}", "x", [], []) for i in range(n)])


def test_pool_keeps_a_queue_per_domain_and_its_state_round_trips():
    pool = PromptPool(tasks("a", 3) + tasks("b", 2), mixed=True)
    b0, _ = pool.next("b")
    a0, _ = pool.next("a")
    pool.requeue(b0.id)  # back to the front of b's queue, not a's
    assert pool.next("a")[0].id == "a::t1" and pool.next("b") == (b0, 2)
    fresh = PromptPool(tasks("a", 3) + tasks("b", 2), mixed=True)
    fresh.restore(pool.state())
    assert fresh.next("a")[0].id == "a::t2" and fresh.next("b")[0].id == "b::t1" and not fresh.has_next("b")
    single = PromptPool([Task("x::1", "x", [], [])])  # not a mix: an id with "::" is just an id
    assert single.has_next() and single.next()[0].id == "x::1"


class Rollout:
    def __init__(self):
        self.calls = []

    async def run_group(self, task, group_id, n, buffer, **_):
        self.calls.append(task.id)
        await asyncio.sleep(0.01)
        return [SimpleNamespace(num_tokens=1)] * n


def test_admission_follows_each_domains_own_steps():
    """M = N = 2, max_staleness 1: a domain may issue M prompts per step of its own up to one
    step ahead of the learner's next; b's first step (4) enters that horizon after step 2."""
    async def scenario():
        rollout = Rollout()
        feeder = Feeder(PromptPool(tasks("a", 50) + tasks("b", 50), mixed=True), rollout, None, group_size=2, batch_prompts=2,
                        batch_groups=2, max_staleness=1, schedule=MIX)
        feeder.start()
        counts = []
        for step in range(6):
            await asyncio.sleep(0.05)
            counts.append((feeder.domain(), dict(Counter(domain_of(t) for t in rollout.calls))))
            feeder.step_done()
        await feeder.stop()
        return counts

    counts = asyncio.run(scenario())
    assert [d for d, _ in counts] == ["a", "a", "a", "b", "a", "a"]
    assert [c for _, c in counts] == [{"a": 4}, {"a": 6}, {"a": 6, "b": 2}, {"a": 8, "b": 2}, {"a": 10, "b": 2},
                                      {"a": 12, "b": 2}]


def test_refill_admits_prompts_of_the_steps_domain():
    async def scenario():
        feeder = Feeder(PromptPool(tasks("a", 9) + tasks("b", 9), mixed=True), Rollout(), None, group_size=2, batch_prompts=2,
                        batch_groups=2, max_staleness=0, schedule=["b", "a"])
        feeder.start()
        feeder.admit(3)
        await asyncio.sleep(0.05)
        issued = dict(feeder.issued_by)
        await feeder.stop()
        return issued

    assert asyncio.run(scenario()) == {"b": 5}


def test_mixed_env_plays_and_scores_each_task_in_its_domains_env():
    """Real environments: a calculator episode and a function-calling one through one MixedEnv
    factory; the reward actor's way (a fresh instance, the snapshot) scores the same."""
    import envs
    from forge_ray.chat import parse_action
    from forge_ray.mix import MixedTasks, mixed_factory

    factories = {"calc": envs.factory("calculator"), "fc": envs.factory("function_calling")}
    make = mixed_factory(factories)
    source = MixedTasks({"calc": (envs.make_tasks("calculator"), SimpleNamespace(train_tasks=3, eval_tasks=2, seed=0), {}),
                         "fc": (envs.make_tasks("function_calling"), SimpleNamespace(train_tasks=4, eval_tasks=2, seed=0),
                                {"max_new_tokens": 9})})
    train = source.tasks("train")
    assert Counter(domain_of(t.id) for t in train) == {"calc": 3, "fc": 4}
    assert all(t.meta["episode"] == {"max_new_tokens": 9} for t in train if domain_of(t.id) == "fc")
    fc = next(t for t in train if domain_of(t.id) == "fc" and t.meta["category"] != "irrelevance")
    for task, wrong in ((train[0], "Answer: 123456789"), (fc, "no idea")):  # a wrong number; prose where a call is due
        expert = source.expert(task)  # the domain's own expert, on its own task
        env = make()
        opened = env.open(task)
        assert type(env.env) is type(factories[domain_of(task.id)]())
        for msg in expert:
            if msg["role"] == "assistant":
                env.step(parse_action(msg["content"]))
        snap = env.snapshot()
        messages = opened.messages + expert
        reward = env.score(opened, messages, snap)
        env.close()
        assert reward.total == 1.0, (task.id, reward)
        assert make().score(opened, messages, snap).total == 1.0  # a fresh instance, as the reward actor scores
        assert make().score(opened, messages[:-1] + [{"role": "assistant", "content": wrong}], snap).total == 0.0
    with pytest.raises(ValueError, match="no environment for domain 'other'"):
        make().open(Task("other::1", "x", [], []))


def test_mix_job_sizes_the_engine_for_the_longest_domain(tmp_path):
    job = load_job(write(tmp_path, JOB))
    mixed = mix_job(job)
    assert (mixed.rollout.max_new_tokens, mixed.rollout.max_context) == (128, 640) and mixed.learner == job.learner


def test_step_columns_report_the_domain_and_the_trained_shares():
    groups = [SimpleNamespace(metas=[SimpleNamespace(reward=1.0, num_tokens=10), SimpleNamespace(reward=0.0, num_tokens=20)])]
    cols = step_columns("b", groups, Counter({"a::1": 1, "a::2": 1, "a::3": 1, "b::1": 1}))
    assert cols == {"mix_domain": "b", "by_domain/b/reward_mean": 0.5, "by_domain/b/tokens_mean": 15.0,
                    "by_domain/a/prompt_share": 0.75, "by_domain/b/prompt_share": 0.25}


def test_guard_judges_each_domain_against_itself():
    cfg = GuardConfig(enabled=True, window=2, warmup_steps=0, entropy_floor=0, length_ratio=0, grad_norm_max=0, reward_drop=0.3)
    guard = MixedGuard(cfg, ["a", "b"])
    rewards = {"a": 0.9, "b": 0.1}  # the schedule alternates two domains far apart: no collapse
    verdicts = [guard.observe(s, {"mix_domain": d, "reward_mean": rewards[d]}) for s, d in enumerate("abababab", 1)]
    assert verdicts == [None] * 8
    rewards["a"] = 0.2  # a collapses on its own steps
    late = [guard.observe(s, {"mix_domain": d, "reward_mean": rewards[d]}) for s, d in enumerate("abab", 9)]
    assert late[0].reasons == ["reward=0.55 < best 0.9 - 0.3"] and late[1:] == [None] * 3  # told once, on a's step
    assert guard.last_good_step == 5  # a's window from step 7 on is suspect (b's own last good step is 12)
    restored = MixedGuard(cfg, ["a", "b"])
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == guard.state_dict()


JOB = """
rollout: {max_new_tokens: 48}
env:
  mix: [calculator, calculator, function_calling]
domains:
  - name: calculator
    env: {name: calculator}
  - name: function_calling
    env: {name: function_calling, max_turns: 1}
    rollout: {max_new_tokens: 128}
    rl: false
"""


def write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_mix_job_parses(tmp_path):
    job = load_job(write(tmp_path, JOB))
    assert job.env.mix == ["calculator", "calculator", "function_calling"] and not job.domains[1].rl
    assert Path(job.run.root).name == "runs"
