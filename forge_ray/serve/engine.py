"""ServeEngine: the rollout engine, streaming.

``VLLMEngine`` answers a request once it is finished, which is what rollouts want. Serving
also wants the ids as they are sampled (``stream: true``) and, for Agent Confidence test-time
selection, the top-k logprobs of each step. This subclass adds one method for that and
changes nothing else: same constructor arguments, same ``start`` (so a served policy gets the
same vLLM settings, token-in/token-out, as the one RL sampled from).
"""
from __future__ import annotations

from typing import AsyncIterator

from forge_ray.rollout.engine import VLLMEngine
from forge_ray.serve.api import Completion, Sampling


class ServeEngine(VLLMEngine):
    async def stream(self, prompt_ids: list[int], s: Sampling) -> AsyncIterator[Completion]:
        """Yield each step's new ids with their logprobs (``topk`` filled when ``s.logprobs``
        > 0), the last piece carrying the finish reason. Text is left empty: the engine has no
        tokenizer. Cancelling the iteration aborts the request in vLLM."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed,
            stop_token_ids=s.stop_token_ids, logprobs=s.logprobs, detokenize=False,
            output_kind=RequestOutputKind.DELTA,
        )
        rid = f"s{next(self._ids)}"
        async for out in self.llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, request_id=rid):
            c = out.outputs[0]
            steps = list(c.logprobs or [])
            ids = list(c.token_ids)
            logprobs = [d[t].logprob if d and t in d else 0.0 for t, d in zip(ids, steps)]
            topk = [sorted((lp.logprob for lp in d.values()), reverse=True)[: s.logprobs] for d in steps] if s.logprobs else []
            yield Completion(ids, logprobs, topk, "", c.finish_reason if out.finished else None)
            if out.finished:
                return
