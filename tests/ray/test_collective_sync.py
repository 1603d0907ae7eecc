"""The collective weight sync on real actors: learner rank 0 broadcasts over gloo into two vLLM
CPU engines, refusals leave the engines serving what they served, a replaced engine loads the
staged version over the host path and joins the next group."""
import asyncio

import pytest
from actor_groups import start_groups
from test_engine_and_sync import PROMPT, hf_greedy

from forge_ray.rollout.weight_sync import WeightSyncError, compare_fingerprints, learner_fingerprint


@pytest.fixture(scope="module")
def groups(ray_cluster, tiny_model):
    yield from start_groups(tiny_model, 2, 128)


def run(coro_or_ref):
    async def wait():
        return await coro_or_ref

    return asyncio.run(wait())


def train_once(rollout, learner, seed):
    """One real update: the engines' trajectories with arbitrary advantages."""
    import ray

    from envs import make_tasks

    trajs = run(rollout.evaluate(make_tasks("calculator").tasks("train", 4, seed), greedy=False))
    items = [([ray.put(t)], 1.0 if i % 2 else -1.0, t.num_sampled) for i, t in enumerate(trajs)]
    assert run(learner.train_step(items))["grad_norm"] > 0


def served(rollout):
    return [run(w.fingerprint.remote()) for w in rollout.workers]


def assert_serving(rollout, state, version):
    """Every engine serves ``state`` (per tensor) under ``version``."""
    want = learner_fingerprint(state)
    for fp in served(rollout):
        assert compare_fingerprints(fp, want) == []
    assert [run(w.ping.remote()) for w in rollout.workers] == [version] * len(rollout.workers)


def test_broadcast_round_trip(groups, tiny_model):
    rollout, learner = groups
    old_state = run(learner.state_for_check())
    train_once(rollout, learner, 2)
    manifest = run(learner.stage_weights(1, bucket_mb=1))
    assert len(manifest) > 1 and [(b.version, b.index, b.count) for b in manifest] == [(1, i, len(manifest)) for i in range(len(manifest))]
    syncs = run(rollout.broadcast_weights(1, manifest, learner))
    assert rollout.epochs == 1 and len(syncs) == 2
    assert all(s["sync_bytes"] == sum(b.nbytes for b in manifest) and s["sync_seconds"] > 0 and s["send_seconds"] > 0 for s in syncs)

    new_state = run(learner.state_for_check())
    assert_serving(rollout, new_state, 1)  # both engines == learner, per tensor
    assert all(compare_fingerprints(fp, learner_fingerprint(old_state)) for fp in served(rollout))  # and it did change
    gen = run(rollout.workers[1].generate.remote(PROMPT, max_tokens=12, temperature=0.0, stop_token_ids=[2]))
    ids, logprobs = hf_greedy(new_state, tiny_model, PROMPT, len(gen.token_ids))
    assert gen.version == 1 and gen.token_ids == ids[: len(gen.token_ids)]  # greedy output follows the new weights
    assert gen.logprobs == pytest.approx(logprobs[: len(gen.logprobs)], abs=1e-3)

    train_once(rollout, learner, 3)  # the next version goes over the same group
    run(rollout.broadcast_weights(2, run(learner.stage_weights(2, bucket_mb=1)), learner))
    assert rollout.epochs == 1
    assert_serving(rollout, run(learner.state_for_check()), 2)


def test_mismatches_are_refused(groups):
    rollout, learner = groups
    state = run(learner.state_for_check())
    manifest = run(learner.stage_weights(2, bucket_mb=1))  # v2 staged again (same weights)

    # Told v3 while the learner has v2 staged: every rank refuses before a byte moves.
    async def sync_as_v3():
        calls = [learner.send_weights(3)] + [w.receive_weights.remote(3, manifest) for w in rollout.workers]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(sync_as_v3())
    assert all(isinstance(r, WeightSyncError) for r in results), results
    assert "learner has v2 staged" in str(results[0]) and "weight bucket 0 of" in str(results[1])
    assert_serving(rollout, state, 2)  # the refused update left the weights and the version alone
    rollout._members = None  # every rank left the group on the failure: the next sync forms a new one

    # A manifest cut short (the bucket count disagrees): the broadcast is refused, and the
    # version is loaded over the host path from the learner's staged copy instead.
    assert len(run(rollout.broadcast_weights(2, manifest[:-1], learner))) == 2
    assert rollout.epochs == 2 and rollout._members is None
    assert_serving(rollout, state, 2)

    # A version the learner never staged: refused over both paths; the engines serve v2 intact.
    with pytest.raises(WeightSyncError, match="got bucket 0 of .* for v2"):
        run(rollout.broadcast_weights(3, manifest, learner))
    assert_serving(rollout, state, 2)
    gen = run(rollout.workers[0].generate.remote(PROMPT, max_tokens=4, temperature=0.0, stop_token_ids=[2]))
    assert gen.version == 2 and len(gen.token_ids) > 0


def test_replaced_engine_loads_staged_weights_then_joins_the_next_group(groups):
    import ray

    rollout, learner = groups
    epochs = rollout.epochs
    dead = rollout.workers[0]
    ray.kill(dead, no_restart=True)
    run(rollout._revive(0, dead))  # what the rollout group does when a call meets the dead worker
    assert rollout.workers[0] is not dead and rollout.restarts == 1
    assert_serving(rollout, run(learner.state_for_check()), 2)  # the staged v2, over the host path

    train_once(rollout, learner, 4)
    syncs = run(rollout.broadcast_weights(3, run(learner.stage_weights(3, bucket_mb=1)), learner))
    assert len(syncs) == 2 and rollout.epochs == epochs + 1  # a new group, with the replacement in it
    assert_serving(rollout, run(learner.state_for_check()), 3)
