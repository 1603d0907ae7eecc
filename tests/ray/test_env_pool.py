"""EnvPool and RewardActor on a real local Ray cluster: leases under a cap, pooled episodes equal
to in-process ones, timeouts and dead env actors ending episodes as ENV_FAILURE, the reward
actor's scores and errors, and an RL run during which an env actor is killed."""
import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from forge_ray.config import load_job
from forge_ray.types import Generation, Status

ROOT = Path(__file__).resolve().parents[2]


def expert_policy(tokenizer, source, task):
    """A scripted policy replaying ``task``'s expert conversation, turn by turn (the engine is
    not what these tests exercise)."""
    stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    turns = iter([m["content"] for m in source.expert(task) if m["role"] == "assistant"])

    async def generate(prompt_ids, **kw):
        ids = tokenizer.encode(next(turns), add_special_tokens=False) + [stop_id]
        return Generation(ids, [0.0] * len(ids), "stop", 0)

    return generate


@pytest.fixture(scope="module")
def calc(tiny_model):
    from transformers import AutoTokenizer

    from envs.calculator import CalculatorTasks

    source = CalculatorTasks(max_operand=20, ops_weights=(1, 1, 0))
    return AutoTokenizer.from_pretrained(tiny_model), source, source.tasks("train", 6, 0)


async def until_dead(actor, timeout_s: float = 30.0) -> None:
    """Wait until a killed actor stops answering (its calls raise)."""
    for _ in range(int(timeout_s / 0.1)):
        try:
            await actor.ping.remote()
        except Exception:  # noqa: BLE001 - any actor error means it is gone
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the killed actor still answers after {timeout_s} s")


def test_pool_leases_episodes_and_failures(ray_cluster, calc):
    from envs import factory, make_env
    from forge_ray.env.adapters import LocalEnv, PooledEnv
    from forge_ray.env.pool import EnvPool, EnvPoolError, EnvPoolSpec
    from forge_ray.rollout.agent_loop import EpisodeSpec, run_episode

    tokenizer, source, tasks = calc
    pool = EnvPool.create(EnvPoolSpec("calculator", factory("calculator", {"max_tool_turns": 6}), pool_size=2, slots=2, step_timeout_s=10.0))

    async def play(env, task):
        return await run_episode(expert_policy(tokenizer, source, task), env, task, tokenizer, EpisodeSpec(), group_id=task.id, sample_index=0)

    async def scenario():
        # the cap: 4 slots; a 5th lease waits (and shows as waiting) until one is released
        leases = [await pool.lease() for _ in range(4)]
        assert sorted((x.actor_index, x.slot) for x in leases) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        fifth = asyncio.ensure_future(pool.lease())
        await asyncio.sleep(0.5)
        stats = await pool.stats()
        assert not fifth.done() and stats.leased == 4 and stats.waiting == 1
        await pool.release(leases.pop())
        leases.append(await asyncio.wait_for(fifth, 10))
        for x in leases:
            await pool.release(x)
        assert (await pool.stats()).leased == 0

        # pooled episodes are the in-process ones, token for token and reward for reward
        pooled = await asyncio.gather(*(play(PooledEnv(pool), t) for t in tasks))
        local = [await play(LocalEnv(make_env("calculator", max_tool_turns=6)), t) for t in tasks]
        for p, q in zip(pooled, local):
            assert p.status == q.status == Status.OK and p.tokens == q.tokens and p.loss_mask == q.loss_mask
            assert p.reward == q.reward and p.reward.total == 1.0 and p.reward.per_turn

        # a call that gets no answer in time: ENV_FAILURE (not TIMED_OUT), and the actor is replaced
        impatient = EnvPool(pool.manager, step_timeout_s=1e-6)
        env = PooledEnv(impatient)
        traj = await play(env, tasks[0])
        assert traj.status == Status.ENV_FAILURE and "timed out" in traj.reward.error and "timed out" in env.failed
        stats = await pool.stats()
        assert stats.restarts == 1 and stats.failures == 1 and sorted(stats.generations) == [0, 1] and stats.leased == 0

        # a dead actor: every lease on it fails, it is replaced once, new leases work
        envs = [PooledEnv(pool) for _ in range(3)]  # leased least-loaded first: actors 0, 1, 0
        for e, t in zip(envs, tasks):
            await e.open(t)
        victims = [e for e in envs if e.lease.actor_index == envs[0].lease.actor_index]
        assert len(victims) == 2
        ray_cluster.kill(envs[0].lease.actor, no_restart=True)
        await until_dead(envs[0].lease.actor)  # ray.kill returns before the actor is gone
        for e in victims:
            with pytest.raises(EnvPoolError, match="RayActorError|ActorDied|ActorUnavailable"):
                await e.step(source_action(source, tasks[0]))
        stats = await pool.stats()
        assert stats.restarts == 2 and stats.failures == 3  # replaced once, though both leases reported
        await envs[2 if envs[1] in victims else 1].step(source_action(source, tasks[1]))  # the other actor is unaffected
        for e in envs:
            await e.close()
        again = await asyncio.gather(*(play(PooledEnv(pool), t) for t in tasks[:4]))
        assert all(t.status == Status.OK and t.reward.total == 1.0 for t in again)
        assert (await pool.stats()).leased == 0

    try:
        asyncio.run(scenario())
    finally:
        pool.shutdown()


def source_action(source, task):
    from forge_ray.chat import parse_action

    return parse_action(next(m["content"] for m in source.expert(task) if m["role"] == "assistant"))


