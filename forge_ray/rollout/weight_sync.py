"""Weight sync from the learner to vLLM engines through vLLM's weight-transfer API.

vLLM 0.32 applies new weights with ``start_weight_update`` / ``update_weights`` /
``finish_weight_update`` and lets a backend decide how the bytes travel. Its built-in
backends move CUDA memory (IPC, NCCL). forge_ray's backend, ``forge``, has two transports
(``rollout.weight_sync``):

* ``host``: the bytes travel inside the update message itself. The learner packs a bucket of
  tensors into one byte string and puts it into Ray's object store; the engine unpacks it.
* ``collective``: the update message carries only the manifest; learner rank 0 broadcasts the
  buckets over a process group the engine's worker joined (``collective.py``).

Either way the engine side loads the tensors with the model's own ``load_weights`` inside
vLLM's layer-wise reload, which re-runs the CPU kernels' weight post-processing. An update
that fails is finalized all the same, so the model never stays half torn down: layers that
received nothing get their old weights back.

The backend is registered in every process that builds an engine: the vLLM plugin entry
point (``vllm.general_plugins`` in setup.py) calls ``register`` in the engine-core process.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

BACKEND = "forge"

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


def _info_classes() -> tuple[type, type]:
    """The backend's init and update info (vLLM imported only inside the engine process)."""
    from vllm.distributed.weight_transfer.base import WeightTransferInitInfo, WeightTransferUpdateInfo

    @dataclass
    class ForgeInitInfo(WeightTransferInitInfo):
        """Empty for the host transport only; to join a weight group, its ``Rendezvous``
        fields and this engine's rank in it."""

        host: str = ""
        port: int = 0
        world_size: int = 0
        epoch: int = 0
        backend: str = "gloo"
        timeout_s: float = 300.0
        rank: int = 0

    @dataclass
    class HostUpdateInfo(WeightTransferUpdateInfo):
        names: list[str]
        dtype_names: list[str]
        shapes: list[list[int]]
        data: bytes

    return ForgeInitInfo, HostUpdateInfo


def _engine_class():
    """Build the vLLM-side engine class (vLLM imported only inside the engine process)."""
    from vllm.distributed.weight_transfer.base import WeightTransferEngine

    ForgeInitInfo, HostUpdateInfo = _info_classes()

    class ForgeWeightTransferEngine(WeightTransferEngine[ForgeInitInfo, HostUpdateInfo]):
        init_info_cls = ForgeInitInfo
        update_info_cls = HostUpdateInfo
        group = None  # this worker's ``collective.WeightGroup``, once it joined one

        def init_transfer_engine(self, init_info: ForgeInitInfo) -> None:
            from forge_ray.rollout import collective

            self.shutdown()  # leave the previous group: membership changed
            if not init_info.port:
                return  # host transport only: the bytes arrive in each update
            if self.parallel_config.world_size != 1:
                raise WeightSyncError("the collective weight sync takes one vLLM worker per engine (no tensor or pipeline parallelism)")
            fields = {k: v for k, v in vars(init_info).items() if k != "rank"}
            device = self.device if init_info.backend == "nccl" else "cpu"
            self.group = collective.join(collective.Rendezvous(**fields), init_info.rank, device=device)

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
            # The base class synchronises an accelerator afterwards; on CPU there is none, and
            # the collective path has waited on its own transfers.
            try:
                if "buckets" in update_info:  # collective: one whole version, by manifest
                    self.receive_collective(update_info["version"], update_info["buckets"])
                else:
                    self.receive_weights(self.parse_update_info(update_info))
            except BaseException:
                self.abandon_update()
                raise

        def receive_weights(self, update_info: HostUpdateInfo) -> None:
            self.model.load_weights(unpack_tensors(vars(update_info)))

        def receive_collective(self, version: int, buckets: list[dict[str, Any]]) -> None:
            from forge_ray.rollout.collective import BucketSpec

            if self.group is None:
                raise WeightSyncError(f"v{version} sent over a weight group this engine is not in")
            self.group.receive(version, [BucketSpec(**b) for b in buckets], self.model.load_weights)

        def abandon_update(self) -> None:
            """After a failed update (vLLM then closes the session without finishing it):
            finalize the reload so every layer is servable, and leave the weight group, which a
            failure leaves unusable."""
            try:
                self.finish_weight_update()
            except Exception:
                logging.getLogger(__name__).exception("finalizing an abandoned weight update")
            self.shutdown()

        def shutdown(self) -> None:
            if self.group is not None:
                self.group.close()
                self.group = None

    return ForgeWeightTransferEngine


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
    """vLLM general-plugin hook: make the ``forge`` backend known to this process."""
    from vllm.distributed.weight_transfer import WeightTransferEngineFactory

    try:
        WeightTransferEngineFactory.register_engine(BACKEND, _engine_class())
    except ValueError:
        pass  # already registered in this process
