"""A deterministic engine for fast tests of stage logic: what it writes is a pure function of the prompt.

It runs no model. ``script(prompt_text, sampling, k)`` gives the k-th completion of a request as its text, as
``(text, finish_reason)``, or as ``(text, finish_reason, top_logprobs)`` (token id -> log-probability per position); the prompt is the request's token ids decoded by the model's real tokenizer, so a
stage's templates, stops and bookkeeping are exercised exactly as with vLLM. Every path a user runs keeps its
real-model test beside the fast ones built on this.

With ``streams=True`` it takes calls as vLLM in process does (``submit`` / ``advance``): each step finishes the
waiting call with the fewest tokens, so calls end out of the order they came in, as short answers do in a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from magpie_exp.console import tick
from magpie_exp.engines import Completion, Engine, EngineInfo, Request, SamplingSpec

Script = Callable[[str, SamplingSpec, int], "str | tuple[str, str] | tuple[str, str, tuple[dict[int, float], ...]]"]


class FakeEngine(Engine):
    def __init__(self, tokenizer: Any, script: Script, name: str = "fake", streams: bool = False) -> None:
        self.tokenizer, self.script, self.streams = tokenizer, script, streams
        self.info = EngineInfo("fake", "0", name)
        self.prompts: list[str] = []  # every prompt it was given, in order (tests read them)
        self.specs: list[SamplingSpec] = []  # ... and its sampling
        self.waiting: dict[int, list[list[Completion]]] = {}  # submitted calls not yet finished (streams=True)
        self.most_waiting = 0  # the most calls it held at once
        self.submitted = 0  # calls submitted (the last ticket)
        self.finished: list[int] = []  # tickets, in the order their calls finished

    def submit(self, requests: Sequence[Request]) -> int:
        if not self.streams:
            return super().submit(requests)
        self.submitted += 1
        ticket = self.submitted
        self.waiting[ticket] = self.generate(requests)  # a pure function of the prompts: made now, given later
        self.most_waiting = max(self.most_waiting, len(self.waiting))
        return ticket

    def advance(self) -> list[tuple[int, list[list[Completion]]]]:
        if not self.waiting:
            return []
        ticket = min(self.waiting, key=lambda t: (sum(c.token_count for out in self.waiting[t] for c in out), t))
        self.finished.append(ticket)
        return [(ticket, self.waiting.pop(ticket))]

    def abort(self) -> None:
        self.waiting.clear()

    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        out = []
        for request in requests:
            prompt = self.tokenizer.decode(request.prompt_token_ids, skip_special_tokens=False)
            self.prompts.append(prompt)
            self.specs.append(request.sampling)
            completions = []
            for k in range(request.sampling.n):
                answer = self.script(prompt, request.sampling, k)
                text, finish, *top = answer if isinstance(answer, tuple) else (answer, "stop")
                tokens = len(self.tokenizer.encode(text, add_special_tokens=False))
                if finish == "stop" and tokens > request.sampling.max_tokens:
                    finish = "length"  # as a real engine would have stopped it
                completions.append(Completion(text, tokens, finish, top[0] if top else ()))
            out.append(completions)
            tick(len(completions))
        return out
