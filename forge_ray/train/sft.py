"""Supervised fine-tuning through Ray Train: ``TorchTrainer`` over the FSDP2 model builder.

Data are expert conversations rendered exactly as RL episodes are (``render_conversation``),
one JSON line each: ``{"tokens": [...], "mask": [...]}``; the loss covers assistant tokens
only. Every rank reads the file and takes its slice of each global batch, so the token-level
normaliser is the whole batch's count. Rank 0 writes the result as a Hugging Face folder.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Iterator

from forge_ray.config import JobConfig

log = logging.getLogger(__name__)


def expert_conversations(source: Any, tasks: list, label: str) -> Iterator[tuple[Any, list[dict]]]:
    """``(task, source.expert(task))`` for each task, with a progress line every 30 s: an expert
    that plays through a sandboxed environment (SWE, exercises) takes seconds."""
    t0 = last = time.monotonic()
    for i, task in enumerate(tasks):
        yield task, source.expert(task)
        now = time.monotonic()
        if now - last >= 30 or (i + 1 == len(tasks) and now - t0 >= 30):
            last = now
            log.info("%s: %d/%d expert conversations (%.1f s each)", label, i + 1, len(tasks), (now - t0) / (i + 1))


def write_expert_data(job: JobConfig, source: Any, tokenizer_path: str, out: Path) -> dict[str, float]:
    """Render ``job.sft.examples`` expert conversations of ``source``'s train split into ``out``."""
    from transformers import AutoTokenizer

    from forge_ray.rollout.agent_loop import render_conversation

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    tasks = source.tasks("train", job.sft.examples, job.env.seed + 10_000)  # a different draw than RL's
    lengths = []
    with open(out, "w") as f:
        for task, expert in expert_conversations(source, tasks, "SFT data"):
            tokens, mask = render_conversation(tokenizer, task, expert)
            lengths.append(len(tokens))
            f.write(json.dumps({"id": task.id, "tokens": tokens, "mask": mask}) + "\n")
    return {"examples": len(tasks), "mean_tokens": sum(lengths) / max(len(lengths), 1), "max_tokens": max(lengths, default=0)}


