"""Serving overhead: the OpenAI endpoint of ``forge-ray serve`` vs the same engine called directly.

    .venv/bin/python bench/serve.py --model /tmp/smollm2 [--requests 48] [--concurrency 8] [--max-tokens 48] [--rounds 3]

Same prompts (calculator tasks, rendered with their tools by the checkpoint's chat template),
same sampling (greedy, ``--max-tokens``), same concurrency, engines of the same settings:

- direct: ``generate`` on the prompt ids, the engine in a Ray actor of the replica's CPUs (as
  the rollout workers hold it), decoded and parsed here;
- endpoint: ``POST /v1/chat/completions`` through Ray Serve's proxy to one replica (render,
  sample, decode, parse, JSON), with the async OpenAI client;
- endpoint, stream: the same with ``stream: true``; its TTFT is the first content delta.

Both engines are up, one CPU each; they are used in turn, never at once: each round runs
every request through each mode, ``--rounds`` times, so load from elsewhere on the machine
falls on all of them alike. Latency is per request, submit to last byte. Writes bench/results/serve.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def drive(call: Callable[[int], Awaitable[dict]], n: int, concurrency: int) -> tuple[list[dict], float]:
    """``n`` calls, at most ``concurrency`` in flight: each call's result with its latency, and
    the wall time."""
    gate = asyncio.Semaphore(concurrency)
    rows: list[dict] = [{}] * n

    async def one(i: int) -> None:
        async with gate:
            t0 = time.perf_counter()
            out = await call(i)
            rows[i] = {**out, "latency": time.perf_counter() - t0}

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return rows, time.perf_counter() - t0


def summarise(runs: list[tuple[list[dict], float]]) -> dict[str, Any]:
    """Throughput over all rounds (requests / summed wall time) and latency percentiles."""
    rows = [r for rs, _ in runs for r in rs]
    wall = sum(w for _, w in runs)
    lat = [r["latency"] for r in rows]
    out = {"requests": len(rows), "seconds": wall, "requests_per_s": len(rows) / wall, "tokens": sum(r["tokens"] for r in rows),
           "p50_s": statistics.median(lat), "p95_s": _pct(lat, 0.95), "texts": [r["text"] for r in runs[0][0]],
           "round_requests_per_s": [len(rs) / w for rs, w in runs]}
    out["tokens_per_s"] = out["tokens"] / wall
    if all("ttft" in r for r in rows):
        out["ttft_p50_s"] = statistics.median(r["ttft"] for r in rows)
    return out


def summary(content: str | None, calls: list[tuple[str, str]]) -> str:
    """A completion as content plus (name, JSON arguments) of its calls, to compare the paths."""
    return (content or "") + "".join(f"<call {name} {args}>" for name, args in calls)


def requests_of(n: int) -> list[dict]:
    from envs import make_tasks

    return [{"messages": t.messages, "tools": t.tools} for t in make_tasks("calculator").tasks("heldout", n, 0)]


async def direct_caller(cfg: Any, reqs: list[dict], args: argparse.Namespace) -> tuple[Callable, Any]:
    """The engine as the rollouts hold it: a Ray actor of the replica's size, prompt ids in,
    decoded and parsed here. Returns (call, actor)."""
    import ray
    from transformers import AutoTokenizer

    from forge_ray.serve import api
    from forge_ray.serve.app import stop_token_ids
    from forge_ray.serve.engine import ServeEngine

    tok = AutoTokenizer.from_pretrained(cfg.checkpoint)
    stop = stop_token_ids(tok)
    prompts = [tok.encode(api.render_prompt(tok, api.parse_request(r)), add_special_tokens=False) for r in reqs]
    actor = ray.remote(num_cpus=cfg.cpus_per_replica, max_concurrency=1000)(ServeEngine).remote(
        cfg.checkpoint, **cfg.engine_kwargs(cfg.max_model_len))
    await actor.start.remote()

    async def call(i: int) -> dict:
        g = await actor.generate.remote(prompts[i], max_tokens=args.max_tokens, temperature=0.0, stop_token_ids=stop)
        content, calls = api.split_tool_calls(tok.decode([t for t in g.token_ids if t not in stop], skip_special_tokens=False))
        return {"tokens": len(g.token_ids), "text": summary(content, [(c.name, json.dumps(c.arguments)) for c in calls])}

    return call, actor


def endpoint_caller(url: str, model: str, reqs: list[dict], args: argparse.Namespace, stream: bool) -> Callable:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="unused", timeout=600, max_retries=0)

    async def call(i: int) -> dict:
        kw = dict(model=model, temperature=0, max_tokens=args.max_tokens, **reqs[i])
        if not stream:
            r = await client.chat.completions.create(**kw)
            m = r.choices[0].message
            calls = [(t.function.name, t.function.arguments) for t in m.tool_calls or []]
            return {"tokens": r.usage.completion_tokens, "text": summary(m.content, calls)}
        t0, ttft, parts, calls, tokens = time.perf_counter(), None, [], [], 0
        async for c in await client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
            if c.usage:
                tokens = c.usage.completion_tokens
            for ch in c.choices:
                if (ch.delta.content or ch.delta.tool_calls) and ttft is None:
                    ttft = time.perf_counter() - t0
                parts.append(ch.delta.content or "")
                calls += [(t.function.name, t.function.arguments) for t in ch.delta.tool_calls or []]
        return {"tokens": tokens, "text": summary("".join(parts), calls), "ttft": ttft or 0.0}

    return call


async def rounds(cfg: Any, url: str, reqs: list[dict], args: argparse.Namespace) -> dict[str, dict]:
    """Every mode once per round, in turn (load from elsewhere drifts: each mode sees it alike)."""
    import ray

    direct, actor = await direct_caller(cfg, reqs, args)
    modes = {"direct (engine actor)": direct,
             "endpoint (HTTP, Serve)": endpoint_caller(url, cfg.model_id, reqs, args, stream=False),
             "endpoint, stream": endpoint_caller(url, cfg.model_id, reqs, args, stream=True)}
    try:
        for call in modes.values():
            await drive(call, min(2, len(reqs)), 2)  # warm-up
        runs: dict[str, list] = {name: [] for name in modes}
        for _ in range(args.rounds):
            for name, call in modes.items():
                runs[name].append(await drive(call, len(reqs), args.concurrency))
        return {name: summarise(r) for name, r in runs.items()}
    finally:
        ray.kill(actor)


def measure(cfg: Any, reqs: list[dict], args: argparse.Namespace) -> dict[str, dict]:
    """Serve and the engine actor side by side in one local Ray cluster, used in turn."""
    import ray
    from ray import serve

    from forge_ray.pipeline import worker_env_vars
    from forge_ray.serve.app import deploy

    ray.init(address="local", num_cpus=4, include_dashboard=False, runtime_env={"env_vars": worker_env_vars()})
    try:
        url = deploy(cfg)
        return asyncio.run(rounds(cfg, url, reqs, args))
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a Hugging Face folder (default: the tiny model, built in a temp dir)")
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3, help="each mode runs every request once per round, modes in turn")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--kv-cache-mb", type=int, default=256)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve.json"))
    args = ap.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from forge_ray.serve.app import ServeConfig

    model = args.model
    if model is None:
        from forge_ray.models.tiny import make_tiny_model

        model = str(make_tiny_model(tempfile.mkdtemp(prefix="tiny-"), 0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServeConfig(str(Path(model).resolve()), port=port, max_model_len=args.max_model_len, kv_cache_mb=args.kv_cache_mb)
    reqs = requests_of(args.requests)
    load0 = os.getloadavg()[0]
    rows = measure(cfg, reqs, args)
    direct = rows["direct (engine actor)"]
    same = {name: sum(a == b for a, b in zip(direct["texts"], r["texts"])) for name, r in rows.items()}
    print(f"{'':<30}{'req/s':>8}{'tok/s':>8}{'p50 s':>8}{'p95 s':>8}{'TTFT p50':>10}")
    for name, r in rows.items():
        ttft = f"{r['ttft_p50_s']:.3f}" if "ttft_p50_s" in r else "-"
        print(f"{name:<30}{r['requests_per_s']:>8.2f}{r['tokens_per_s']:>8.1f}{r['p50_s']:>8.3f}{r['p95_s']:>8.3f}{ttft:>10}")
    print("greedy answers (content + tool calls) equal to direct: " + ", ".join(f"{k}: {v}/{len(reqs)}" for k, v in same.items()))
    import ray

    out = {"config": {**vars(args), "model": model}, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
           "ray": ray.__version__, "loadavg_1m_at_start": load0, "loadavg_1m_at_end": os.getloadavg()[0]},
           "results": {k: {**{kk: vv for kk, vv in v.items() if kk != "texts"}, "same_answer_as_direct": same[k]} for k, v in rows.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
