"""Actor groups shared by the weight-sync tests (a plain module: not collected)."""


def start_groups(model, engines, kv_cache_mb):
    """A rollout group of ``engines`` vLLM engines and a 2-rank learner on ``model``, started;
    yields ``(rollout, learner)`` and shuts both down (module fixtures of the sync tests)."""
    import asyncio

    from envs import factory
    from forge_ray.config import LearnerConfig
    from forge_ray.learner.group import LearnerGroup
    from forge_ray.rollout.agent_loop import EpisodeSpec
    from forge_ray.rollout.group import RolloutGroup

    rollout = RolloutGroup(model, engines, dict(max_model_len=640, kv_cache_mb=kv_cache_mb), factory("calculator"),
                           EpisodeSpec(max_new_tokens=32, max_context=600), {"CPU": 1})
    learner = LearnerGroup(LearnerConfig(num_workers=2, lr=0.05, micro_batch=4), model, "float32", "cpu", {"CPU": 1})

    async def start():
        await asyncio.gather(rollout.start(), learner.setup())

    asyncio.run(start())
    try:
        yield rollout, learner
    finally:
        rollout.shutdown()
        learner.shutdown()
