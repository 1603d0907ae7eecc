"""Token-budget micro-batches with sequence packing (forge_ray/learner/packing.py) and the
learner's packed path: the same log-probs, loss and gradients as padded micro-batches."""
import pytest
import torch

from forge_ray.learner.packing import pack, pack_rows, pad_fraction, slots, token_micro_batches, unpack
from forge_ray.types import Advantage, Status, Trajectory, Turn


def test_first_fit_decreasing_rows_hold_every_sequence_once_within_the_row_length():
    lengths = [7, 3, 9, 2, 5, 4, 9, 1]
    rows = pack_rows(lengths, 10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 5  # 50 tokens: 9+1, 9, 7+3, 5+4, 2 -> 5 rows of 10
    assert pack_rows(lengths, 10) == rows  # deterministic
    assert pack_rows([12, 3], 10) == [[0], [1]]  # longer than a row: a row of its own


def test_token_micro_batches_keep_rows_times_length_within_the_budget():
    lengths = [100, 60, 40, 90, 10, 50, 30]
    batches = token_micro_batches(lengths, 250)
    assert all(len(rows) * 100 <= 250 for rows in batches)  # row length = the longest (100): 2 rows each
    assert sorted(i for rows in batches for row in rows for i in row) == list(range(7))
    assert [len(rows) for rows in token_micro_batches(lengths, 50)] == [1] * len(pack_rows(lengths, 100))  # at least one row
    assert token_micro_batches([], 100) == []


def test_pack_and_unpack_round_trip_with_restarting_positions():
    padded = {"tokens": torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9]]), "mask": torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 1, 1.0]])}
    lengths = [3, 2, 4]
    rows = pack_rows(lengths, 4)  # [[2], [0], [1]]: 3 + 2 > 4
    out, where = pack(padded, rows, lengths)
    assert out["tokens"].shape == (3, 4)
    assert out["tokens"][0].tolist() == [6, 7, 8, 9] and out["position_ids"][0].tolist() == [0, 1, 2, 3]
    assert out["tokens"][1].tolist() == [1, 2, 3, 0] and out["position_ids"][1].tolist() == [0, 1, 2, 3]  # padding runs on
    rows2 = pack_rows([2, 2], 4)
    out2, where2 = pack({"tokens": torch.tensor([[1, 2], [3, 4]])}, rows2, [2, 2])
    assert out2["tokens"].tolist() == [[1, 2, 3, 4]] and out2["position_ids"].tolist() == [[0, 1, 0, 1]]
    back = unpack(out["mask"], where, 3)
    assert [b.tolist() for b in back] == [[0, 1, 1], [0, 1], [0, 0, 1, 1]]  # first value zeroed (it is 0 here anyway)
    assert pad_fraction(lengths, [(3, 4)]) == pytest.approx(1 - 9 / 12)
    assert [s.row for s in slots(rows2, [2, 2])] == [0, 0]


# ---------------------------------------------------------------- the learner's packed path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from forge_ray.models.tiny import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("pack") / "m", vocab_size=512, hidden_size=64, num_layers=2,
                               intermediate_size=128, max_position=128))


