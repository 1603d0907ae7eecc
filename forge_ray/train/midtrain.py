"""Mid-training through Ray Train (daVinci-Dev's recipe): continue pre-training a model on
packed "agent-native" documents, one stage of the mixture after the other, before SFT.

Data are the packer's parquet shards (``forge_ray.data.pack``): rows of exactly ``seq_len``
``input_ids`` holding whole documents (``doc_lens``) then padding. A batch's ``position_ids``
restart at 0 for each document and no attention mask is passed, so transformers detects the
packed format and keeps attention inside documents; ``targets`` are already shifted (-100 across
a document boundary and over padding). The loss covers every target token, normalised by the
whole global batch's target count; each rank takes its slice of each global batch (as in SFT).

One LR schedule (``sft._lr_at``) spans the steps of all stages. Every ``checkpoint_every`` steps
and at the end of each stage the loop writes a resumable checkpoint into ``resume_dir`` (only the
newest is kept); a new run over the same ``resume_dir`` continues from the exact next step. The
data order of a stage's epoch depends only on (seed, stage, epoch), so resuming replays nothing.
``resume_dir`` must be reachable by every worker (one machine, or a shared file system).
"""
from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

from forge_ray.train.sft import _lr_at

log = logging.getLogger(__name__)

IGNORE = -100


# ---------------------------------------------------------------------------- data


def shard_files(shards: Iterable[str | Path]) -> list[Path]:
    """Parquet files of ``shards``: a file stays itself, a folder gives its ``*.parquet`` (sorted)."""
    files: list[Path] = []
    for s in shards:
        p = Path(s)
        files.extend(sorted(p.glob("*.parquet")) if p.is_dir() else [p])
    return files


def count_rows(shards: Iterable[str | Path]) -> int:
    """Number of packed rows in ``shards``, from the parquet footers (no data read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in shard_files(shards))


class PackedRows:
    """A stage's packed rows held compactly: ``ids`` (N, seq_len) int32 and each row's doc_lens."""

    def __init__(self, shards: Iterable[str | Path], seq_len: int, max_rows: int | None = None):
        import numpy as np
        import pyarrow.parquet as pq

        ids, doc_lens = [], []
        for f in shard_files(shards):
            table = pq.read_table(f, columns=["input_ids", "doc_lens"])
            flat = table.column("input_ids").combine_chunks().flatten().to_numpy()
            if flat.size != table.num_rows * seq_len:
                raise ValueError(f"{f}: rows are not {seq_len} tokens long")
            ids.append(flat.astype(np.int32).reshape(table.num_rows, seq_len))
            doc_lens.extend(table.column("doc_lens").to_pylist())
        self.ids = np.concatenate(ids) if ids else np.zeros((0, seq_len), np.int32)
        self.doc_lens = doc_lens
        if max_rows is not None:
            self.ids, self.doc_lens = self.ids[:max_rows], self.doc_lens[:max_rows]

    def __len__(self) -> int:
        return len(self.doc_lens)

    def rows(self, indices: Iterable[int]) -> list[dict]:
        return [{"input_ids": self.ids[i].tolist(), "doc_lens": list(self.doc_lens[i])} for i in indices]


def epoch_order(n: int, seed: int, stage: int, epoch: int) -> list[int]:
    """The shuffled row order of one epoch of one stage: a function of its arguments only."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + stage * 10_007 + epoch).shuffle(order)
    return order


def _to_device(batch: dict, device: Any) -> tuple[Any, Any, Any]:
    return tuple(batch[k].to(device) for k in ("input_ids", "position_ids", "targets"))


def packed_nll(model: Any, input_ids: Any, position_ids: Any, targets: Any, chunk: int = 1024) -> Any:
    """Summed next-token NLL over the targets that are not -100 (float32, differentiable); the LM
    head and log-softmax run ``chunk`` positions at a time (0: the full logits at once)."""
    from forge_ray.learner.chunked import model_logprobs

    logp, _ = model_logprobs(model, input_ids, targets, chunk=chunk, position_ids=position_ids)
    return -logp.sum()


# ---------------------------------------------------------------------------- checkpoints


def latest_checkpoint(resume_dir: str | Path) -> Path | None:
    """The newest complete mid-training checkpoint in ``resume_dir``, or None."""
    pointer = Path(resume_dir) / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "rng-0.pt").exists() else None


def _save(model: Any, opt: Any, resume_dir: Path, rank: int, extra: dict) -> Path:
    """A collective: every rank writes its shard, then rank 0 moves ``latest`` and prunes."""
    import torch.distributed as dist

    from forge_ray.learner.fsdp import save_checkpoint

    path = resume_dir / f"midtrain-step-{extra['step']:06d}"
    if rank == 0 and path.exists():
        shutil.rmtree(path)
    dist.barrier()
    path.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, opt, path, rank, extra)
    dist.barrier()
    if rank == 0:
        (resume_dir / "latest.tmp").write_text(path.name)
        (resume_dir / "latest.tmp").replace(resume_dir / "latest")  # a torn checkpoint is never "latest"
        for old in resume_dir.glob("midtrain-step-*"):
            if old != path:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return path


