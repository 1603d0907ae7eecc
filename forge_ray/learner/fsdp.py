"""The one model builder for every trainer: FSDP2 (``fully_shard``) over a Hugging Face
causal LM, gloo on CPU and NCCL on GPU. RL learner workers and Ray Train SFT both use it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, device: str) -> None:
    """Join the trainer's process group (a no-op when already initialised, e.g. by Ray Train)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world_size)


def build_model(path: str, dtype: str = "float32", device: str = "cpu") -> Any:
    """Load ``path`` and shard it with FSDP2: each decoder layer, then the root.

    With more than one rank, only rank 0 reads the weights: every rank builds the model on the
    meta device (no memory), shards it, allocates its own shard, and rank 0 broadcasts the
    weights (and the non-persistent buffers, e.g. rotary frequencies) into the shards. A
    rank's peak is its shard, not the whole model; rank 0 also holds the loaded copy until
    the broadcast ends.

    bfloat16 on CUDA with a process group is mixed precision: the weights load in float32 (the
    master copy that the optimizer steps) and FSDP2 gathers them in bfloat16 for forward and
    backward, reducing gradients in float32 (``MixedPrecisionPolicy``); ``full_state_dict``
    and ``save_hf`` give bfloat16 tensors, as a bfloat16 model would. Otherwise the weights are
    ``dtype``, as loaded."""
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import AutoModelForCausalLM

    mixed = device == "cuda" and dtype == "bfloat16" and dist.is_initialized()
    kwargs: dict[str, Any] = {"dtype": torch.float32 if mixed else getattr(torch, dtype)}
    target = "cuda" if device == "cuda" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        kwargs["attn_implementation"] = _gpu_attention()
    if not dist.is_initialized():
        return _for_training(AutoModelForCausalLM.from_pretrained(path, **kwargs).to(target), device)
    loaded = AutoModelForCausalLM.from_pretrained(path, **kwargs) if dist.get_rank() == 0 else None
    if dist.get_world_size() == 1:
        model = loaded.to(target)
    else:
        model = _meta_model(path, kwargs)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed else MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    if dist.get_world_size() > 1:
        _fill_from_rank0(model, loaded, target)
        del loaded
    if mixed:
        model.export_dtype = torch.bfloat16  # read by full_state_dict and save_hf
    return _for_training(model, device)


def _for_training(model: Any, device: str) -> Any:
    """Train mode (``from_pretrained`` leaves eval mode, in which transformers skips activation
    checkpointing) and, on CUDA, activation checkpointing: RL, SFT and mid-training alike."""
    model.train()
    if device == "cuda":
        model.gradient_checkpointing_enable()
    return model


def _meta_model(path: str, kwargs: dict[str, Any]) -> Any:
    """The model's modules with parameters and buffers on the meta device (no storage)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), **kwargs)


def _fill_from_rank0(model: Any, loaded: Any, device: str) -> None:
    """Allocate this rank's shards on ``device`` and fill them from rank 0's ``loaded`` model:
    the parameters and persistent buffers by a full-state-dict broadcast, the non-persistent
    buffers (absent from state dicts) by an object broadcast."""
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    model.to_empty(device=device)
    state = loaded.state_dict() if loaded is not None else {}
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    buffers = [{n: b.detach().cpu() for n, b in loaded.named_buffers()} if loaded is not None else None]
    dist.broadcast_object_list(buffers, src=0)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            buf.copy_(buffers[0][name].to(buf.device))


def _gpu_attention() -> str:
    try:
        import flash_attn  # noqa: F401

        return "flash_attention_2"
    except ImportError:
        return "sdpa"


def full_state_dict(model: Any) -> dict[str, Any]:
    """Gather the full (unsharded) state dict on CPU. A collective: every rank must call it;
    rank 0 receives the tensors, the others an empty dict."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not dist.is_initialized():
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    else:
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    dtype = getattr(model, "export_dtype", None)  # float32 master weights of a bfloat16 model (build_model)
    return {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in state.items()}


def weights_for_sync(model: Any, state: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, tensor) pairs an inference engine needs: a tied LM head is the embedding."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return [(k, v) for k, v in state.items() if not (tied and k == "lm_head.weight")]


def save_hf(model: Any, state: dict[str, Any], out_dir: str | Path, tokenizer_src: str | Path) -> Path:
    """Write a Hugging Face folder (config, safetensors, tokenizer) from a gathered state."""
    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inner = getattr(model, "module", model)
    inner.save_pretrained(out, state_dict=state, safe_serialization=True)
    if getattr(model, "export_dtype", None) is not None:  # config.json names the parameters' (master) dtype
        inner.config.dtype = model.export_dtype
        inner.config.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_src).save_pretrained(out)
    return out


def save_checkpoint(model: Any, optimizer: Any, path: str | Path, rank: int, extra: dict[str, Any]) -> None:
    """Sharded checkpoint of model and optimizer (torch DCP; a collective over the ranks),
    plus this rank's ``extra`` state and RNG states in ``rng-<rank>.pt``."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(Path(path) / "learner"))
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save({**extra, "rng": rng}, Path(path) / f"rng-{rank}.pt")


def load_checkpoint(model: Any, optimizer: Any, path: str | Path, rank: int) -> dict[str, Any]:
    """Load what ``save_checkpoint`` wrote into ``model`` and ``optimizer``; returns ``extra``."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(Path(path) / "learner"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    extra = torch.load(Path(path) / f"rng-{rank}.pt", weights_only=False)
    torch.set_rng_state(extra["rng"]["torch"])
    if extra["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(extra["rng"]["cuda"])
    return {k: v for k, v in extra.items() if k != "rng"}
