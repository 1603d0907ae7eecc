"""Interruptible rollouts on a real vLLM engine: a weight update aborts the call in flight at
once, which returns what it sampled under the old version; the agent loop continues that turn
under the new one."""
import asyncio
from pathlib import Path

from forge_ray.rollout.agent_loop import EpisodeSpec, _sample_turn
from forge_ray.types import Status, Trajectory, WeightBucket

PROMPT = [1, 88, 140, 301, 77, 9, 42, 500, 13, 2, 1, 600]
LONG = 900  # tokens: more than the engine samples before the update lands


def buckets(model_dir, version, scale):
    """The model's own weights times ``scale``, as the learner would send them (host path)."""
    from safetensors.torch import load_file

    from forge_ray.rollout.weight_sync import pack_tensors

    state = load_file(str(Path(model_dir) / "model.safetensors"))
    payload = pack_tensors(list(state), [t * scale for t in state.values()])
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(WeightBucket(version, 0, 1, payload, len(payload["data"])))
    return [fut]


async def started(task, engine):
    """Wait until the call is generating (the engine's scheduler has it)."""
    for _ in range(200):
        if engine.llm.output_processor.get_num_unfinished_requests() > 0:
            await asyncio.sleep(0.2)  # some tokens in
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the engine never started the call: {task.done() and task.result()}")


def test_update_aborts_the_call_in_flight_and_the_turn_goes_on(tiny_model):
    from forge_ray.rollout.engine import VLLMEngine

    engine = VLLMEngine(tiny_model, max_model_len=1024, kv_cache_mb=64, interruptible=True)

    async def scenario():
        await engine.start()  # in this event loop: the engine's output handler lives in it
        try:
            return await play()
        finally:
            engine.shutdown()

    async def play():
        call = asyncio.create_task(engine.generate(PROMPT, max_tokens=LONG, temperature=1.0, stop_token_ids=[], seed=0))
        await started(call, engine)
        timings = await engine.update_weights(1, buckets(tiny_model, 1, 0.9))
        cut = await call
        after = await engine.generate(PROMPT, max_tokens=4, temperature=1.0, stop_token_ids=[])

        traj = Trajectory("t", "g", 0, len(PROMPT), list(PROMPT), [0.0] * len(PROMPT), [0] * len(PROMPT), [], Status.OK, [])
        # Greedy: the turn samples what this probe did until the update lands, so a stop id the
        # probe never sampled cannot end the turn before it.
        probe = await engine.generate(PROMPT, max_tokens=LONG, temperature=0.0, stop_token_ids=[])
        stop = min(set(range(3, 2000)) - set(probe.token_ids))
        turn = asyncio.create_task(_sample_turn(engine.generate, EpisodeSpec(temperature=0.0), traj, LONG, stop, 1e18, None))
        await started(turn, engine)
        await engine.update_weights(2, buckets(tiny_model, 2, 1.0))
        return timings, cut, after, traj, await turn

    timings, cut, after, traj, gen = asyncio.run(scenario())
    assert cut.finish_reason == "abort" and cut.version == 0 and 0 < len(cut.token_ids) < LONG
    assert len(cut.logprobs) == len(cut.token_ids) and all(lp <= 0 for lp in cut.logprobs)
    assert timings["sync_bytes"] > 0
    assert after.version == 1 and after.finish_reason == "length"

    (t,) = traj.turns
    assert t.version == 1 and len(t.resumed) == 1 and t.start < t.resumed[0][0] < t.end and t.resumed[0][1] == 2
    assert t.end == len(traj.tokens) and gen.finish_reason in ("stop", "length")
    versions = traj.token_versions()
    assert set(versions[t.start:t.resumed[0][0]]) == {1} and set(versions[t.resumed[0][0]:t.end]) == {2}
    assert len(traj.logprobs) == len(traj.tokens) == len(traj.loss_mask) and sum(traj.loss_mask) == t.end - t.start