def test_reward_actor_scores_and_records_errors(ray_cluster, calc):
    from envs import factory, make_env
    from forge_ray.reward.actor import RewardClient, spawn_reward_actor

    tokenizer, source, tasks = calc
    env = make_env("calculator")

    def boom(task, messages, snapshot):
        raise RuntimeError("scorer exploded")

    def stuck(task, messages, snapshot):
        time.sleep(30)

    actors = [spawn_reward_actor(factory("calculator"), timeout_s=10, name="forge/reward-test"),
              spawn_reward_actor(None, scorer=boom, timeout_s=10, name="forge/reward-boom"),
              spawn_reward_actor(None, scorer=stuck, timeout_s=0.5, workers=1, name="forge/reward-stuck")]
    good, bad, slow = (RewardClient(a, 10) for a in actors)
    convs = [(t, t.messages + source.expert(t)) for t in tasks] + [(tasks[0], tasks[0].messages + [{"role": "assistant", "content": "Answer: -1"}])]

    async def scenario():
        scored = await asyncio.gather(*(good.score(t, m) for t, m in convs))
        assert scored == [env.score(t, m) for t, m in convs]
        assert [r.total for r in scored] == [1.0] * len(tasks) + [0.0] and all(r.error is None for r in scored)
        failed = await bad.score(*convs[0])
        assert failed.total == 0.0 and failed.error == "score failed: RuntimeError: scorer exploded"
        t0 = time.monotonic()
        late = await asyncio.gather(slow.score(*convs[0]), slow.score(*convs[1]))  # one worker: the 2nd waits for the 1st's timeout
        assert all(r.error == "score timed out after 0.5 s" for r in late) and time.monotonic() - t0 < 5

    try:
        asyncio.run(scenario())
        assert ray_cluster.get(actors[2].stats.remote()).timeouts == 2
    finally:
        for a in actors:
            ray_cluster.kill(a, no_restart=True)


STEPS, GROUPS = 4, 4
RUN = ["env.train_tasks=200", "env.eval_tasks=4", "env.kwargs={max_operand: 20, ops_weights: [1, 1, 0]}",
       "rollout.group_size=4", "rollout.batch_prompts=6", "rollout.max_new_tokens=24", "rollout.max_context=400",
       "rollout.kv_cache_mb=256", f"learner.batch_groups={GROUPS}", "learner.micro_batch=8", "learner.drop_zero_variance=false",
       "sft.examples=64", "sft.epochs=1", "sft.batch_size=16", f"run.steps={STEPS}", "run.wandb_mode=disabled",
       "env.pool_size=2", "env.pool_slots=16", "reward.actor=true"]


class KillAfterFirstStep(threading.Thread):
    """Kills ``name`` once the run under ``runs`` has logged its first RL step."""

    def __init__(self, runs: Path, name: str):
        super().__init__(daemon=True)
        self.runs, self.name, self.killed_at, self.stop = runs, name, None, threading.Event()

    def run(self) -> None:
        import ray

        while self.killed_at is None and not self.stop.wait(0.25):
            if any('"stage": "rl"' in line for p in self.runs.glob("*/metrics.jsonl") for line in p.read_text().splitlines()):
                ray.kill(ray.get_actor(self.name), no_restart=True)
                self.killed_at = time.time()


def test_env_actor_killed_mid_run(ray_cluster, tmp_path, tiny_model, monkeypatch):
    from forge_ray.feeder import PromptPool
    from forge_ray.pipeline import run_job

    ledgers = []
    check = PromptPool.check

    def spy(self, outstanding):  # keep the final ledger for the assertions below
        ledgers.append((dict(self.issued), dict(self.consumed), dict(self.requeued), dict(outstanding)))
        return check(self, outstanding)

    monkeypatch.setattr(PromptPool, "check", spy)
    killer = KillAfterFirstStep(tmp_path / "runs", "forge/env-0")
    killer.start()
    try:
        summary = run_job(load_job(ROOT / "jobs" / "quickstart.yaml", RUN + [f"model.path={tiny_model}", f"run.root={tmp_path / 'runs'}"]))
    finally:
        killer.stop.set()
    assert killer.killed_at is not None
    assert summary["prompts_consumed"] == STEPS * GROUPS
    assert summary["prompts_issued"] == summary["prompts_consumed"] + summary["prompts_requeued"] + summary["prompts_abandoned"] + summary["prompts_outstanding"]
    assert summary["prompts_lost"] == 0
    assert summary["prompts_requeued"] >= 1
    log = (Path(summary["run_dir"]) / "log.txt").read_text()
    lost = {line.split("group ")[1].split("#")[0] for line in log.splitlines() if "EnvPoolError" in line and "re-queued" in line}
    assert lost, "no group was re-queued for an env-pool failure"
    issued, consumed, requeued, outstanding = ledgers[-1]
    for task_id in lost:
        assert requeued[task_id] >= 1 and consumed.get(task_id, 0) <= 1
        assert issued[task_id] == consumed.get(task_id, 0) + requeued[task_id] + outstanding.get(task_id, 0)
    assert any(consumed.get(t) == 1 for t in lost), "no re-queued prompt was consumed"
    rows = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["stage"] == "rl"] == list(range(1, STEPS + 1))
    assert all(r["env_failures"] == 0 and r["score_errors"] == 0 for r in rows if r["stage"] == "rl")  # lost groups never reach the learner
