"""PPO epochs / mini-batches in the learner, on real FSDP2 ranks (gloo) and the tiny model.

Trajectories are sampled from the tiny model here in the test process (no engines needed):
their logprobs stand in for the engine's, so TIS weights are ~1.
"""
import asyncio
import math

import pytest
import torch

from forge_ray.config import LearnerConfig
from forge_ray.types import Status, Trajectory, Turn

PROMPT, NEW = 8, 24


def _sample(model, group: int, index: int) -> Trajectory:
    gen = torch.Generator().manual_seed(1000 * group + index)
    prompt = torch.randint(3, model.config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(group))
    tokens = prompt
    with torch.no_grad():
        for _ in range(NEW):
            probs = torch.softmax(model(tokens).logits[0, -1].float(), -1)
            tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=gen)[None]], 1)
        lp = torch.log_softmax(model(tokens).logits[0, :-1].float(), -1).gather(-1, tokens[0, 1:, None])[:, 0]
    n = PROMPT + NEW
    return Trajectory(f"task{group}", f"task{group}#0", index, PROMPT, tokens[0].tolist(),
                      [0.0] * PROMPT + lp[PROMPT - 1 :].tolist(), [0] * PROMPT + [1] * NEW,
                      [Turn(PROMPT, n, 0, "length")], Status.OK, [])


@pytest.fixture(scope="module")
def batches(ray_cluster, tiny_model):
    """(main, sparse): 4 groups of 3 trajectories, and 2 groups of 1 (so with 2 ranks and 2
    mini-batches each rank sits out one mini-batch). Items as plan_update makes them."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)

    def items(sizes):
        trajs = [(_sample(model, g, i), 1.0 if (g + i) % 2 else -1.0) for g, n in enumerate(sizes) for i in range(n)]
        return [([ray_cluster.put(t)], adv, t.num_sampled) for t, adv in trajs]

    return items([3, 3, 3, 3]), items([1, 1])


def _run(tiny_model, cfg, *batches):
    from forge_ray.learner.group import LearnerGroup

    learner = LearnerGroup(cfg, tiny_model, "float32", "cpu", {"CPU": 1})
    try:
        asyncio.run(learner.setup())
        return [asyncio.run(learner.train_step(items)) for items in batches]
    finally:
        learner.shutdown()


@pytest.mark.parametrize("micro_tokens", [0, 96])  # padded micro-batches; packed rows (old logprobs unpacked per trajectory)
def test_ppo_epochs_and_minibatches_move_the_ratio(tiny_model, batches, micro_tokens):
    main, sparse = batches
    cfg = LearnerConfig(num_workers=2, lr=0.01, micro_batch=2, epochs=2, mini_batches=2, micro_tokens=micro_tokens)
    m, s = _run(tiny_model, cfg, main, sparse)
    print("ppo", {k: round(v, 5) for k, v in m.items()}, "\nsparse", {k: round(v, 5) for k, v in s.items()})
    assert m["ppo_steps"] == 4 and s["ppo_steps"] == 4
    # The first step's ratios are 1 (up to padding); the later ones see the updated policy.
    assert m["clip_frac"] > 0 or abs(m["ratio_mean"] - 1) > 1e-3
    assert m["approx_kl"] > 1e-5
    assert m["tokens"] == sum(n for _, _, n in main) and s["tokens"] == sum(n for _, _, n in sparse)
    assert m["sequences"] == len(main) and all(math.isfinite(v) for v in (*m.values(), *s.values()))
    assert m["logp_mismatch"] < 1e-3  # old_logp is the pre-update policy, so it matches the sampler


def test_single_update_keeps_ratio_one(tiny_model, batches):
    main, _ = batches
    (m,) = _run(tiny_model, LearnerConfig(num_workers=2, lr=0.01, micro_batch=2), main)
    assert m["ppo_steps"] == 1 and m["clip_frac"] == 0 and m["ratio_mean"] == 1.0 and m["approx_kl"] == 0
    assert m["tokens"] == sum(n for _, _, n in main) and m["grad_norm"] > 0


def _today_task():
    """The check below, as a function Ray ships by value (this test module is not importable
    on Ray's workers)."""

    def _against_today(tiny_model: str, items: list, micro: int) -> dict:
        """In its own process: a world-of-one FSDPWorker's train_step with epochs = mini_batches = 1,
        and beside it the single update as it was before PPO steps existed (pi_old = logp.detach(),
        one AdamW step) on a second copy of the model. Returns both metrics and whether the updated
        weights are bitwise equal."""
        import ray
        import torch.distributed as dist

        from forge_ray.learner.fsdp import build_model, full_state_dict
        from forge_ray.learner.loss import grpo_loss, token_logprobs
        from forge_ray.learner.worker import FSDPWorker, pad_batch

        cfg = LearnerConfig(num_workers=1, lr=0.01, micro_batch=micro)
        worker = FSDPWorker(0, 1, cfg, tiny_model, "float32", "cpu")
        worker.setup(*worker.address())
        ref = build_model(tiny_model)
        opt = torch.optim.AdamW(ref.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
        num_tokens = float(sum(n for _, _, n in items))
        got = worker.train_step([(box, adv) for box, adv, _ in items], num_tokens)

        trajs, advs = ray.get([box[0] for box, _, _ in items]), [adv for _, adv, _ in items]
        want = {"loss": 0.0, "clip_frac": 0.0, "ratio_mean": 0.0, "tis_mean": 0.0, "approx_kl": 0.0, "tokens": 0.0}
        for i in range(0, len(trajs), micro):
            data = pad_batch(trajs[i : i + micro], advs[i : i + micro])
            logp = token_logprobs(ref(input_ids=data["tokens"]).logits.float() / 1.0, data["tokens"])
            loss, m = grpo_loss(logp, logp.detach(), data["infer_logp"], data["advantages"], data["mask"], eps_low=cfg.eps_low,
                                eps_high=cfg.eps_high, tis_cap=cfg.tis_cap, num_tokens=num_tokens / 1)
            loss.backward()
            k = float(data["mask"].sum())
            want["loss"] += float(loss.detach())
            want["tokens"] += k
            for key in ("clip_frac", "ratio_mean", "tis_mean", "approx_kl"):
                want[key] += m[key] * k
        for key in ("clip_frac", "ratio_mean", "tis_mean", "approx_kl"):
            want[key] /= want["tokens"]
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.grad_clip)
        want["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        opt.step()
        a, b = full_state_dict(worker.model), full_state_dict(ref)
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        dist.destroy_process_group()
        return {"got": got, "want": want, "same_weights": same}

    return _against_today


def test_single_update_numbers_are_todays(ray_cluster, tiny_model, batches):
    main, _ = batches
    task = ray_cluster.remote(num_cpus=1, max_calls=1)(_today_task())  # max_calls: the process group dies with it
    out = ray_cluster.get(task.remote(tiny_model, main, 4))
    got, want = out["got"], out["want"]
    assert out["same_weights"]
    assert got["ppo_steps"] == 1
    assert {k: got[k] for k in want} == want  # exactly, not approximately
