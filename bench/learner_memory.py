"""Benchmark: peak memory of one learner micro-step, full logits (before) vs chunked (after).

    .venv/bin/python bench/learner_memory.py [--vocab 4096 32768 49152] [--seq 256 512 1024 2048 4096]
        [--batch 1] [--chunk 1024] [--out bench/results/learner_memory.json]

One micro-step is the forward and backward of the GRPO loss plus the entropy metric, on a
model with the tiny model's architecture (``forge_ray.models.tiny``: Qwen3, hidden 256, 4
layers, tied embeddings) and the vocabulary size under test, float32 on CPU, no FSDP.
"after" is ``FSDPWorker._micro_step`` itself (``learner.logprob_chunk = --chunk``); "before" is
the code it replaced, copied below (``_before_step``): the whole (B, T, V) float32 logits, then
``token_logprobs`` and, after the backward, ``entropy_from_logits``.

Each (vocab, seq, path) runs in a fresh subprocess (one thread). Memory is the resident set:
after the model, the batch and one warm-up step (T = 16), the process's peak RSS counter
(``VmHWM``, which ``ru_maxrss`` reads) is reset through ``/proc/self/clear_refs`` and the step's
peak is ``VmHWM - VmRSS``, so it includes the parameter gradients the step allocates. glibc's
mmap threshold is pinned (``MALLOC_MMAP_THRESHOLD_``) so that freed tensors leave the RSS.
Prints a side-by-side table and writes it, with per-token slopes, to ``--out``: between the two
longest sequences (past the chunk size) the chunked path's slope should not depend on the
vocabulary, the full path's grows with it.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "results" / "learner_memory.json"
PROMPT = 16  # tokens without loss at the start of each sequence


def _status_mb() -> dict[str, float]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+) kB", text).group(1)) / 1024 for k in ("VmRSS", "VmHWM")}


def _trajectories(batch: int, seq: int, vocab: int, seed: int) -> list:
    import torch

    from forge_ray.types import Status, Trajectory, Turn

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(batch):
        tokens = torch.randint(3, vocab, (seq,), generator=g).tolist()
        out.append(Trajectory(f"t{i}", f"g{i}", 0, PROMPT, tokens, [0.0] * PROMPT + [-1.0] * (seq - PROMPT),
                              [0] * PROMPT + [1] * (seq - PROMPT), [Turn(PROMPT, seq, 0, "length")], Status.OK, []))
    return out


def _before_step(worker, batch: Any, num_tokens: float) -> None:
    """``FSDPWorker._micro_step`` and ``_forward`` as they were before chunking (metrics dropped)."""
    import torch

    from forge_ray.learner.loss import entropy_from_logits, grpo_loss, token_logprobs

    data = worker._device_batch(batch)
    logits = worker.model(input_ids=data["tokens"]).logits.float() / worker.temperature
    logp = token_logprobs(logits, data["tokens"])
    loss, _ = grpo_loss(logp, logp.detach(), data["infer_logp"], data["advantages"], data["mask"], eps_low=worker.cfg.eps_low,
                        eps_high=worker.cfg.eps_high, tis_cap=worker.cfg.tis_cap, num_tokens=num_tokens)
    loss.backward()
    with torch.no_grad():
        (entropy_from_logits(logits) * data["mask"]).sum().item()


def measure(model_dir: str, vocab: int, seq: int, batch: int, path: str, chunk: int) -> dict:
    """One configuration, in this process: the step's peak RSS above the RSS before it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from forge_ray.config import LearnerConfig
    from forge_ray.learner.worker import FSDPWorker, Micro

    config = AutoConfig.from_pretrained(model_dir)
    config.vocab_size = vocab
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    worker = FSDPWorker(0, 1, LearnerConfig(num_workers=1, micro_batch=batch, logprob_chunk=chunk if path == "chunked" else 0),
                        model_dir, "float32", "cpu")
    worker.model = model

    def step(trajs: list) -> None:
        n = float(sum(sum(t.loss_mask) for t in trajs))
        micro = Micro(trajs, [1.0] * len(trajs), None, list(range(len(trajs))))
        if path == "chunked":
            worker._micro_step(micro, n, {})
        else:
            _before_step(worker, micro, n)
        model.zero_grad(set_to_none=True)  # as the optimizer step leaves it

    step(_trajectories(batch, PROMPT + 16, vocab, seed=1))  # warm-up: lazy imports, kernels
    trajs = _trajectories(batch, seq, vocab, seed=2)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (the peak) to the current RSS
    base = _status_mb()["VmRSS"]
    t0 = time.perf_counter()
    step(trajs)
    seconds = time.perf_counter() - t0
    peak = _status_mb()["VmHWM"]
    return {"vocab": vocab, "seq": seq, "batch": batch, "path": path, "chunk": chunk if path == "chunked" else 0,
            "base_mb": round(base, 1), "peak_mb": round(peak - base, 1), "seconds": round(seconds, 2),
            "logits_mb": round(batch * seq * vocab * 4 / 2**20, 1)}


