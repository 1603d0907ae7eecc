"""FSDPWorker: one rank of the RL learner (a plain class; ``LearnerGroup`` makes it remote).

``train_step`` fetches its shard of trajectories from the object store, recomputes token
logprobs under the current weights and takes AdamW steps on Klear's revised GRPO loss: one per
batch by default, or PPO-style ``learner.epochs`` passes of ``learner.mini_batches`` steps each
against the logprobs of the policy before the update (``old_logp``).
``export_weights`` gathers the full weights and puts them into the object store in buckets
for the engines (the host weight sync); ``stage_weights`` gathers them onto rank 0, which
``send_weights`` broadcasts straight into the engines (the collective one).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from forge_ray.config import LearnerConfig

log = logging.getLogger(__name__)


def pad_batch(trajs: list[Any], advantages: list[Any], old_logp: list[Any] | None = None) -> dict[str, Any]:
    """Right-pad trajectories into tensors: tokens, loss mask, engine logprobs, token
    advantages, and with ``old_logp`` (one 1-D tensor per trajectory) the pre-update trainer
    logprobs. Shapes: tokens/mask/infer_logp/advantages/old_logp (B, T).

    An advantage is a float or an ``Advantage``: its value on every token plus its per-turn
    bonus on that turn's tokens (``advantage.turn_credit``).
    """
    import torch

    from forge_ray.learner.advantage import turn_credit
    from forge_ray.types import Advantage

    T = max(len(t.tokens) for t in trajs)
    B = len(trajs)
    advs = [a if isinstance(a, Advantage) else Advantage(float(a)) for a in advantages]
    K = max((len(a.per_turn) for a in advs), default=0)
    tokens = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T)
    infer = torch.zeros(B, T)
    turn_index = torch.full((B, T), -1, dtype=torch.long)
    bonus = torch.zeros(B, K)
    for i, (t, a) in enumerate(zip(trajs, advs)):
        n = len(t.tokens)
        tokens[i, :n] = torch.tensor(t.tokens)
        mask[i, :n] = torch.tensor(t.loss_mask, dtype=torch.float)
        infer[i, :n] = torch.tensor(t.logprobs)
        for k, turn in enumerate(t.turns[: len(a.per_turn)]):
            turn_index[i, turn.start : turn.end] = k
        bonus[i, : len(a.per_turn)] = torch.tensor(a.per_turn)
    adv = turn_credit(torch.tensor([a.value for a in advs]), turn_index, bonus, 1.0)
    out = {"tokens": tokens, "mask": mask, "infer_logp": infer, "advantages": adv}
    if old_logp is not None:
        out["old_logp"] = torch.zeros(B, T)
        for i, lp in enumerate(old_logp):
            out["old_logp"][i, : len(lp)] = lp
    return out


def threads(cfg: LearnerConfig) -> int:
    """Torch threads per rank: ``learner.threads``, or (0) this machine's cores shared among the
    ranks (1 each when there are as many ranks as cores)."""
    import os

    return cfg.threads if cfg.threads > 0 else max(1, (os.cpu_count() or 1) // max(cfg.num_workers, 1))


@dataclass
class Micro:
    """One forward/backward's trajectories (``index``: their places in the rank's batch), with
    their advantages, pre-update logprobs (PPO) and, when packed, their rows (``packing``)."""

    trajs: list[Any]
    advs: list[Any]
    old: list[Any] | None
    index: list[int]
    rows: list[list[int]] | None = None


def _chunks(trajs: list[Any], advs: list[Any], old: list[Any] | None, size: int, micro_tokens: int = 0) -> list[Micro]:
    """Micro-batches: ``size`` trajectories each, padded; or with ``micro_tokens`` > 0 packed
    rows of at most that many tokens each (``packing.token_micro_batches``)."""
    def take(idx: list[int], rows: list[list[int]] | None = None) -> Micro:
        return Micro([trajs[i] for i in idx], [advs[i] for i in idx], None if old is None else [old[i] for i in idx], idx, rows)

    if micro_tokens <= 0:
        return [take(list(range(i, min(i + size, len(trajs))))) for i in range(0, len(trajs), size)]
    from forge_ray.learner.packing import token_micro_batches

    out = []
    for rows in token_micro_batches([len(t.tokens) for t in trajs], micro_tokens):
        idx = [i for row in rows for i in row]
        local = {i: j for j, i in enumerate(idx)}
        out.append(take(idx, [[local[i] for i in row] for row in rows]))
    return out


class FSDPWorker:
    def __init__(self, rank: int, world_size: int, cfg: LearnerConfig, model_path: str, dtype: str, device: str, temperature: float = 1.0):
        import torch

        torch.set_num_threads(threads(cfg))
        self.rank, self.world_size = rank, world_size
        self.cfg, self.model_path, self.dtype, self.device = cfg, model_path, dtype, device
        self.model = self.optimizer = None
        self.step = 0
        self._staged: tuple | None = None  # rank 0, collective sync: (version, manifest, tensors by name)
        self._weight_group = self._weight_store = None  # rank 0, collective sync: collective.WeightGroup, its TCPStore
        self.lr_scale = 1.0  # lowered by the collapse guard's rollback
        self.temperature = temperature  # rollouts' sampling temperature: logprobs must match the engine's

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port, for rank 0's rendezvous."""
        import socket

        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def setup(self, master_addr: str, master_port: int) -> None:
        import torch

        from forge_ray.learner.fsdp import build_model, init_distributed

        init_distributed(self.rank, self.world_size, master_addr, master_port, self.device)
        self.model = build_model(self.model_path, self.dtype, self.device)  # train mode; activation checkpointing on CUDA
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, betas=(0.9, 0.999))

    def _lr(self) -> float:
        warm = self.cfg.warmup_steps
        lr = self.cfg.lr * self.lr_scale
        return lr * min(1.0, (self.step + 1) / warm) if warm else lr

    def set_lr_scale(self, scale: float) -> float:
        """Train at ``scale`` x the configured learning rate from the next step on."""
        self.lr_scale = scale
        return self._lr()

    def train_step(self, items: list[tuple[list[Any], float]], num_tokens: float) -> dict[str, float]:
        """Update on ``items`` = [([ObjectRef of Trajectory], advantage)]: one optimizer step, or
        ``epochs`` x ``mini_batches`` PPO steps. ``num_tokens`` is the loss-token count of the
        whole batch over all ranks. Metrics are averaged over the steps; ``ppo_steps`` counts them."""
        import ray
        import torch
        import torch.distributed as dist

        from ray.exceptions import ObjectLostError

        from forge_ray.buffer import TrajectoriesLost

        t0 = time.perf_counter()
        lost = ""
        try:
            trajs = ray.get([box[0] for box, _ in items]) if items else []
        except ObjectLostError as e:  # agreed on below, so no rank is left alone in a collective
            trajs, lost = [], type(e).__name__
        fetched = time.perf_counter() - t0
        advs = [a for _, a in items]
        chunks = _chunks(trajs, advs, None, self.cfg.micro_batch, self.cfg.micro_tokens)
        # Every rank must run the same number of forward/backward passes (FSDP collectives).
        agreed = torch.tensor([len(chunks), int(bool(lost))])
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
        if agreed[1]:
            raise TrajectoriesLost(f"rank {self.rank}: {lost or 'another rank'} lost trajectories of this batch; no update made")
        sums: dict[str, float] = {}
        if self.cfg.epochs == 1 and self.cfg.mini_batches == 1:
            # One update per batch: pi_old is the current policy (ratio 1, gradient intact), so
            # it needs no pass of its own; the engine's logprobs enter only through TIS.
            self._accumulate(chunks, int(agreed[0]), num_tokens, sums)
            norms = [self._optimizer_step()]
        else:
            norms = self._ppo_steps(trajs, advs, chunks, int(agreed[0]), sums)
        self.step += 1
        computed = sums.pop("positions", 0.0)
        pad_frac = 1.0 - sums.pop("real_positions", 0.0) / computed if computed else 0.0
        toks = sums.pop("tokens", 0.0)  # summed over every step: each epoch counts each token once
        # Per-token means on this rank over all steps; LearnerGroup merges ranks (token-weighted,
        # and the mean of ``loss``, which each rank holds as W * its share of the global loss).
        metrics = {k: v / max(toks, 1.0) for k, v in sums.items() if k != "loss_sum"}
        metrics.update(loss=sums.get("loss_sum", 0.0) / len(norms), grad_norm=sum(norms) / len(norms), lr=self._lr(),
                       tokens=toks / self.cfg.epochs, seconds=time.perf_counter() - t0, sequences=float(len(trajs)),
                       ppo_steps=float(len(norms)), fetch_seconds=fetched, pad_frac=pad_frac)
        return metrics

    def _ppo_steps(self, trajs: list[Any], advs: list[Any], chunks: list[Micro], n: int, sums: dict[str, float]) -> list[float]:
        """PPO updates: ``old_logp`` of every trajectory under the policy before any step, then
        ``epochs`` passes over the batch in mini-batches of whole groups, one optimizer step
        each, normalised by the mini-batch's own loss tokens over all ranks. Returns grad norms."""
        import torch.distributed as dist

        from forge_ray.learner.minibatch import schedule

        gathered: list[Any] = [None] * self.world_size  # every rank's (group id, loss tokens) per item
        dist.all_gather_object(gathered, [(t.group_id, t.num_sampled) for t in trajs])
        old = self._old_logprobs(chunks, n)
        mb, norms = self.cfg.micro_batch, []
        for part in schedule(gathered, self.rank, self.cfg.mini_batches, self.cfg.epochs, self.step, mb):
            sub = _chunks([trajs[i] for i in part.items], [advs[i] for i in part.items], [old[i] for i in part.items], mb,
                          self.cfg.micro_tokens)
            self._accumulate(sub, self._agree(len(sub)) if self.cfg.micro_tokens > 0 else part.micro_steps, part.tokens, sums)
            norms.append(self._optimizer_step())
        return norms

    def _old_logprobs(self, chunks: list[Micro], n: int) -> list[Any]:
        """Token logprobs of every trajectory under the current weights, without gradient, one
        CPU tensor per trajectory in batch order (``n`` passes, the same on every rank)."""
        import torch

        from forge_ray.learner.packing import unpack

        out: list[Any] = [None] * sum(len(c.trajs) for c in chunks)
        with torch.no_grad():
            for i in range(n):
                batch = chunks[i] if i < len(chunks) else None
                data = self._device_batch(batch)
                logp, _ = self._forward(data)
                if batch is None:
                    continue
                if batch.rows is not None:
                    rows = unpack(logp.cpu(), data["slots"], len(batch.trajs))
                else:
                    rows = [logp[j, : len(t.tokens)].cpu() for j, t in enumerate(batch.trajs)]
                for j, lp in zip(batch.index, rows):
                    out[j] = lp
        return out

    def _agree(self, n: int) -> int:
        """The largest ``n`` over the ranks (every rank runs as many passes: FSDP collectives)."""
        import torch
        import torch.distributed as dist

        t = torch.tensor([n])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t[0])

    def _accumulate(self, chunks: list[Micro], n: int, num_tokens: float, sums: dict[str, float]) -> None:
        """``n`` forward/backward passes over ``chunks``; a rank with fewer chunks still joins
        the collectives with empty ones."""
        for i in range(n):
            self._micro_step(chunks[i] if i < len(chunks) else None, num_tokens, sums)

    def _optimizer_step(self) -> float:
        """Set the learning rate, clip the global gradient norm, step, clear; returns the norm."""
        import torch

        for g in self.optimizer.param_groups:
            g["lr"] = self._lr()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def _device_batch(self, batch: Micro | None) -> dict[str, Any]:
        """The micro-batch's tensors on the device: padded (B, T), or packed rows with
        ``position_ids`` (and ``slots``, where each trajectory sits)."""
        import torch

        from forge_ray.learner.packing import pack

        dev = "cuda" if self.device == "cuda" else "cpu"
        if batch is None:  # a rank with less data still joins the collectives, with zero loss
            data = {"tokens": torch.zeros(1, 2, dtype=torch.long), "mask": torch.zeros(1, 2), "infer_logp": torch.zeros(1, 2), "advantages": torch.zeros(1, 2)}
            return {k: v.to(dev) for k, v in data.items()}
        data = pad_batch(batch.trajs, batch.advs, batch.old)
        where = None
        if batch.rows is not None:
            data, where = pack(data, batch.rows, [len(t.tokens) for t in batch.trajs])
        return {**{k: v.to(dev) for k, v in data.items()}, "slots": where, "real_positions": sum(len(t.tokens) for t in batch.trajs)}

    def _forward(self, data: dict[str, Any], entropy: bool = False) -> tuple[Any, Any]:
        """(logp, entropy or None), both (B, T): the logits are ``float() / temperature`` as the
        engine's, taken ``cfg.logprob_chunk`` positions at a time (the entropy is detached), only
        for the sampled tokens (loss mask 1; the others are 0); packed rows attend within each
        trajectory (``position_ids``)."""
        from forge_ray.learner.chunked import model_token_logprobs

        extra = {"position_ids": data["position_ids"]} if "position_ids" in data else {}
        return model_token_logprobs(self.model, data["tokens"], temperature=self.temperature, chunk=self.cfg.logprob_chunk,
                                    entropy=entropy, score=data["mask"] > 0, **extra)

    def _micro_step(self, batch: Micro | None, num_tokens: float, sums: dict[str, float]) -> None:
        import torch

        from forge_ray.learner.loss import grpo_loss

        data = self._device_batch(batch)
        logp, entropy = self._forward(data, entropy=True)
        # pi_old: the pre-update logprobs when the batch has them (PPO steps), else the current
        # policy (a single update: ratio 1). The engine's logprobs enter only through TIS.
        old = data.get("old_logp", logp.detach())
        loss, m = grpo_loss(
            logp, old, data["infer_logp"], data["advantages"], data["mask"],
            eps_low=self.cfg.eps_low, eps_high=self.cfg.eps_high, tis_cap=self.cfg.tis_cap,
            num_tokens=num_tokens / self.world_size,  # FSDP averages gradients over ranks
        )
        loss.backward()
        k = float(data["mask"].sum())
        with torch.no_grad():
            ent = (entropy * data["mask"]).sum().item()
            mismatch = ((old - data["infer_logp"]).abs() * data["mask"]).sum().item()  # trainer before the update vs engine
        for name in ("clip_frac", "ratio_mean", "tis_mean", "tis_clip_frac", "approx_kl"):
            sums[name] = sums.get(name, 0.0) + m[name] * k
        sums["loss_sum"] = sums.get("loss_sum", 0.0) + float(loss.detach())  # already divided by num_tokens / W
        sums["entropy"] = sums.get("entropy", 0.0) + ent
        sums["logp_mismatch"] = sums.get("logp_mismatch", 0.0) + mismatch
        sums["tokens"] = sums.get("tokens", 0.0) + k
        if batch is not None:  # the padding the micro-batch computed (learner.micro_tokens packs it away)
            sums["positions"] = sums.get("positions", 0.0) + data["tokens"].numel()
            sums["real_positions"] = sums.get("real_positions", 0.0) + data["real_positions"]

    def export_weights(self, version: int, bucket_mb: int) -> list[Any]:
        """Gather the weights and put them into the object store in buckets (rank 0 returns
        the refs; the other ranks only join the gather)."""
        import ray

        from forge_ray.learner.fsdp import full_state_dict, weights_for_sync
        from forge_ray.rollout.weight_sync import bucketize, pack_tensors
        from forge_ray.types import WeightBucket

        state = full_state_dict(self.model)
        if self.rank != 0:
            return []
        buckets = bucketize(weights_for_sync(self.model, state), bucket_mb * 2**20)
        refs = []
        for i, bucket in enumerate(buckets):
            payload = pack_tensors([n for n, _ in bucket], [t for _, t in bucket])
            refs.append(ray.put(WeightBucket(version, i, len(buckets), payload, len(payload["data"]))))
        return refs

    # Collective weight sync (rollout.weight_sync: collective; forge_ray/rollout/collective.py).
    # Rank 0 alone is in the weight group; the other ranks only join the gather in stage_weights.

    def stage_weights(self, version: int, bucket_mb: int) -> list[Any]:
        """Gather the weights and keep them on rank 0 as ``version``, to broadcast with
        ``send_weights``; rank 0 returns the manifest (``BucketSpec`` per bucket), the others
        only join the gather. The staged copy stays until the next version replaces it: it is
        what a replacement engine loads (``export_staged``)."""
        from forge_ray.learner.fsdp import full_state_dict, weights_for_sync
        from forge_ray.rollout.collective import plan

        state = full_state_dict(self.model)
        if self.rank != 0:
            return []
        named = weights_for_sync(self.model, state)
        specs = plan(named, version, bucket_mb * 2**20)
        self._staged = (version, specs, dict(named))
        return specs

    def open_weight_group(self, world_size: int, epoch: int) -> Any:
        """Rank 0: leave the current weight group and host a new one's rendezvous on this node
        (a ``collective.Rendezvous`` for the engines)."""
        import ray

        from forge_ray.rollout.collective import host_store

        self.close_weight_group()
        backend = "nccl" if self.device == "cuda" else "gloo"
        self._weight_store, rdv = host_store(ray.util.get_node_ip_address(), world_size, epoch, backend)
        return rdv

    def join_weight_group(self, rdv: Any) -> None:
        """Rank 0: join the group opened by ``open_weight_group`` (with every engine at once)."""
        import torch

        from forge_ray.rollout.collective import join

        device = torch.device("cuda", torch.cuda.current_device()) if rdv.backend == "nccl" else "cpu"
        self._weight_group = join(rdv, 0, store=self._weight_store, device=device)

    def send_weights(self, version: int) -> dict[str, float]:
        """Rank 0: broadcast the staged weights as ``version`` to the weight group. Always takes
        part in the group's agreement, refusing when it has no such version staged, so engines
        never wait for a sender that will not send; any failure leaves the group."""
        from forge_ray.rollout.weight_sync import WeightSyncError

        group = self._weight_group
        if group is None:
            raise WeightSyncError(f"v{version}: learner rank 0 is in no weight group")
        staged_version, specs, named = self._staged or (None, [], {})
        problem = "" if staged_version == version else f"learner has v{staged_version} staged"
        t0 = time.perf_counter()
        try:
            nbytes = group.send(version, specs, named, problem)
        except BaseException:
            self.close_weight_group()
            raise
        return {"send_seconds": time.perf_counter() - t0, "sync_bytes": float(nbytes)}

    def export_staged(self) -> tuple[int, list[Any]]:
        """Rank 0: the staged version for the host path, ``(version, bucket refs)``: how an
        engine outside the weight group (a replacement, or one whose broadcast failed) loads it."""
        import ray

        from forge_ray.rollout.weight_sync import WeightSyncError, pack_tensors
        from forge_ray.types import WeightBucket

        if self._staged is None:
            raise WeightSyncError("learner rank 0 has no weights staged (none since it started)")
        version, specs, named = self._staged
        refs = []
        for spec in specs:
            payload = pack_tensors(spec.names, [named[n] for n in spec.names])
            refs.append(ray.put(WeightBucket(version, spec.index, spec.count, payload, len(payload["data"]))))
        return version, refs

    def close_weight_group(self) -> None:
        if self._weight_group is not None:
            self._weight_group.close()
        self._weight_group = self._weight_store = None

    def state_for_check(self) -> dict[str, Any]:
        """The full weights (rank 0) for tests that compare them with an engine's."""
        from forge_ray.learner.fsdp import full_state_dict, weights_for_sync

        state = full_state_dict(self.model)
        return dict(weights_for_sync(self.model, state)) if self.rank == 0 else {}

    def save_hf(self, out_dir: str) -> str | None:
        from forge_ray.learner.fsdp import full_state_dict, save_hf

        state = full_state_dict(self.model)
        return str(save_hf(self.model, state, out_dir, self.model_path)) if self.rank == 0 else None

    def save_checkpoint(self, path: str) -> None:
        from forge_ray.learner.fsdp import save_checkpoint

        save_checkpoint(self.model, self.optimizer, path, self.rank, {"step": self.step})

    def load_checkpoint(self, path: str) -> int:
        from forge_ray.learner.fsdp import load_checkpoint

        self.step = load_checkpoint(self.model, self.optimizer, path, self.rank)["step"]
        return self.step

    def shutdown(self) -> None:
        import torch.distributed as dist

        self.close_weight_group()
        if dist.is_initialized():
            dist.destroy_process_group()
