"""RL checkpoints: everything a killed run needs to continue as if it had not stopped.

    <run>/checkpoints/rl-step-000020/
        learner/          FSDP2 distributed checkpoint (model and optimizer shards, torch DCP)
        rng-<rank>.pt     each learner rank's step counter (the LR schedule) and RNG states
        buffer.pkl        complete groups the learner had not taken yet (trajectories, not refs)
        driver.json       step, policy version, the prompt ledger and cursor, timers, the SFT eval
    <run>/checkpoints/latest   name of the newest complete checkpoint, written last

A checkpoint is taken between learner steps. Prompts that were still generating at that moment
are neither in the buffer nor consumed: on resume they are re-queued, so across the killed run
and its continuation every prompt is consumed exactly once.
"""
from __future__ import annotations

import json
import logging
import pickle
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


@dataclass
class DriverState:
    """The driver's side of a checkpoint (JSON)."""

    step: int = 0
    version: int = 0
    ledger: dict[str, Any] = field(default_factory=dict)  # PromptPool.state(): the prompt ledger and cursor
    trajectories: int = 0
    learner_busy: float = 0.0
    rollout_busy: float = 0.0
    wall: float = 0.0  # RL seconds spent before this checkpoint
    sync_seconds: list[float] = field(default_factory=list)
    before: dict[str, Any] = field(default_factory=dict)  # evaluation of the starting policy
    guard: dict[str, Any] = field(default_factory=dict)  # CollapseGuard.state_dict()
    lr_scale: float = 1.0  # learning-rate factor left by the guard's rollbacks


@dataclass
class Restored:
    state: DriverState
    groups: list[tuple[str, list[Any]]]  # (task id, trajectories) of each buffered group
    path: Path


def latest(run_dir: str | Path) -> Path | None:
    """The newest complete RL checkpoint of a run, or None."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "driver.json").exists() else None


async def save(run_dir: Path, step: int, driver_state: Callable[[], DriverState], learner: Any, buffer: Any, keep: int) -> Path:
    """Write a checkpoint of the learner, the buffer's complete groups and the driver's state.
    ``driver_state`` is called after the buffer's snapshot, so every buffered group is
    outstanding in its ledger (prompts issued in between are re-queued on resume)."""
    root = Path(run_dir) / "checkpoints"
    path = root / f"rl-step-{step:06d}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    await learner.save_checkpoint(str(path))
    groups = await buffer.snapshot.remote()
    with open(path / "buffer.pkl", "wb") as f:
        pickle.dump(groups, f)
    state = driver_state()
    (path / "driver.json").write_text(json.dumps(asdict(state)))
    (root / "latest.tmp").write_text(path.name)
    (root / "latest.tmp").replace(root / "latest")  # atomic: a torn checkpoint is never "latest"
    for old in sorted(root.glob("rl-step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint %s: step %d, version %d, %d buffered groups", path.name, state.step, state.version, len(groups))
    return path


def at_or_before(run_dir: str | Path, step: int) -> Path | None:
    """The newest complete RL checkpoint of a run taken at ``step`` or earlier, or None."""
    root = Path(run_dir) / "checkpoints"
    done = [p for p in root.glob("rl-step-*") if (p / "driver.json").exists() and int(p.name.rsplit("-", 1)[1]) <= step]
    return max(done, default=None, key=lambda p: p.name)


def load(path: Path) -> Restored:
    state = DriverState(**json.loads((path / "driver.json").read_text()))
    with open(path / "buffer.pkl", "rb") as f:
        groups = pickle.load(f)
    return Restored(state, groups, path)


async def refill(buffer: Any, groups: list) -> Counter:
    """Put restored groups back into a fresh buffer; returns how many groups each prompt has."""
    import ray

    from forge_ray.rollout.group import trajectory_meta

    counts: Counter = Counter()
    for task_id, trajs in groups:
        for traj in trajs:
            await buffer.put.remote(trajectory_meta(traj), [ray.put(traj)])
        counts[task_id] += 1
    return counts


def inflight(outstanding: dict[str, int], buffered: Counter) -> list[str]:
    """Prompts that were generating when the checkpoint was taken (to be re-queued): the
    ledger's outstanding issues that are not back in the buffer."""
    out = []
    for task_id, n in outstanding.items():
        out += [task_id] * max(n - buffered[task_id], 0)
    return out


def export_hf(path: str | Path, out_dir: str | Path, base_model: str | Path | None = None) -> Path:
    """Write the policy of RL checkpoint ``path`` as a Hugging Face folder (transformers and
    vLLM load it), in this process: no Ray, no process group. The architecture, config and
    tokenizer come from ``base_model``, by default the run's starting policy (its SFT, else its
    base model folder next to the checkpoint)."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "learner").is_dir():
        raise FileNotFoundError(f"{path} is not an RL checkpoint (no learner/ inside); expected <run>/checkpoints/rl-step-NNNNNN")
    if base_model is None:
        base_model = next((path.parent / s for s in ("sft", "base") if (path.parent / s / "config.json").exists()), None)
        if base_model is None:
            raise FileNotFoundError(f"no sft/ or base/ model next to {path}: pass the starting model folder")
    model = AutoModelForCausalLM.from_pretrained(base_model)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(path / "learner"))  # reads the model shards only
    model.load_state_dict(state["model"])
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_model).save_pretrained(out)
    log.info("exported %s -> %s", path, out)
    return out
