"""Weight sync from the learner to vLLM engines through vLLM's weight-transfer API.

vLLM 0.32 applies new weights with ``start_weight_update`` / ``update_weights`` /
``finish_weight_update`` and lets a backend decide how the bytes travel. Its built-in
backends move CUDA memory (IPC, NCCL). On one host without a GPU the bytes travel inside the
update message itself: ``host`` packs a bucket of tensors into one byte string, and the
engine side unpacks it and loads it with the model's own ``load_weights`` inside vLLM's
layer-wise reload, which re-runs the CPU kernels' weight post-processing.

The backend is registered in every process that builds an engine: the vLLM plugin entry
point (``vllm.general_plugins`` in setup.py) calls ``register`` in the engine-core process.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

BACKEND = "forge_host"

_DTYPES = ("float32", "bfloat16", "float16")

_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


def pack_tensors(names: list[str], tensors: list[Any]) -> dict[str, Any]:
    """Pack CPU tensors into one ``update_info`` dict: names, dtypes, shapes and one byte
    string holding them back to back."""
    import torch

    flat = [t.detach().to("cpu").contiguous().reshape(-1) for t in tensors]
    raw = [f.view(torch.uint8) for f in flat]
    data = torch.cat(raw).numpy().tobytes() if raw else b""
    return {
        "names": list(names),
        "dtype_names": [str(t.dtype).removeprefix("torch.") for t in tensors],
        "shapes": [list(t.shape) for t in tensors],
        "data": data,
    }


def unpack_tensors(info: dict[str, Any]) -> list[tuple[str, Any]]:
    """Inverse of ``pack_tensors``: ``[(name, tensor)]`` viewing one buffer (no copies)."""
    import torch

    buf = torch.frombuffer(bytearray(info["data"]), dtype=torch.uint8) if info["data"] else None
    out, offset = [], 0
    for name, dtype_name, shape in zip(info["names"], info["dtype_names"], info["shapes"]):
        dtype = getattr(torch, dtype_name)
        numel = 1
        for s in shape:
            numel *= s
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        out.append((name, buf[offset : offset + nbytes].view(dtype).reshape(shape)))
        offset += nbytes
    return out


def bucketize(named: list[tuple[str, Any]], bucket_bytes: int) -> list[list[tuple[str, Any]]]:
    """Split ``(name, tensor)`` pairs into consecutive buckets of at most ``bucket_bytes``
    (a tensor larger than the budget gets a bucket of its own)."""
    buckets: list[list[tuple[str, Any]]] = [[]]
    size = 0
    for name, t in named:
        n = t.numel() * t.element_size()
        if buckets[-1] and size + n > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append((name, t))
        size += n
    return [b for b in buckets if b]


class WeightSyncError(RuntimeError):
    """A weight update that does not belong to the version being loaded, or is incomplete."""


def check_bucket(bucket: Any, version: int, index: int, count: int) -> None:
    """Refuse bucket ``index`` of ``count`` for ``version`` unless it says it is exactly that
    (a bucket of another version, out of order, or a version cut short would leave the engine
    serving a mix of two policies under one version number)."""
    got = (bucket.version, bucket.index, bucket.count)
    if got != (version, index, count):
        raise WeightSyncError(f"weight bucket {index} of {count} for v{version}: got bucket {got[1]} of {got[2]} for v{got[0]}")


def tensor_digest(t: Any) -> str:
    """sha256 of a tensor's bytes: the per-tensor checksum the sync test compares."""
    import torch

    data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


# vLLM fuses some Hugging Face projections into one parameter; to compare checksums the HF
# side is fused the same way (concatenated along dim 0, in this order).
_FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


def _fused(hf_state: dict[str, Any]) -> dict[str, Any]:
    """An HF state dict under vLLM's parameter names, fused projections concatenated."""
    import torch

    out: dict[str, Any] = {}
    consumed: set[str] = set()
    for name in hf_state:
        for fused, parts in _FUSED.items():
            if f"{parts[0]}." in name:  # the first part names the fused tensor
                sources = [name.replace(parts[0], p) for p in parts]
                out[name.replace(parts[0], fused)] = torch.cat([hf_state[s] for s in sources])
                consumed.update(sources)
    out.update({n: t for n, t in hf_state.items() if n not in consumed})
    return out


def _probe_input(in_features: int, seed: int) -> Any:
    import torch

    return torch.randn(4, in_features, generator=torch.Generator().manual_seed(seed))


# Fingerprints. On CPU, vLLM hands linear weights to oneDNN at load time and frees the
# parameter, so the served bytes of a linear layer cannot be read back. Such a layer is
# fingerprinted by its output on a fixed random input instead (compared with a tolerance);
# every tensor that stays readable is compared by sha256 of its bytes.