def _restore(model: Any, opt: Any, resume_dir: Path, rank: int, plan: dict) -> dict:
    """Training state to start from: the newest checkpoint's, or a fresh one."""
    from forge_ray.learner.fsdp import load_checkpoint

    fresh = {"step": 0, "stage": 0, "tokens": 0, "history": [], "attempt": 1}
    path = latest_checkpoint(resume_dir)
    if path is None:
        return fresh
    extra = load_checkpoint(model, opt, path, rank)
    if extra["plan"] != plan:
        raise ValueError(f"{path} belongs to another mid-training plan ({extra['plan']} != {plan}); delete {resume_dir}")
    random.setstate(extra.pop("py_rng"))
    if rank == 0:
        print(f"[midtrain] resumed from step {extra['step']} (stage {extra['stage']}) of {path}", flush=True)
    return {**extra, "attempt": extra["attempt"] + 1}


# ---------------------------------------------------------------------------- training


def _train_step(model: Any, opt: Any, rows: list[dict], cfg: dict, lr: float, device: Any) -> tuple[float, float, int]:
    """One AdamW step on this rank's ``rows``; returns (global mean loss, grad norm, global targets)."""
    import torch
    import torch.distributed as dist

    from forge_ray.data.pack import packed_batch

    world = dist.get_world_size()
    batch = packed_batch(rows, cfg["seq_len"])
    ids, pos, tgt = _to_device(batch, device)
    n = (tgt != IGNORE).sum().to(torch.float64)
    dist.all_reduce(n)  # the normaliser is the whole global batch's target count
    scale = world / n.clamp(min=1).float()  # sum / global count, times world: FSDP averages grads
    micro = cfg.get("micro_batch") or len(rows)
    total = torch.zeros((), device=device)
    for i in range(0, len(rows), micro):
        loss = packed_nll(model, ids[i : i + micro], pos[i : i + micro], tgt[i : i + micro], cfg.get("logprob_chunk", 1024)) * scale
        loss.backward()
        total += loss.detach() / world
    for g in opt.param_groups:
        g["lr"] = lr
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    dist.all_reduce(total)
    gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    return float(total), float(gn), int(n)


