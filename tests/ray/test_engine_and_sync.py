"""Engine token-in/token-out, episode layout, and the weight-sync round trip, on real actors."""
import asyncio

import pytest
import torch
from actor_groups import start_groups

from forge_ray.rollout.weight_sync import compare_fingerprints, learner_fingerprint
from forge_ray.types import Status


@pytest.fixture(scope="module")
def groups(ray_cluster, tiny_model):
    yield from start_groups(tiny_model, 1, 256)


def hf_greedy(model_dir_or_state, tiny_model, prompt, n):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    if isinstance(model_dir_or_state, dict):
        model.load_state_dict(model_dir_or_state, strict=False)
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    logits = model(out).logits[0, len(prompt) - 1 : -1]
    new = out[0, len(prompt) :]
    return new.tolist(), torch.log_softmax(logits.float(), -1).gather(-1, new[:, None])[:, 0].tolist()


def engine_greedy(rollout, prompt, n):
    gen = asyncio.run(_call(rollout.workers[0].generate.remote(prompt, max_tokens=n, temperature=0.0, stop_token_ids=[2])))
    return gen


async def _call(ref):
    return await ref


PROMPT = [1, 88, 140, 301, 77, 9, 42, 500, 13, 2, 1, 600]


def test_generate_is_token_in_token_out(groups, tiny_model):
    rollout, _ = groups
    gen = engine_greedy(rollout, PROMPT, 12)
    assert len(gen.token_ids) == len(gen.logprobs) > 0 and gen.version == 0
    ids, logprobs = hf_greedy(tiny_model, tiny_model, PROMPT, len(gen.token_ids))
    assert gen.token_ids == ids[: len(gen.token_ids)]
    assert gen.logprobs == pytest.approx(logprobs[: len(gen.logprobs)], abs=1e-3)


def test_episode_layout_and_masks(groups):
    from envs import make_tasks

    rollout, _ = groups
    trajs = asyncio.run(rollout.evaluate(make_tasks("calculator").tasks("train", 4, 1), greedy=False))
    for t in trajs:
        assert len(t.tokens) == len(t.logprobs) == len(t.loss_mask)
        assert t.loss_mask[: t.prompt_len] == [0] * t.prompt_len
        sampled = [i for i, m in enumerate(t.loss_mask) if m]
        assert sampled == [i for turn in t.turns for i in range(turn.start, turn.end)]
        assert all(t.logprobs[i] < 0 for i in sampled) and all(t.logprobs[i] == 0.0 for i in range(len(t.tokens)) if not t.loss_mask[i])
        assert t.status in set(Status) and t.reward is not None and t.reward.error is None
        assert all(turn.version == 0 for turn in t.turns)


def test_weight_sync_round_trip(groups, tiny_model):
    import ray

    from envs import make_tasks

    rollout, learner = groups
    before_tokens = engine_greedy(rollout, PROMPT, 12).token_ids
    old_state = asyncio.run(learner.state_for_check())
    # One real update: trajectories from the engine, arbitrary signs as advantages.
    trajs = asyncio.run(rollout.evaluate(make_tasks("calculator").tasks("train", 4, 2), greedy=False))
    items = [([ray.put(t)], 1.0 if i % 2 else -1.0, t.num_sampled) for i, t in enumerate(trajs)]
    metrics = asyncio.run(learner.train_step(items))
    assert metrics["grad_norm"] > 0 and metrics["tokens"] == sum(t.num_sampled for t in trajs)
    refs = asyncio.run(learner.export_weights(1, bucket_mb=1))
    assert len(refs) > 1  # bucketed
    timings = asyncio.run(rollout.update_weights(1, refs))
    assert timings[0]["sync_seconds"] > 0 and timings[0]["sync_bytes"] > 0

    new_state = asyncio.run(learner.state_for_check())
    served = asyncio.run(_call(rollout.workers[0].fingerprint.remote()))
    assert compare_fingerprints(served, learner_fingerprint(new_state)) == []  # engine == learner, per tensor
    assert len(compare_fingerprints(served, learner_fingerprint(old_state))) > 0  # and it did change

    gen = engine_greedy(rollout, PROMPT, 12)
    assert gen.version == 1
    ids, logprobs = hf_greedy(new_state, tiny_model, PROMPT, len(gen.token_ids))
    assert gen.token_ids == ids[: len(gen.token_ids)]  # greedy output follows the new weights
    assert gen.logprobs == pytest.approx(logprobs[: len(gen.logprobs)], abs=1e-3)
    assert gen.token_ids != before_tokens