def _run_one(model_dir: str, vocab: int, seq: int, batch: int, path: str, chunk: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--one", model_dir, str(vocab), str(seq), str(batch), path, str(chunk)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def linearity(rows: list[dict]) -> dict:
    """Per vocabulary and path: peak(2T) / peak(T), and the per-token slope (MB per 1k tokens)
    between the two longest sequences, where the chunked path's own (chunk, V) buffers no longer
    grow (B * T >= chunk); then how much each path's slope varies over the vocabularies."""
    out: dict = {"per_vocab": {}}
    for vocab in sorted({r["vocab"] for r in rows}):
        out["per_vocab"][str(vocab)] = per = {}
        for path in ("full", "chunked"):
            peaks = {r["seq"] * r["batch"]: r["peak_mb"] for r in rows if r["vocab"] == vocab and r["path"] == path}
            (t1, p1), (t2, p2) = sorted(peaks.items())[-2:]
            per[path] = {"peak_2T_over_T": {str(t): round(peaks[2 * t] / peaks[t], 2) for t in sorted(peaks) if 2 * t in peaks},
                         "tail_mb_per_1k_tokens": round((p2 - p1) / (t2 - t1) * 1000, 1), "tail_tokens": [t1, t2]}
        per["tail_slope_full_over_chunked"] = round(per["full"]["tail_mb_per_1k_tokens"] / per["chunked"]["tail_mb_per_1k_tokens"], 2)
    for path in ("full", "chunked"):
        slopes = [per[path]["tail_mb_per_1k_tokens"] for per in out["per_vocab"].values()]
        out[f"{path}_tail_slope_max_over_min_vocab"] = round(max(slopes) / min(slopes), 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, nargs="+", default=[4096, 32768, 49152])
    p.add_argument("--seq", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    p.add_argument("--batch", type=int, default=1, help="sequences per micro-step")
    p.add_argument("--chunk", type=int, default=1024, help="learner.logprob_chunk of the chunked path")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--one", nargs=6, help=argparse.SUPPRESS)  # child: model_dir vocab seq batch path chunk
    args = p.parse_args()
    if args.one:
        d, v, t, b, path, c = args.one
        print(json.dumps(measure(d, int(v), int(t), int(b), path, int(c))))
        return
    from forge_ray.models.tiny import make_tiny_model

    t0, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(make_tiny_model(Path(tmp) / "tiny", max_position=max(args.seq)))
        for vocab in args.vocab:
            for seq in args.seq:
                pair = {path: _run_one(model_dir, vocab, seq, args.batch, path, args.chunk) for path in ("full", "chunked")}
                rows += pair.values()
                f, c = pair["full"], pair["chunked"]
                print(f"vocab {vocab:>6} seq {seq:>5}: full {f['peak_mb']:>8.1f} MB ({f['seconds']:.1f} s)  "
                      f"chunked {c['peak_mb']:>7.1f} MB ({c['seconds']:.1f} s)", flush=True)
    lin = linearity(rows)
    print(f"\npeak memory of one micro-step above the resident model (MB), batch {args.batch}, chunk {args.chunk}")
    print(f"{'vocab':>7}{'seq':>6}{'logits':>9}{'full':>10}{'chunked':>10}{'full/chunked':>14}")
    for f, c in zip(rows[::2], rows[1::2]):
        print(f"{f['vocab']:>7}{f['seq']:>6}{f['logits_mb']:>9.1f}{f['peak_mb']:>10.1f}{c['peak_mb']:>10.1f}{f['peak_mb'] / c['peak_mb']:>14.2f}")
    tail = next(iter(lin["per_vocab"].values()))["full"]["tail_tokens"]
    print(f"\nper-token slope between {tail[0]} and {tail[1]} tokens (MB per 1k tokens), and chunked peak(2T) / peak(T)")
    print(f"{'vocab':>7}{'full':>10}{'chunked':>10}{'full/chunked':>14}  chunked peak(2T)/peak(T)")
    for vocab, per in lin["per_vocab"].items():
        f, c = per["full"], per["chunked"]
        print(f"{vocab:>7}{f['tail_mb_per_1k_tokens']:>10.1f}{c['tail_mb_per_1k_tokens']:>10.1f}{per['tail_slope_full_over_chunked']:>14.2f}"
              f"  {c['peak_2T_over_T']}")
    print(f"slope max/min over vocabularies: full {lin['full_tail_slope_max_over_min_vocab']}, chunked {lin['chunked_tail_slope_max_over_min_vocab']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"command": "bench/learner_memory.py " + " ".join(sys.argv[1:]), "batch": args.batch, "chunk": args.chunk,
              "model": "tiny Qwen3 (hidden 256, 4 layers, tied), float32, CPU",
              "memory": "VmHWM - VmRSS of the step (peak RSS reset via /proc/self/clear_refs), MB",
              "seconds_total": round(time.perf_counter() - t0, 1), "rows": rows, "linearity": lin}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out} ({result['seconds_total']:.0f} s)")


if __name__ == "__main__":
    main()