def _plan(cfg: dict, world: int) -> dict:
    """Steps of each stage (whole global batches per epoch, times epochs), checked up front."""
    bs = cfg["batch_size"]
    if bs % world:
        raise ValueError(f"batch_size {bs} must be a multiple of the {world} workers")
    counts = [count_rows(s["shards"]) for s in cfg["stages"]]
    for s, c in zip(cfg["stages"], counts):
        if c < bs:
            raise ValueError(f"stage {s['name']!r} has {c} packed rows, fewer than batch_size {bs}")
    return {"stages": [s["name"] for s in cfg["stages"]], "rows": counts, "batch_size": bs,
            "epochs": cfg["epochs"], "seed": cfg["seed"], "steps": [c // bs * cfg["epochs"] for c in counts]}


def _device(cfg: dict) -> Any:
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if cfg["device"] == "cuda" else torch.device("cpu")


def midtrain_loop(cfg: dict) -> None:
    """Ray Train worker loop: the stages in order, AdamW on token-normalised cross-entropy."""
    import ray.train
    import torch

    from forge_ray.learner.fsdp import build_model

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    run = {"cfg": cfg, "rank": ctx.get_world_rank(), "world": ctx.get_world_size(), "resume_dir": Path(cfg["resume_dir"])}
    run["plan"] = plan = _plan(cfg, run["world"])
    run["total"] = total = sum(plan["steps"])
    run["model"] = build_model(cfg["model"], cfg["dtype"], cfg["device"])
    run["opt"] = torch.optim.AdamW(run["model"].parameters(), lr=cfg["lr"], weight_decay=0.01)
    run["state"] = state = _restore(run["model"], run["opt"], run["resume_dir"], run["rank"], plan)
    stop, start = min(total, cfg.get("max_steps") or total), 0
    for si, n_steps in enumerate(plan["steps"]):
        if state["step"] < min(start + n_steps, stop):
            _train_stage(run, si, start, start + n_steps, stop)
        start += n_steps
    _finish(run["model"], cfg, state["history"], run["rank"])


def _train_stage(run: dict, si: int, start: int, end: int, stop: int) -> None:
    """Steps ``state["step"]`` .. ``min(end, stop)`` of stage ``si`` (global steps ``start``..``end``),
    reporting every ``report_every`` steps and checkpointing every ``checkpoint_every`` steps,
    at the stage's end and where the run stops."""
    cfg, state, rank, world, bs = run["cfg"], run["state"], run["rank"], run["world"], run["cfg"]["batch_size"]
    stage, device = cfg["stages"][si], _device(cfg)
    data = PackedRows(stage["shards"], cfg["seq_len"])
    per_epoch = len(data) // bs
    busy, last = 0.0, state["step"]  # seconds in training steps (not in reports, checkpoints)
    while state["step"] < min(end, stop):
        epoch, b = divmod(state["step"] - start, per_epoch)
        order = epoch_order(len(data), cfg["seed"], si, epoch)[b * bs : (b + 1) * bs]
        lr, t0 = _lr_at(state["step"], run["total"], cfg["lr"]), time.monotonic()
        loss, gn, n = _train_step(run["model"], run["opt"], data.rows(order[rank::world]), cfg, lr, device)
        busy += time.monotonic() - t0
        state.update(step=state["step"] + 1, stage=si, tokens=state["tokens"] + n)
        step = state["step"]
        if step % cfg["report_every"] == 0 or step in (end, stop):
            secs, busy, last = busy / (step - last), 0.0, step
            _report(state, {"step": step, "stage": stage["name"], "loss": loss, "grad_norm": gn, "lr": lr,
                            "tokens": state["tokens"], "epoch": epoch, "attempt": state["attempt"],
                            "seconds_per_step": secs}, run["total"], rank)
        if step % cfg["checkpoint_every"] == 0 or step in (end, stop):
            extra = {**state, "plan": run["plan"], "py_rng": random.getstate()}
            _save(run["model"], run["opt"], run["resume_dir"], rank, extra)


def _report(state: dict, metrics: dict, total: int, rank: int) -> None:
    import ray.train

    state["history"].append(metrics)
    if rank == 0:
        print(f"[midtrain] step {metrics['step']}/{total} stage {metrics['stage']} loss {metrics['loss']:.4f} "
              f"grad_norm {metrics['grad_norm']:.3f} lr {metrics['lr']:.2e} tokens {metrics['tokens']} "
              f"({metrics['seconds_per_step']:.2f} s/step)", flush=True)
    ray.train.report(metrics)


def _finish(model: Any, cfg: dict, history: list[dict], rank: int) -> None:
    from forge_ray.learner.fsdp import full_state_dict, save_hf

    state = full_state_dict(model)  # a collective
    if rank == 0:
        out = save_hf(model, state, cfg["out"], cfg["model"])
        (out / "midtrain_metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))


def run_midtrain(
    stages: list[dict], model_path: str, out_dir: Path, device: str, *, lr: float, batch_size: int, epochs: int,
    seq_len: int, num_workers: int, seed: int = 0, checkpoint_every: int = 50, dtype: str = "float32",
    report_every: int = 10, micro_batch: int | None = None, max_steps: int | None = None, logprob_chunk: int = 1024,
) -> list[dict]:
    """Mid-train ``model_path`` on ``stages`` (``[{"name", "shards"}]``, in order) with Ray Train
    into the HF folder ``out_dir``; resumes from ``out_dir.parent / "midtrain-resume"`` when it
    holds a checkpoint of the same plan. ``max_steps`` stops early (checkpointed, HF folder
    written) so that a later call continues. ``micro_batch`` caps the sequences of one forward
    (gradients accumulate over a rank's slice); ``logprob_chunk`` bounds the logits' memory
    (``learner.logprob_chunk``). Ray Train takes about one report per 2 s (its
    result queue holds one), so a ``report_every`` shorter than that slows training down.
    Returns every metrics row of the run so far (``attempt`` counts the calls that made them)."""
    from forge_ray.train.sft import fit

    out_dir = Path(out_dir)
    cfg = dict(
        stages=[{"name": s["name"], "shards": [str(p) for p in s["shards"]]} for s in stages],
        model=str(model_path), out=str(out_dir), dtype=dtype, device=device, lr=lr, batch_size=batch_size,
        epochs=epochs, seq_len=seq_len, seed=seed, report_every=report_every, checkpoint_every=checkpoint_every,
        resume_dir=str(out_dir.parent.resolve() / "midtrain-resume"), micro_batch=micro_batch, max_steps=max_steps,
        logprob_chunk=logprob_chunk,
    )
    return fit(midtrain_loop, cfg, "midtrain", out_dir, num_workers, device)


# ---------------------------------------------------------------------------- evaluation


def token_loss(model_path: str, shards_or_rows: list, seq_len: int, device: str = "cpu",
               max_rows: int | None = None, batch_rows: int = 8) -> dict[str, float]:
    """Mean per-token NLL of ``model_path`` over packed rows (parquet paths or row dicts with
    ``input_ids`` and ``doc_lens``), single-process: ``{"loss": ..., "tokens": n}``."""
    import torch

    from forge_ray.data.pack import packed_batch
    from forge_ray.learner.fsdp import build_model

    if shards_or_rows and isinstance(shards_or_rows[0], (str, Path)):
        data = PackedRows(shards_or_rows, seq_len, max_rows)
        rows = data.rows(range(len(data)))
    else:
        rows = list(shards_or_rows)[:max_rows]
    model = build_model(model_path, "float32", device).eval()
    dev = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_rows):
            ids, pos, tgt = _to_device(packed_batch(rows[i : i + batch_rows], seq_len), dev)
            nll += float(packed_nll(model, ids, pos, tgt))
            n += int((tgt != IGNORE).sum())
    return {"loss": nll / n if n else float("nan"), "tokens": n}
