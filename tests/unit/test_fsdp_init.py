"""FSDP2 model building on 2 gloo ranks: rank 0 reads the weights, the others start on the meta
device; the sharded model is the checkpoint, parameter for parameter, buffers included."""
import pytest
import torch


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from forge_ray.models.tiny import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("fsdp_init"), vocab_size=512, hidden_size=64, num_layers=2,
                               intermediate_size=128, max_position=64))


def _rank(rank: int, port: int, path: str, queue) -> None:
    import os

    import torch.distributed as dist
    import transformers.modeling_utils as mu
    from forge_ray.learner.fsdp import build_model, full_state_dict

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    reads = []
    original = mu.PreTrainedModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        reads.append(rank)
        return original(cls, *args, **kwargs)

    mu.PreTrainedModel.from_pretrained = classmethod(counting)
    try:
        model = build_model(path)
        mu.PreTrainedModel.from_pretrained = classmethod(original)
        state = full_state_dict(model)
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        tokens = torch.randint(3, 500, (2, 16), generator=torch.Generator().manual_seed(0))
        logits = model(tokens).logits.detach()
        arrays = lambda d: {k: v.numpy().copy() for k, v in d.items()}  # noqa: E731 - plain pickles, no shared memory
        queue.put((rank, (reads, arrays(state), arrays(buffers), logits.numpy().copy())))
    finally:
        dist.destroy_process_group()


def test_rank0_loads_and_the_shards_hold_the_checkpoint(tiny):
    from gloo_ranks import run_ranks
    from transformers import AutoModelForCausalLM

    results = run_ranks(_rank, (tiny,))
    ref = AutoModelForCausalLM.from_pretrained(tiny)
    tokens = torch.randint(3, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    expected = ref(tokens).logits.detach()
    assert results[0][0] == [0] and results[1][0] == []  # only rank 0 read the checkpoint
    state = results[0][1]
    assert set(state) == set(ref.state_dict()) and all(torch.equal(torch.from_numpy(state[k]), v) for k, v in ref.state_dict().items())
    assert results[1][1] == {}  # the full state is gathered on rank 0 only
    for rank in (0, 1):
        _, _, buffers, logits = results[rank]
        ref_buffers = dict(ref.named_buffers())
        assert buffers.keys() == ref_buffers.keys() and all(torch.equal(torch.from_numpy(buffers[n]), ref_buffers[n]) for n in buffers)
        assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-5), rank
