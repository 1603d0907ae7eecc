"""Run a function on N gloo ranks in spawned processes (a plain module: not collected).

    results = run_ranks(fn, args, world=2)   # fn(rank, port, *args, queue) puts (rank, result)

Each rank's ``fn`` joins its process group on ``port`` itself and puts one ``(rank, result)``
on ``queue``; the result must pickle without shared memory (numbers, numpy arrays, lists)."""
from __future__ import annotations

import socket
from typing import Any, Callable


def run_ranks(fn: Callable[..., None], args: tuple, world: int = 2, timeout_s: float = 300) -> dict[int, Any]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=fn, args=(r, port, *args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=timeout_s) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    return results
