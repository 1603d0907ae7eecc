"""A minimal client of OpenAI-compatible servers (``forge-ray serve``, vLLM, SGLang, a hosted API),
on the standard library: what the τ² user simulator and the tournament judge call when they
point at an endpoint instead of a forge_ray engine."""
from __future__ import annotations

import json
import urllib.request
from typing import Any


def _request(url: str, body: dict | None, api_key: str | None, timeout_s: float) -> Any:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, headers, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def chat(base_url: str, body: dict[str, Any], api_key: str | None = None, timeout_s: float = 120.0) -> str:
    """POST ``body`` to ``<base_url>/chat/completions``; the first choice's text."""
    data = _request(base_url.rstrip("/") + "/chat/completions", body, api_key, timeout_s)
    return (data["choices"][0]["message"].get("content") or "").strip()


def first_model(base_url: str, api_key: str | None = None, timeout_s: float = 30.0) -> str:
    """The id of the first model ``<base_url>/models`` lists."""
    data = _request(base_url.rstrip("/") + "/models", None, api_key, timeout_s)
    if not data.get("data"):
        raise ValueError(f"{base_url}/models lists no model")
    return str(data["data"][0]["id"])
