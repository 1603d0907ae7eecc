"""Weight sync over a collective: learner rank 0 broadcasts the policy into every engine.

The host path (``weight_sync.py``) carries each bucket through Ray's object store and one vLLM
RPC per bucket. This path moves the bytes once, over a process group of its own that learner
rank 0 (rank 0) and each engine's vLLM worker (ranks 1..N) join: gloo on CPU, NCCL when both
sides hold CUDA memory. The group is a ``TCPStore`` hosted by rank 0 and a ``ProcessGroupGloo``
(or ``ProcessGroupNCCL``) constructed directly, never through ``init_process_group``, so it
touches neither the learner's FSDP group nor vLLM's own. Membership is fixed for a group's
life: when it changes (an engine replaced, the learner rebuilt), the driver forms a new group,
a new "epoch" on a new store and port.

One sync follows vLLM's own NCCL backend, in two planes:

* control: the driver gives every engine the manifest, one ``BucketSpec`` per bucket (version,
  index, count, names, dtypes, shapes, bytes), in one ``update_weights`` message;
* data: all ranks first agree (``WeightGroup.agree``: one all-reduce over the version, the
  bucket count, the bytes and a digest of the layout, plus each rank's own verdict). Any
  disagreement is refused by every rank before a byte moves. Then rank 0 broadcasts the
  buckets, each led by its own header (version, index, count, bytes) that the engine checks
  with ``check_bucket`` before loading it. Rank 0 packs bucket k+1 while bucket k is on the
  wire; an engine posts the receive of bucket k+1 before it loads bucket k.
"""
from __future__ import annotations

import hashlib
import json
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from forge_ray.rollout.weight_sync import WeightSyncError, bucketize, check_bucket

HEADER_BYTES = 32  # four int64 leading every bucket on the wire: version, index, count, nbytes
ALIGN = 64  # every tensor starts at a multiple of this many bytes of its bucket (dtype views need it)
TIMEOUT_S = 300.0  # one collective call: rank 0 waits this long for the engines to drain
JOIN_TIMEOUT_S = 60.0  # forming a group: how long the ranks that joined wait for one that does not


@dataclass(frozen=True)
class BucketSpec:
    """One bucket of a version as the engine needs it before the bytes arrive."""

    version: int
    index: int
    count: int  # how many buckets make up this version
    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]
    nbytes: int  # payload bytes, alignment padding included (the header not)


@dataclass(frozen=True)
class BucketHeader:
    """What a bucket says about itself on the wire (``check_bucket`` reads it)."""

    version: int
    index: int
    count: int
    nbytes: int


@dataclass(frozen=True)
class Rendezvous:
    """Where one weight group meets: rank 0's store and the group's shape."""

    host: str
    port: int
    world_size: int  # rank 0 plus one rank per engine
    epoch: int  # counts the groups formed in a run (logs; the store's key prefix)
    backend: str = "gloo"  # "nccl" when rank 0 and the engines broadcast CUDA memory
    timeout_s: float = TIMEOUT_S


