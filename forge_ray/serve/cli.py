"""``forge-ray serve CHECKPOINT``: a policy on Ray Serve, behind an OpenAI-compatible API.

    forge-ray serve runs/<run>/checkpoints/rl [--name ID] [--host 127.0.0.1] [--port 8000]
        [--replicas N | --min-replicas A --max-replicas B] [--cpus-per-replica C]
        [--max-model-len 2048] [--kv-cache-mb 512] [--address auto | HEAD:6379]

Starts a local Ray cluster of its own (or joins ``--address``), deploys, prints the base URL
and blocks until Ctrl-C (or SIGTERM), which deletes the deployment (and stops the local cluster).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the server as Ctrl-C does


def _serve(args: argparse.Namespace) -> int:
    import signal
    import time

    import ray

    from forge_ray.pipeline import worker_env_vars
    from forge_ray.serve.app import ServeConfig, deploy

    if not (Path(args.checkpoint) / "config.json").is_file():
        print(f"forge-ray serve: {args.checkpoint} is not a Hugging Face model folder (no config.json)", file=sys.stderr)
        return 2
    cfg = ServeConfig(
        checkpoint=str(Path(args.checkpoint).resolve()), name=args.name, host=args.host, port=args.port,
        replicas=args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests, max_ongoing_requests=args.max_ongoing_requests,
        cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica,
        max_model_len=args.max_model_len, kv_cache_mb=args.kv_cache_mb, dtype=args.dtype, app_name=args.app_name)
    kwargs = {"runtime_env": {"env_vars": worker_env_vars()}}
    if args.address:
        ray.init(address=args.address, **kwargs)
    else:  # a cluster of its own, as `forge-ray run` starts one
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, **kwargs)
    from ray import serve

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        url = deploy(cfg)
        print(f"serving {cfg.model_id} at {url}  (POST {url}/chat/completions, GET {url}/models); Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(cfg.app_name)
        if not args.address:
            serve.shutdown()
        ray.shutdown()
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``serve`` on the top-level ``forge-ray`` subparsers."""
    p = sub.add_parser("serve", help="serve a Hugging Face checkpoint on Ray Serve with an OpenAI-compatible API")
    p.add_argument("checkpoint", help="a Hugging Face folder, e.g. runs/<run>/checkpoints/rl")
    p.add_argument("--name", default=None, help="model id of the API (default: the folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host of Serve's proxy (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--address", default=None, help="join this Ray cluster instead of starting one ('auto', HEAD:6379)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local cluster (default: all)")
    p.add_argument("--replicas", type=int, default=1, help="fixed number of replicas (one vLLM engine each)")
    p.add_argument("--min-replicas", type=int, default=None, help="autoscale between --min-replicas and --max-replicas")
    p.add_argument("--max-replicas", type=int, default=None)
    p.add_argument("--target-ongoing-requests", type=float, default=8.0, help="autoscaling target per replica")
    p.add_argument("--max-ongoing-requests", type=int, default=32, help="requests a replica takes at once")
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="> 0 runs the engine on CUDA")
    p.add_argument("--max-model-len", type=int, default=2048, help="context (capped at the model's)")
    p.add_argument("--kv-cache-mb", type=int, default=512, help="vLLM's KV cache on CPU")
    p.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--app-name", default="forge_ray", help="Serve application name")
    p.set_defaults(fn=_serve)
