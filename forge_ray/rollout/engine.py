"""VLLMEngine: one vLLM ``AsyncLLM`` serving token ids in and token ids + logprobs out.

A plain class; ``RolloutGroup`` makes it a Ray actor. The engine never sees text: prompts
arrive as ids and the sampled ids come back with the logprob the engine assigned to each,
tagged with the policy version of the weights that produced them. Weight updates go through
vLLM's weight-transfer API and pause the scheduler while they apply, so every engine call is
sampled by exactly one version. The pause either lets in-flight requests finish first (the
default) or, with ``interruptible``, aborts them at once: the call returns the tokens sampled
so far with ``finish_reason == "abort"``, and the agent loop continues the turn under the new
weights (partial rollouts, docs/rl.md).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import Any

from forge_ray.types import Generation, WeightBucket

log = logging.getLogger(__name__)


class VLLMEngine:
    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        max_model_len: int = 1024,
        kv_cache_mb: int = 512,
        gpu_memory_utilization: float = 0.5,
        device: str = "cpu",
        seed: int = 0,
        idle_spin_s: float = 0.02,
        interruptible: bool = False,
    ):
        self.model_path = model_path
        self.idle_spin_s = idle_spin_s if device == "cpu" else None  # quiet_when_idle: CPU only (GPU keeps vLLM's spin)
        self.interruptible = interruptible
        self.version = 0
        self._steady: asyncio.Event | None = None  # set while no weight swap is under way
        self._ids = itertools.count()
        self._kwargs = dict(dtype=dtype, max_model_len=max_model_len, seed=seed)
        if device == "cpu":
            self._kwargs.update(kv_cache_memory_bytes=kv_cache_mb * 2**20, enforce_eager=True)
        else:
            self._kwargs.update(gpu_memory_utilization=gpu_memory_utilization)
        self.llm = None

    async def start(self) -> float:
        """Build the engine (seconds taken). Separate from ``__init__`` so a Ray actor can be
        created fast and started under a timeout."""
        from vllm import AsyncEngineArgs
        from vllm.config import WeightTransferConfig
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest
        from vllm.v1.engine.async_llm import AsyncLLM

        from forge_ray.rollout import weight_sync

        t0 = time.perf_counter()
        weight_sync.register()
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        os.environ["FORGE_RAY_ENGINE"] = "1"  # the engine's processes die with this one (die_with_parent)  # for fingerprint()'s RPC
        if self.idle_spin_s is not None:
            os.environ["FORGE_RAY_ENGINE_IDLE_SPIN_S"] = str(self.idle_spin_s)
        args = AsyncEngineArgs(
            model=self.model_path,
            skip_tokenizer_init=True,  # token-in/token-out: the agent loop owns the tokenizer
            logprobs_mode="processed_logprobs",  # logprobs of the distribution sampled (after temperature)
            weight_transfer_config=WeightTransferConfig(backend=weight_sync.BACKEND),
            **self._kwargs,
        )
        self.llm = AsyncLLM.from_engine_args(args)
        await self.llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info={}))
        return time.perf_counter() - t0

    async def generate(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        stop_token_ids: list[int],
        seed: int | None = None,
        topk: int = 0,
    ) -> Generation:
        """Sample a reply to ``prompt_ids``. ``topk`` > 0 also returns, per sampled token, the
        ``topk`` largest logprobs of its step (descending) in ``Generation.topk`` (test-time
        selection); 0, the default, asks vLLM for the sampled token's logprob only."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            logprobs=topk if topk > 0 else 0,  # 0: the sampled token's own logprob only
            stop_token_ids=stop_token_ids,
            detokenize=False,
            seed=seed,
            output_kind=RequestOutputKind.FINAL_ONLY,  # one output per request, not one per token
        )
        if self.interruptible:  # an aborted request's final-only output holds its last token only
            params.output_kind = RequestOutputKind.DELTA
        await self._wait_steady()
        # Every token of this call is sampled by the weights in place now: a swap either waits
        # for the call to end or aborts it, and calls made during a swap start after it. (A
        # call that reaches vLLM only after a swap has begun runs under the newer weights but
        # reports this version: its staleness is overstated, never understated.)
        version = self.version
        ids: list[int] = []
        steps: list[Any] = []
        finish = None
        async for out in self.llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, request_id=f"r{next(self._ids)}"):
            ids += out.outputs[0].token_ids
            steps += out.outputs[0].logprobs or []
            finish = out.outputs[0].finish_reason
        if topk > 0:  # each step holds the top k and the sampled token: take the sampled one's by id
            logprobs = [d[t].logprob if d and t in d else 0.0 for t, d in zip(ids, steps)]
            top = [sorted((lp.logprob for lp in d.values()), reverse=True)[:topk] if d else [] for d in steps]
        else:
            logprobs = [next(iter(d.values())).logprob if d else 0.0 for d in steps]
            top = []
        return Generation(ids, logprobs, finish or "length", version, top)

    async def _wait_steady(self) -> None:
        if self._steady is None:
            self._steady = asyncio.Event()
            self._steady.set()
        await self._steady.wait()

    async def score_prompt(self, token_ids: list[int], topk: int) -> tuple[list[float], list[list[float]]]:
        """The model's view of a given sequence (vLLM ``prompt_logprobs``, one token sampled and
        dropped): per position i, the logprob of ``token_ids[i]`` given the ids before it, and
        the ``topk`` largest logprobs there (descending). Position 0 has none (0.0, []).
        Prompt logprobs are the raw distribution: no temperature or top-p."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=max(topk, 0), detokenize=False)
        final = None
        async for out in self.llm.generate(TokensPrompt(prompt_token_ids=token_ids), params, request_id=f"p{next(self._ids)}"):
            final = out
        logprobs: list[float] = []
        top: list[list[float]] = []
        for t, d in zip(token_ids, final.prompt_logprobs or [None] * len(token_ids)):
            logprobs.append(d[t].logprob if d and t in d else 0.0)
            top.append(sorted((lp.logprob for lp in d.values()), reverse=True)[:topk] if d and topk > 0 else [])
        return logprobs, top

    async def update_weights(self, version: int, bucket_refs: list[Any]) -> dict[str, float]:
        """Host path: load ``version``'s buckets (ObjectRefs of ``WeightBucket``) and switch to
        it. Each bucket must carry this version, its position and the bucket count, else
        ``WeightSyncError``: the engine keeps its version number, and its weights are those of
        the buckets it loaded over the old ones (the next complete version replaces them all)."""
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        from forge_ray.rollout.weight_sync import check_bucket

        async def load() -> int:
            nbytes = 0
            for i, ref in enumerate(bucket_refs):
                try:
                    bucket: WeightBucket = await ref
                    check_bucket(bucket, version, i, len(bucket_refs))  # before any of it is loaded
                except Exception:  # refused, or the bucket is lost: close the session, untouched layers keep their weights
                    await self.llm.finish_weight_update()
                    raise
                nbytes += bucket.nbytes
                await self.llm.update_weights(WeightTransferUpdateRequest(update_info=bucket.payload))
            return nbytes

        return await self._swap(version, load)

    async def join_weight_group(self, rendezvous: Any, rank: int) -> None:
        """Collective path: join learner rank 0's weight group (a ``collective.Rendezvous``) as
        ``rank``, leaving the group this engine was in. Blocks until every rank has joined."""
        from dataclasses import asdict

        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        await self.llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info={**asdict(rendezvous), "rank": rank}))

    async def receive_weights(self, version: int, manifest: list[Any]) -> dict[str, float]:
        """Collective path: receive ``version`` as learner rank 0 broadcasts it, bucket by bucket
        as ``manifest`` (``collective.BucketSpec``) describes, and switch to it. A refusal or a
        broken transfer raises ``WeightSyncError``; the engine keeps its version number and
        leaves the group (the driver forms a new one)."""
        from dataclasses import asdict

        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        from forge_ray.rollout.weight_sync import WeightSyncError

        async def load() -> int:
            info = {"version": version, "buckets": [asdict(spec) for spec in manifest]}
            try:
                await self.llm.update_weights(WeightTransferUpdateRequest(update_info=info))
            except Exception as e:  # vLLM's RPC hands worker errors back as plain exceptions
                raise WeightSyncError(str(e)) from None
            return sum(spec.nbytes for spec in manifest)

        return await self._swap(version, load)

    async def _swap(self, version: int, load: Any) -> dict[str, float]:
        """Pause (in-flight requests finish first, or are aborted when ``interruptible``),
        ``await load()`` inside a weight-update session, switch to ``version``, resume. New
        calls wait meanwhile. Timings and the bytes ``load`` reports."""
        t0 = time.perf_counter()
        await self._wait_steady()
        self._steady.clear()
        try:
            await self.llm.pause_generation(mode="abort" if self.interruptible else "wait", clear_cache=True)
            paused = time.perf_counter()
            try:
                await self.llm.start_weight_update()
                nbytes = await load()
                await self.llm.finish_weight_update(str(version))
                self.version = version
            finally:
                await self.llm.resume_generation()
        finally:
            self._steady.set()
        done = time.perf_counter()
        return {"sync_seconds": done - t0, "drain_seconds": paused - t0, "sync_bytes": float(nbytes)}

    async def fingerprint(self, probe_seed: int = 0) -> dict[str, Any]:
        """Per-tensor fingerprints of the served weights (see ``weight_sync.fingerprint``)."""
        from forge_ray.rollout.weight_sync import engine_fingerprint

        (result,) = await self.llm.collective_rpc(engine_fingerprint, args=(probe_seed,))
        return result

    def shutdown(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None


def engine_process_setup() -> None:
    """vLLM general-plugin hook, run in every process vLLM starts (the engine core and its
    workers); it acts only in those of a forge_ray engine (``FORGE_RAY_ENGINE``)."""
    die_with_parent()
    quiet_when_idle()


def quiet_when_idle() -> None:
    """Cap how long vLLM's shared-memory readers busy-wait after their last message
    (``FORGE_RAY_ENGINE_IDLE_SPIN_S``, set by a CPU engine). vLLM's worker spins on its input
    queue for 1 s after each read; on a small CPU box that second, after every generation
    phase, is taken from the learner ranks sharing the cores. During generation messages come
    every few milliseconds, so the worker keeps spinning between steps as before."""
    limit = os.environ.get("FORGE_RAY_ENGINE_IDLE_SPIN_S")
    if os.environ.get("FORGE_RAY_ENGINE") != "1" or not limit:
        return
    try:
        from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
    except ImportError:  # another vLLM: nothing to cap
        return
    if getattr(SpinCondition, "forge_spin_cap", None) is not None:
        return
    cap, original = float(limit), SpinCondition.wait

    def wait(self: Any, timeout_ms: int | None = None) -> None:
        if self.is_reader and self.busy_loop_s > cap:
            self.busy_loop_s = cap
        return original(self, timeout_ms)

    SpinCondition.wait, SpinCondition.forge_spin_cap = wait, cap


def die_with_parent() -> None:
    """Have the kernel SIGKILL this engine process when its parent dies.
    A Ray actor killed with SIGKILL gets no chance to stop its engine; without this the engine
    processes would outlive it, holding their memory, until the node is rebooted."""
    import multiprocessing
    import sys

    if os.environ.get("FORGE_RAY_ENGINE") != "1" or multiprocessing.parent_process() is None or not sys.platform.startswith("linux"):
        return  # not an engine subprocess of ours (the actor itself is Ray's to manage)
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)
