"""Ray tier: SWE episodes in the env pool. An episode's workspace (a repository copy under the
env actor's work dir, commands in bubblewrap) lives as long as the episode; killing the env
actor in the middle of a command ends the episode ENV_FAILURE, the replacement actor empties
the dead one's work dir (no workspace left on disk), and the same task then plays to reward 1
on the replacement, scored by the reward actor from the episode's snapshot."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from forge_ray.env.sandbox import bwrap_problem
from forge_ray.types import Generation, Status
from swe_fixture import build_tasks_dir  # tests/swe_fixture.py

pytestmark = pytest.mark.skipif(bwrap_problem() is not None, reason=f"bubblewrap unusable: {bwrap_problem()}")


def scripted(tokenizer, turns):
    """A policy that says ``turns`` in order (the engine is not what this test exercises)."""
    stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    it = iter(turns)

    async def generate(prompt_ids, **kw):
        ids = tokenizer.encode(next(it), add_special_tokens=False) + [stop_id]
        return Generation(ids, [0.0] * len(ids), "stop", 0)

    return generate


def workspaces(workdir: str) -> list[Path]:
    return [p for p in Path(workdir).glob("forge-swe/*/ep-*")] if os.path.isdir(workdir) else []


def test_swe_workspace_survives_nothing_of_a_killed_env_actor(ray_cluster, tmp_path, tiny_model):
    from transformers import AutoTokenizer

    from envs import factory
    from envs.swe import SweTasks
    from envs.swe.protocol import format_reply
    from forge_ray.chat import parse_action
    from forge_ray.env.adapters import PooledEnv
    from forge_ray.env.pool import EnvPool, EnvPoolError, EnvPoolSpec
    from forge_ray.reward.actor import RewardClient, spawn_reward_actor
    from forge_ray.rollout.agent_loop import EpisodeSpec, run_episode

    build_tasks_dir(tmp_path)
    source = SweTasks(str(tmp_path), backend="bwrap", step_limit=12, command_timeout_s=30)
    task = source.tasks("train", 1, 0)[0]
    expert = [m["content"] for m in source.expert(task) if m["role"] == "assistant"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    make = factory("swe", {"backend": "bwrap", "step_limit": 12, "command_timeout_s": 30})
    pool = EnvPool.create(EnvPoolSpec("swe", make, pool_size=1, slots=2, step_timeout_s=60.0))
    reward = spawn_reward_actor(make, timeout_s=60, name="forge/reward-swe")
    (workdir,) = ray_cluster.get(pool.manager.workdirs.remote())

    async def scenario():
        env = PooledEnv(pool)
        await env.open(task)
        assert (await env.step(parse_action(format_reply("look", "ls calc")))).messages[0]["content"].startswith("<returncode>0")
        assert len(workspaces(workdir)) == 1  # the episode's repository copy, in the actor's work dir
        stepping = asyncio.ensure_future(env.step(parse_action(format_reply("wait", "sleep 30"))))
        await asyncio.sleep(3)
        ray_cluster.kill(env.lease.actor, no_restart=True)  # in the middle of the command
        with pytest.raises(EnvPoolError):
            await stepping
        await env.close()
        assert (await pool.stats()).restarts == 1
        await pool.manager.ready.remote()  # the replacement is up: it emptied its predecessor's work dir
        assert workspaces(workdir) == []
        # the task again, start to end on the replacement, scored by the reward actor
        traj = await run_episode(scripted(tokenizer, expert), PooledEnv(pool, RewardClient(reward, 60)), task, tokenizer,
                                 EpisodeSpec(max_new_tokens=4096, max_context=100_000), group_id=task.id, sample_index=0)
        assert traj.status == Status.OK and traj.reward.total == 1.0 and traj.reward.parts["resolved"] == 1.0
        assert workspaces(workdir) == [] and (await pool.stats()).leased == 0  # closed: nothing left

    try:
        asyncio.run(scenario())
    finally:
        pool.shutdown()
        ray_cluster.kill(reward, no_restart=True)
    assert not os.path.exists(workdir)  # the pool's shutdown removed the actors' work dirs
