"""LearnerGroup: K ``FSDPWorker`` ranks in one placement group, driven as one learner."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from forge_ray.config import LearnerConfig


def shard_balanced(items: list[tuple[Any, float, int]], k: int) -> list[list[tuple[Any, float]]]:
    """Split ``(ref_box, advantage, num_tokens)`` items over ``k`` ranks, longest first onto
    the lightest rank, so ranks finish together. Returns ``[(ref_box, advantage)]`` per rank."""
    shards: list[list[tuple[Any, float]]] = [[] for _ in range(k)]
    loads = [0] * k
    for box, adv, n in sorted(items, key=lambda x: -x[2]):
        i = loads.index(min(loads))
        shards[i].append((box, adv))
        loads[i] += n
    return shards


def merge_metrics(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """Combine rank metrics: token-weighted means, summed counts, mean loss, slowest time."""
    total = sum(m["tokens"] for m in per_rank) or 1.0
    out = {}
    for key in per_rank[0]:
        values = [m[key] for m in per_rank]
        if key in ("tokens", "sequences"):
            out[key] = sum(values)
        elif key in ("seconds", "fetch_seconds"):
            out[key] = max(values)
        elif key in ("loss", "grad_norm", "lr", "ppo_steps"):  # the same on every rank, or a share of a global figure
            out[key] = sum(values) / len(values)
        else:
            out[key] = sum(m[key] * m["tokens"] for m in per_rank) / total
    return out


class LearnerGroup:
    def __init__(self, cfg: LearnerConfig, model_path: str, dtype: str, device: str, resources: dict[str, float], temperature: float = 1.0):
        from forge_ray.cluster.actors import spawn_group
        from forge_ray.learner.worker import FSDPWorker

        self.cfg = cfg
        k = cfg.num_workers
        self.handle = spawn_group(FSDPWorker, "learner", k, resources, lambda rank: ((rank, k, cfg, model_path, dtype, device, temperature), {}))
        self.workers = self.handle.actors
        self.restarts = 0
        self.lr_scale = 1.0

    async def setup(self) -> None:
        addr, port = await self.workers[0].address.remote()
        await asyncio.gather(*(w.setup.remote(addr, port) for w in self.workers))
        if self.lr_scale != 1.0:  # replaced ranks keep the rolled-back learning rate
            await self.set_lr_scale(self.lr_scale)

    async def set_lr_scale(self, scale: float) -> float:
        """Train at ``scale`` x ``learner.lr`` from the next step on; returns the new rate."""
        self.lr_scale = scale
        rates = await asyncio.gather(*(w.set_lr_scale.remote(scale) for w in self.workers))
        return rates[0]

    async def train_step(self, items: list[tuple[Any, float, int]]) -> dict[str, float]:
        """One update on ``(ref_box, advantage, loss_tokens)`` items."""
        num_tokens = float(sum(n for _, _, n in items))
        shards = shard_balanced(items, len(self.workers))
        per_rank = await asyncio.gather(*(w.train_step.remote(s, num_tokens) for w, s in zip(self.workers, shards)))
        return merge_metrics(list(per_rank))

    async def export_weights(self, version: int, bucket_mb: int) -> list[Any]:
        parts = await asyncio.gather(*(w.export_weights.remote(version, bucket_mb) for w in self.workers))
        return parts[0]

    # The collective weight sync (rollout.weight_sync: collective): every rank gathers, rank 0
    # stages the weights and alone takes part in the weight group (RolloutGroup.broadcast_weights).

    async def stage_weights(self, version: int, bucket_mb: int) -> list[Any]:
        """Gather the weights onto rank 0 as ``version``; returns its manifest (``BucketSpec``s)."""
        parts = await asyncio.gather(*(w.stage_weights.remote(version, bucket_mb) for w in self.workers))
        return parts[0]

    @property
    def sender(self) -> Any:
        """Rank 0's actor: the learner's member of the weight group."""
        return self.workers[0]

    async def open_weight_group(self, world_size: int, epoch: int) -> Any:
        return await self.sender.open_weight_group.remote(world_size, epoch)

    async def join_weight_group(self, rdv: Any) -> None:
        await self.sender.join_weight_group.remote(rdv)

    async def send_weights(self, version: int) -> dict[str, float]:
        return await self.sender.send_weights.remote(version)

    async def export_staged(self) -> tuple[int, list[Any]]:
        return await self.sender.export_staged.remote()

    async def state_for_check(self) -> dict[str, Any]:
        parts = await asyncio.gather(*(w.state_for_check.remote() for w in self.workers))
        return parts[0]

    async def save_hf(self, out_dir: str) -> str:
        parts = await asyncio.gather(*(w.save_hf.remote(out_dir) for w in self.workers))
        return parts[0]

    async def recover(self, checkpoint: str | None) -> None:
        """Replace every rank (an FSDP group cannot go on without one of its ranks), rendezvous
        again and load ``checkpoint`` (None: the starting weights, optimizer state lost)."""
        for rank in range(len(self.workers)):
            self.handle.respawn(rank)
        self.workers = self.handle.actors
        await self.setup()
        if checkpoint:
            await self.load_checkpoint(checkpoint)
        self.restarts += 1

    async def save_checkpoint(self, path: str) -> None:
        await asyncio.gather(*(w.save_checkpoint.remote(path) for w in self.workers))

    async def load_checkpoint(self, path: str) -> int:
        steps = await asyncio.gather(*(w.load_checkpoint.remote(path) for w in self.workers))
        return steps[0]

    def shutdown(self) -> None:
        import ray

        try:
            ray.get([w.shutdown.remote() for w in self.workers], timeout=60)
        except Exception as e:  # a dead rank has no process group left to destroy
            logging.getLogger(__name__).warning("learner shutdown: %s", e)
        self.handle.shutdown()