def _trajectories(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt, reply = 5 + i % 4, 3 + (7 * i) % 11
        tokens = torch.randint(3, 500, (prompt + reply,), generator=g).tolist()
        out.append(Trajectory(f"t{i}", f"g{i // 4}", i % 4, prompt, tokens, [0.0] * prompt + [-2.0] * reply,
                              [0] * prompt + [1] * reply, [Turn(prompt, prompt + reply, 0, "stop")], Status.OK, []))
    return out


def _step(model_dir, trajs, advs, **cfg):
    """Loss metrics and gradients of one batch through FSDPWorker's micro-steps (no process group:
    a plain model stands in for the sharded one)."""
    from transformers import AutoModelForCausalLM

    from forge_ray.config import LearnerConfig
    from forge_ray.learner.worker import FSDPWorker, _chunks

    torch.manual_seed(0)
    worker = FSDPWorker(0, 1, LearnerConfig(num_workers=1, **cfg), model_dir, "float32", "cpu")
    worker.model = AutoModelForCausalLM.from_pretrained(model_dir)
    chunks = _chunks(trajs, advs, None, worker.cfg.micro_batch, worker.cfg.micro_tokens)
    sums: dict = {}
    num_tokens = float(sum(sum(t.loss_mask) for t in trajs))
    worker._accumulate(chunks, len(chunks), num_tokens, sums)
    grads = {n: p.grad.clone() for n, p in worker.model.named_parameters() if p.grad is not None}
    old = worker._old_logprobs(chunks, len(chunks))
    return sums, grads, old, chunks


def test_packed_micro_batches_give_the_padded_loss_gradients_and_old_logprobs(tiny):
    trajs = _trajectories(10)
    advs = [Advantage(float(i % 3) - 1.0, (0.5,) if i % 2 else ()) for i in range(10)]
    padded = _step(tiny, trajs, advs, micro_batch=4)
    packed = _step(tiny, trajs, advs, micro_batch=4, micro_tokens=40)
    assert any(c.rows and any(len(r) > 1 for r in c.rows) for c in packed[3])  # some rows really hold several trajectories
    assert packed[0]["positions"] < padded[0]["positions"]  # less padding computed
    for key in ("loss_sum", "tokens", "entropy", "ratio_mean", "tis_mean"):
        assert packed[0][key] == pytest.approx(padded[0][key], rel=1e-5, abs=1e-6), key
    assert packed[1].keys() == padded[1].keys()
    for k in padded[1]:
        torch.testing.assert_close(packed[1][k], padded[1][k], atol=1e-6, rtol=1e-4, msg=k)
    for t, a, b in zip(trajs, packed[2], padded[2]):  # old logprobs in batch order, each trajectory's own length
        assert a.shape == b.shape == (len(t.tokens),)
        torch.testing.assert_close(a[1:], b[1:], atol=1e-5, rtol=1e-5)


def _sft_grads(model_dir, rows, micro_tokens):
    """SFT loss and gradients of ``rows`` through ``sft._micro_batches`` (a plain model, one rank)."""
    from transformers import AutoModelForCausalLM

    from forge_ray.learner.chunked import model_token_logprobs
    from forge_ray.learner.loss import sft_loss_from_logprobs
    from forge_ray.train.sft import _micro_batches

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    n_tokens = sum(sum(r["mask"]) for r in rows)
    micros = _micro_batches(rows, micro_tokens)
    total = 0.0
    for micro in micros:
        extra = {k: v for k, v in micro.items() if k == "position_ids"}
        logp, _ = model_token_logprobs(model, micro["tokens"], chunk=16, **extra)
        loss, _ = sft_loss_from_logprobs(logp, micro["mask"], num_tokens=n_tokens)
        loss.backward()
        total += float(loss)
    return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, micros


def test_sft_packed_micro_batches_give_the_padded_batch_loss_and_gradients(tiny):
    rows = [{"tokens": t.tokens, "mask": t.loss_mask} for t in _trajectories(9, seed=1)]
    loss, grads, micros = _sft_grads(tiny, rows, 0)
    packed_loss, packed_grads, packed_micros = _sft_grads(tiny, rows, 40)
    assert len(micros) == 1 and len(packed_micros) > 1  # gradients really accumulate over several passes
    assert any("position_ids" in m and (m["position_ids"] == 0).sum() > m["tokens"].shape[0] for m in packed_micros)  # rows hold several conversations
    assert packed_loss == pytest.approx(loss, rel=1e-5)
    for k in grads:
        torch.testing.assert_close(packed_grads[k], grads[k], atol=1e-6, rtol=1e-4, msg=k)


def _equal_passes_rank(rank, port, counts, queue):
    import torch.distributed as dist

    from forge_ray.train.sft import equal_passes

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(counts))
    micros = [{"tokens": torch.ones(1, 3, dtype=torch.long), "mask": torch.ones(1, 3)}] * counts[rank]
    out = equal_passes(micros, "cpu")
    queue.put((rank, [float(m["mask"].sum()) for m in out]))
    dist.destroy_process_group()


def test_sft_ranks_with_unequal_packed_shares_run_as_many_passes():
    """Packed shares of one batch can need different pass counts; FSDP hangs unless every rank
    runs as many (the SmolLM2 SFT hung on it): the shorter share pads with empty passes."""
    from gloo_ranks import run_ranks

    results = run_ranks(_equal_passes_rank, ([3, 1],), world=2, timeout_s=120)
    assert results[0] == [3.0, 3.0, 3.0]
    assert results[1] == [3.0, 0.0, 0.0]  # two empty passes: no loss, but the collectives run