def _lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 10% of the peak."""
    warm = max(1, total // 20)
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _pad(rows: list[dict]) -> tuple[Any, Any]:
    import torch

    T = max(len(r["tokens"]) for r in rows)
    tokens = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T)
    for i, r in enumerate(rows):
        tokens[i, : len(r["tokens"])] = torch.tensor(r["tokens"])
        mask[i, : len(r["mask"])] = torch.tensor(r["mask"], dtype=torch.float)
    return tokens, mask


def _micro_batches(rows: list[dict], micro_tokens: int) -> list[dict[str, Any]]:
    """This rank's share of a batch as forward/backward passes: all of it padded (``micro_tokens``
    0), or packed rows of at most ``micro_tokens`` tokens each (``learner.packing``; position ids
    restart at every conversation, whose first token is a prompt token: mask 0)."""
    if not rows:
        return []
    tokens, mask = _pad(rows)
    if micro_tokens <= 0:
        return [{"tokens": tokens, "mask": mask}]
    from forge_ray.learner.packing import pack, token_micro_batches

    lengths = [len(r["tokens"]) for r in rows]
    out = []
    for packed_rows in token_micro_batches(lengths, micro_tokens):
        idx = [i for row in packed_rows for i in row]
        local = {i: j for j, i in enumerate(idx)}
        packed, _ = pack({"tokens": tokens[idx], "mask": mask[idx]}, [[local[i] for i in row] for row in packed_rows],
                         [lengths[i] for i in idx])
        out.append(packed)
    return out


def equal_passes(micros: list[dict[str, Any]], device: Any) -> list[dict[str, Any]]:
    """``micros`` padded with empty passes (mask 0: no loss) to the largest count over the ranks:
    FSDP's collectives hang unless every rank runs as many forward/backward passes, and packed
    shares of one batch can need different counts."""
    import torch
    import torch.distributed as dist

    count = torch.tensor([len(micros)], device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    empty = {"tokens": torch.zeros(1, 2, dtype=torch.long), "mask": torch.zeros(1, 2)}
    return micros + [empty] * (int(count.item()) - len(micros))


def sft_loop(cfg: dict) -> None:
    """Ray Train worker loop: epochs of AdamW steps on token-normalised cross-entropy."""
    import ray.train
    import torch
    import torch.distributed as dist

    from forge_ray.learner.chunked import model_token_logprobs
    from forge_ray.learner.fsdp import build_model, full_state_dict, save_hf
    from forge_ray.learner.loss import sft_loss_from_logprobs

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    rows = [json.loads(line) for line in open(cfg["data"])]
    model = build_model(cfg["model"], cfg["dtype"], cfg["device"])
    device = torch.device("cuda", torch.cuda.current_device()) if cfg["device"] == "cuda" else torch.device("cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
    bs = cfg["batch_size"]
    per_epoch = len(rows) // bs
    total = per_epoch * cfg["epochs"]
    rng = random.Random(cfg["seed"])
    step, history = 0, []
    for epoch in range(cfg["epochs"]):
        order = list(range(len(rows)))
        rng.shuffle(order)
        for b in range(per_epoch):
            batch = [rows[i] for i in order[b * bs : (b + 1) * bs]]
            n_tokens = sum(sum(r["mask"]) for r in batch)
            loss = torch.zeros((), device=device)
            for micro in equal_passes(_micro_batches(batch[rank::world], cfg.get("micro_tokens", 0)), device):
                extra = {k: v.to(device) for k, v in micro.items() if k == "position_ids"}
                logp, _ = model_token_logprobs(model, micro["tokens"].to(device), chunk=cfg.get("logprob_chunk", 1024), **extra)
                # Sum over this rank's tokens / the global count, times world: FSDP averages grads.
                part, _ = sft_loss_from_logprobs(logp, micro["mask"].to(device), num_tokens=n_tokens / world)
                part.backward()  # gradients accumulate over the micro-batches
                loss = loss + part.detach()
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, cfg["lr"])
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step % cfg["report_every"] == 0 or step == total:
                global_loss = loss.detach() / world
                dist.all_reduce(global_loss)  # each rank held its share of the batch mean
                gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
                metrics = {"step": step, "epoch": epoch, "loss": float(global_loss), "grad_norm": float(gn), "lr": _lr_at(step - 1, total, cfg["lr"])}
                history.append(metrics)
                if rank == 0:
                    print(f"[sft] step {step}/{total} loss {metrics['loss']:.4f}", flush=True)
                ray.train.report(metrics)
    state = full_state_dict(model)
    if rank == 0:
        out = save_hf(model, state, cfg["out"], cfg["model"])
        (out / "sft_metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))


def run_sft(job: JobConfig, model_path: str, data_path: Path, out_dir: Path, device: str) -> list[dict]:
    """Fine-tune ``model_path`` on ``data_path`` with Ray Train into ``out_dir``; returns the
    metrics rank 0 recorded every ``report_every`` steps."""
    s = job.sft
    cfg = dict(data=str(data_path), model=model_path, out=str(out_dir), dtype=job.model.dtype, device=device,
               lr=s.lr, epochs=s.epochs, batch_size=s.batch_size, seed=s.seed, report_every=10,
               logprob_chunk=job.learner.logprob_chunk, micro_tokens=job.learner.micro_tokens)
    return fit(sft_loop, cfg, "sft", out_dir, s.num_workers, device)


def fit(loop: Any, cfg: dict, name: str, out_dir: Path, num_workers: int, device: str) -> list[dict]:
    """Run ``loop`` on ``num_workers`` Ray Train workers (one CPU each, a GPU each on CUDA); the
    loop's rank 0 writes ``<out_dir>/<name>_metrics.jsonl``, returned as rows."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        loop, train_loop_config=cfg,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=device == "cuda", resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=name, storage_path=str(Path(out_dir).parent.resolve() / "ray_train")),
    )
    with _train_actors_released():
        result = trainer.fit()
    if result.error:
        raise RuntimeError(f"{name} failed: {result.error}")
    history = Path(out_dir) / f"{name}_metrics.jsonl"
    return [json.loads(line) for line in history.read_text().splitlines()]


@contextlib.contextmanager
def _train_actors_released() -> Iterator[None]:
    """Free what Ray Train leaves running after ``fit`` (0.5 GB PSS through the RL phase on the
    quickstart): its SIGINT handler keeps the controller actor's handle, and with it the
    controller and its dataset manager, alive for the driver's life; Ray Data's detached
    autoscaling coordinator stays too (it is made again when next needed)."""
    import signal
    import threading

    import ray

    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGINT, handler)  # drops Ray Train's handler and the controller handle it holds
        try:
            ray.kill(ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator"))
        except ValueError:  # not started by this fit
            pass