def _offsets(dtype_names: list[str], shapes: list[list[int]]) -> tuple[list[int], int]:
    """Byte offset of each tensor in its bucket's payload, and the payload size."""
    import torch

    offsets, end = [], 0
    for dtype_name, shape in zip(dtype_names, shapes):
        numel = 1
        for s in shape:
            numel *= s
        offsets.append(end)
        end += -(-numel * torch.empty((), dtype=getattr(torch, dtype_name)).element_size() // ALIGN) * ALIGN
    return offsets, end


def plan(named: list[tuple[str, Any]], version: int, bucket_bytes: int) -> list[BucketSpec]:
    """The manifest of ``version``: ``(name, tensor)`` pairs in buckets of at most
    ``bucket_bytes`` (``bucketize``; meta tensors do, nothing is read)."""
    buckets = bucketize(named, bucket_bytes)
    specs = []
    for i, bucket in enumerate(buckets):
        dtype_names = [str(t.dtype).removeprefix("torch.") for _, t in bucket]
        shapes = [list(t.shape) for _, t in bucket]
        specs.append(BucketSpec(version, i, len(buckets), [n for n, _ in bucket], dtype_names, shapes, _offsets(dtype_names, shapes)[1]))
    return specs


def layout_digest(specs: list[BucketSpec]) -> int:
    """60 bits of sha256 over the manifest's layout (names, dtypes, shapes, bucket cuts)."""
    layout = json.dumps([[s.names, s.dtype_names, s.shapes] for s in specs]).encode()
    return int(hashlib.sha256(layout).hexdigest()[:15], 16)


def pack(spec: BucketSpec, tensors: list[Any], device: Any = "cpu") -> Any:
    """One bucket on the wire: a uint8 tensor on ``device``, header then payload."""
    import torch

    buf = torch.zeros(HEADER_BYTES + spec.nbytes, dtype=torch.uint8, device=device)
    header = torch.tensor([spec.version, spec.index, spec.count, spec.nbytes], dtype=torch.int64)
    buf[:HEADER_BYTES].copy_(header.view(torch.uint8))
    for offset, t in zip(_offsets(spec.dtype_names, spec.shapes)[0], tensors):
        raw = t.detach().contiguous().reshape(-1).view(torch.uint8)
        buf[HEADER_BYTES + offset : HEADER_BYTES + offset + raw.numel()].copy_(raw)
    return buf


def read_header(buf: Any) -> BucketHeader:
    import torch

    return BucketHeader(*(int(v) for v in buf[:HEADER_BYTES].cpu().view(torch.int64)))


def unpack(buf: Any, spec: BucketSpec) -> list[tuple[str, Any]]:
    """``[(name, tensor)]`` viewing a received bucket (no copies)."""
    import torch

    out = []
    for name, dtype_name, shape, offset in zip(spec.names, spec.dtype_names, spec.shapes, _offsets(spec.dtype_names, spec.shapes)[0]):
        dtype = getattr(torch, dtype_name)
        numel = 1
        for s in shape:
            numel *= s
        start = HEADER_BYTES + offset
        out.append((name, buf[start : start + numel * torch.empty((), dtype=dtype).element_size()].view(dtype).reshape(shape)))
    return out


def manifest_problem(specs: list[BucketSpec], version: int) -> str:
    """Why an engine must refuse ``specs`` as the manifest of ``version`` ("" when it need not)."""
    for i, spec in enumerate(specs):
        try:
            check_bucket(spec, version, i, len(specs))
        except WeightSyncError as e:
            return str(e)
    return ""


def host_store(host: str, world_size: int, epoch: int, backend: str = "gloo", timeout_s: float = TIMEOUT_S) -> tuple[Any, Rendezvous]:
    """Rank 0: open a new store on a free port of ``host`` (returns at once; the ranks meet in
    ``join``)."""
    from datetime import timedelta

    import torch.distributed as dist

    store = dist.TCPStore(host, 0, world_size, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=JOIN_TIMEOUT_S))
    return store, Rendezvous(host, store.port, world_size, epoch, backend, timeout_s)