def learner_fingerprint(hf_state: dict[str, Any], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Digest of every tensor and, for matrices, the probe output ``x @ W.T``."""
    out = {}
    for name, t in _fused(hf_state).items():
        entry: dict[str, Any] = {"digest": tensor_digest(t)}
        if t.dim() == 2:
            entry["probe"] = (_probe_input(t.shape[1], seed) @ t.float().T).tolist()
        out[name] = entry
    return out


def engine_fingerprint(worker: Any, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Runs inside vLLM's worker (via ``collective_rpc``): fingerprint the served weights."""
    import torch

    model = worker.model_runner.model
    out = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() > 0:
                out[name] = {"digest": tensor_digest(p)}
                continue
            layer = model.get_submodule(name.rsplit(".", 1)[0])
            x = _probe_input(layer.input_size, seed)
            out[name] = {"probe": layer.cpu_linear(x, p, None).float().tolist()}
    return out


def compare_fingerprints(engine: dict, learner: dict, atol: float = 1e-4) -> list[str]:
    """Names whose served weights differ from the learner's (empty list = equal)."""
    import torch

    bad = []
    for name, e in engine.items():
        ref = learner.get(name)
        if ref is None:
            bad.append(f"{name}: not in learner state")
        elif "digest" in e and e["digest"] != ref["digest"]:
            bad.append(f"{name}: digest {e['digest']} != {ref['digest']}")
        elif "probe" in e and not torch.allclose(torch.tensor(e["probe"]), torch.tensor(ref["probe"]), atol=atol, rtol=1e-4):
            bad.append(f"{name}: probe output differs")
    return bad


def _engine_class():
    """Build the vLLM-side engine class (vLLM imported only inside the engine process)."""
    from vllm.distributed.weight_transfer.base import (
        WeightTransferEngine,
        WeightTransferInitInfo,
        WeightTransferUpdateInfo,
    )

    @dataclass
    class HostInitInfo(WeightTransferInitInfo):
        pass

    @dataclass
    class HostUpdateInfo(WeightTransferUpdateInfo):
        names: list[str]
        dtype_names: list[str]
        shapes: list[list[int]]
        data: bytes

    class HostWeightTransferEngine(WeightTransferEngine[HostInitInfo, HostUpdateInfo]):
        init_info_cls = HostInitInfo
        update_info_cls = HostUpdateInfo

        def init_transfer_engine(self, init_info: HostInitInfo) -> None:
            pass  # nothing to rendezvous with: the bytes arrive in each update

        def start_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            reload_log = logging.getLogger(_RELOAD_LOGGER)
            if not any(isinstance(f, ExpectedReloadWarnings) for f in reload_log.filters):
                reload_log.addFilter(ExpectedReloadWarnings(tied_head=_tied_head(self.model) is not None))
            initialize_layerwise_reload(self.model)

        def finish_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            finalize_layerwise_reload(self.model, self.model_config)
            _refresh_tied_head(self.model)

        def update_weights(self, update_info: dict[str, Any]) -> None:
            # The base class synchronises an accelerator afterwards; on CPU there is none.
            self.receive_weights(self.parse_update_info(update_info))

        def receive_weights(self, update_info: HostUpdateInfo) -> None:
            self.model.load_weights(unpack_tensors(vars(update_info)))

        def shutdown(self) -> None:
            pass

    return HostWeightTransferEngine


class ExpectedReloadWarnings(logging.Filter):
    """Drops the layer-wise reload's "Failed to load weights" warning, printed on every sync,
    for layers that hold no checkpoint tensor by design: rotary embeddings (a cos/sin cache
    derived from the config) and, with tied embeddings, the LM head (``_refresh_tied_head``
    re-derives it). Any other layer that misses its weights still warns."""

    def __init__(self, tied_head: bool) -> None:
        super().__init__()
        self.layers = ("RotaryEmbedding", "ParallelLMHead") if tied_head else ("RotaryEmbedding",)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != "%s: Failed to load weights" or not record.args:
            return True
        return not str(record.args[0]).endswith(self.layers)


def _tied_head(model: Any) -> Any:
    """The model's LM head when it shares its weight with another module (tied embeddings)."""
    head = getattr(model, "lm_head", None)
    weight = getattr(head, "weight", None)
    if weight is None or weight.numel() == 0:
        return None
    tied = any(
        m is not head and isinstance(getattr(m, "weight", None), type(weight)) and m.weight.data_ptr() == weight.data_ptr()
        for m in model.modules()
    )
    return head if tied else None


def _refresh_tied_head(model: Any) -> None:
    """Re-derive a tied LM head's kernel weights. With tied embeddings no checkpoint tensor
    is named after the head, so the reload never revisits it, yet on CPU the head keeps its
    own pre-packed copy of the embedding matrix: without this, logits use stale weights."""
    head = _tied_head(model)
    if head is not None:
        head.quant_method.process_weights_after_loading(head)


def register() -> None:
    """vLLM general-plugin hook: make the ``forge_host`` backend known to this process."""
    from vllm.distributed.weight_transfer import WeightTransferEngineFactory

    try:
        WeightTransferEngineFactory.register_engine(BACKEND, _engine_class())
    except ValueError:
        pass  # already registered in this process