def _local_ip(toward: str) -> str:
    """This host's address on the route to ``toward`` (the interface gloo should listen on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((toward, 9))  # UDP: no packet is sent
        return s.getsockname()[0]


def join(rdv: Rendezvous, rank: int, store: Any = None, device: Any = "cpu") -> WeightGroup:
    """Join ``rdv``'s group as ``rank`` (rank 0 passes the store it hosts); blocks until every
    rank has joined."""
    from datetime import timedelta

    import torch.distributed as dist

    timeout = timedelta(seconds=rdv.timeout_s)
    if store is None:
        store = dist.TCPStore(rdv.host, rdv.port, rdv.world_size, is_master=False, timeout=timedelta(seconds=JOIN_TIMEOUT_S))
    prefixed = dist.PrefixStore(f"forge/weights/{rdv.epoch}", store)
    if rdv.backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        pg = dist.ProcessGroupNCCL(prefixed, rank, rdv.world_size, opts)
    else:
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout = timeout
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=rdv.host if rank == 0 else _local_ip(rdv.host))]
        pg = dist.ProcessGroupGloo(prefixed, rank, rdv.world_size, opts)
    return WeightGroup(pg, store, rank, device)


class WeightGroup:
    """One rank of a weight group: ``send`` on rank 0, ``receive`` on the engines. After any
    failure the group is unusable (a rank may be mid-collective) and is ``close``d."""

    def __init__(self, pg: Any, store: Any, rank: int, device: Any):
        self.pg, self.store, self.rank, self.device = pg, store, rank, device

    def agree(self, version: int, specs: list[BucketSpec], problem: str = "") -> None:
        """Every rank proposes (version, bucket count, bytes, layout digest) and its own verdict
        (``problem``: "" to accept); one all-reduce tells every rank whether all proposals match
        and all accept. Otherwise each rank raises ``WeightSyncError``, before any bucket moves."""
        import torch
        import torch.distributed as dist

        mine = [version, len(specs), sum(s.nbytes for s in specs), layout_digest(specs)]
        t = torch.tensor(mine + [-v for v in mine] + [0 if problem else 1], dtype=torch.int64, device=self.device)
        opts = dist.AllreduceOptions()
        opts.reduceOp = dist.ReduceOp.MIN
        self.pg.allreduce([t], opts).wait()
        low, high, ok = t[:4].tolist(), [-v for v in t[4:8].tolist()], int(t[8])
        if problem:
            raise WeightSyncError(f"rank {self.rank} refused v{version}: {problem}")
        if not ok:
            raise WeightSyncError(f"v{version} refused by another rank of the weight group")
        if low != high:
            spans = ", ".join(f"{k} {a}..{b}" for k, a, b in zip(("version", "buckets", "bytes", "layout"), low, high) if a != b)
            raise WeightSyncError(f"the weight group disagrees on v{version}: {spans}")

    def broadcast(self, buf: Any) -> Any:
        """Start broadcasting ``buf`` from rank 0 (every rank passes a buffer of its size);
        returns the work to ``wait()`` on."""
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        return self.pg.broadcast([buf], opts)

    def send(self, version: int, specs: list[BucketSpec], tensors: dict[str, Any], problem: str = "") -> int:
        """Rank 0: agree, then broadcast every bucket of ``specs`` from ``tensors`` (by name),
        packing the next while the last is on the wire. Returns the bytes sent."""
        self.agree(version, specs, problem or manifest_problem(specs, version))
        inflight: deque = deque()
        for spec in specs:
            buf = pack(spec, [tensors[n] for n in spec.names], self.device)
            inflight.append((buf, self.broadcast(buf)))
            if len(inflight) > 1:  # at most two buckets packed at a time
                inflight.popleft()[1].wait()
        while inflight:
            inflight.popleft()[1].wait()
        return sum(s.nbytes for s in specs)

    def receive(self, version: int, specs: list[BucketSpec], load: Callable[[list[tuple[str, Any]]], Any]) -> int:
        """An engine: agree, then receive every bucket and ``load`` its ``(name, tensor)`` pairs,
        the next bucket arriving while this one loads. Returns the bytes received."""
        import torch

        self.agree(version, specs, manifest_problem(specs, version))

        def post(spec: BucketSpec) -> tuple[Any, Any]:
            buf = torch.empty(HEADER_BYTES + spec.nbytes, dtype=torch.uint8, device=self.device)
            return buf, self.broadcast(buf)

        pending = post(specs[0]) if specs else None
        for i, spec in enumerate(specs):
            buf, work = pending
            work.wait()
            pending = post(specs[i + 1]) if i + 1 < len(specs) else None
            header = read_header(buf)
            check_bucket(header, version, i, len(specs))
            if header.nbytes != spec.nbytes:
                raise WeightSyncError(f"weight bucket {i} of v{version}: {header.nbytes} bytes on the wire, {spec.nbytes} expected")
            load(unpack(buf, spec))
        return sum(s.nbytes for s in specs)

    def close(self) -> None:
        if self.pg is not None:
            try:
                self.pg.shutdown()
            except Exception:  # a group a dead peer broke may not shut down cleanly; it is dropped anyway
                pass
        self.pg = self.store = None
