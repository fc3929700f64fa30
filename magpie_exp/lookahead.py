"""Look-ahead for the generate stage: shards made side by side so the engine works on ``generate.engine_batch``
records at a time whatever the shard size, with one writer and byte-identical records.

A wave of consecutive shards is made once in look-ahead threads that run one at a time, in shard order (so
tokenizers and counters are never shared across threads and the forecast is the same on every run); once each
has asked for its next answers or finished, their requests go to the engine as one call per engine. Nothing the
look-ahead makes is kept but the engine's answers, keyed by the exact seeded request; the shards are then made in
order exactly as without it, and a request the look-ahead did not foresee goes to the engine then.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from magpie_exp.engines import Completion, Request

log = logging.getLogger(__name__)
EngineCall = Callable[[Any, list[Request]], list[list[Completion]]]  # (side, requests) -> answers


class Plan(Protocol):
    name: str
    size: int


def memo_key(side: Any, request: Request) -> tuple | None:
    """What decides a seeded request's answer; unseeded requests are never answered twice alike."""
    if request.sampling.seed is None or request.messages is not None:
        return None
    return side.key, tuple(request.prompt_token_ids), request.sampling


def waves(plans: Sequence[Plan], engine_batch: int) -> list[list[Any]]:
    """Consecutive shards holding about ``engine_batch`` records between them (at least one shard each)."""
    out: list[list[Any]] = []
    for plan in plans:
        if out and sum(p.size for p in out[-1]) + plan.size <= engine_batch:
            out[-1].append(plan)
        else:
            out.append([plan])
    return out


class LookAhead:
    """The answers drawn ahead for the shards being made, and where a look-ahead thread sends its engine calls."""

    def __init__(self) -> None:
        self.memo: dict[tuple, list[Completion]] = {}
        self.local = threading.local()  # .ask, set in a look-ahead thread

    def answers(self, side: Any, requests: list[Request], engine_call: EngineCall) -> list[list[Completion]]:
        """The answers to ``requests``: drawn ahead where they could be, from ``engine_call`` otherwise (or, in a
        look-ahead thread, from the wave's next engine call)."""
        ask = getattr(self.local, "ask", None)
        if ask is not None:
            return ask(side, requests)
        keys = [memo_key(side, r) for r in requests]
        missing = [i for i, key in enumerate(keys) if key is None or key not in self.memo]
        drawn = dict(zip(missing, engine_call(side, [requests[i] for i in missing]), strict=True)) if missing else {}
        return [drawn[i] if i in drawn else self.memo[key] for i, key in enumerate(keys)]

    def run_wave(self, plans: Sequence[Plan], seen: set[str], make_shard: Callable[[Any, Any], Any],
                 engine_call: EngineCall) -> None:
        """Make ``plans`` side by side once (``make_shard(plan, seen)``), keeping every engine answer."""
        _Wave(self, plans, seen, make_shard, engine_call).run()

    def forget(self) -> None:
        self.memo.clear()


class _AheadSeen:
    """The ids a look-ahead shard must not repeat: those accepted before the wave and, as far as the look-ahead
    has got, by the wave's earlier shards (made one by one, they would all be in ``seen`` by then)."""

    def __init__(self, before: set[str], accepted: list[set[str]], index: int) -> None:
        self.before, self.accepted, self.index = before, accepted, index

    def __contains__(self, rid: object) -> bool:
        return rid in self.before or any(rid in ids for ids in self.accepted[:self.index + 1])

    def add(self, rid: str) -> None:
        self.accepted[self.index].add(rid)

    def discard(self, rid: str) -> None:
        self.accepted[self.index].discard(rid)


class _Wave:
    """One wave: its shards in look-ahead threads stepped one at a time; their requests batched per engine."""

    def __init__(self, ahead: LookAhead, plans: Sequence[Plan], seen: set[str], make_shard: Callable[[Any, Any], Any],
                 engine_call: EngineCall) -> None:
        self.ahead, self.plans, self.make_shard, self.engine_call = ahead, plans, make_shard, engine_call
        accepted: list[set[str]] = [set() for _ in plans]
        self.seen = [_AheadSeen(seen, accepted, i) for i in range(len(plans))]
        self.go = [threading.Semaphore(0) for _ in plans]
        self.back = threading.Semaphore(0)
        self.asked: dict[int, tuple[Any, list[Request]]] = {}
        self.answers: dict[int, list[list[Completion]] | BaseException] = {}

    def ask(self, index: int, side: Any, requests: list[Request]) -> list[list[Completion]]:
        self.asked[index] = (side, list(requests))
        self.back.release()
        self.go[index].acquire()
        answer = self.answers.pop(index)
        if isinstance(answer, BaseException):
            raise RuntimeError("look-ahead engine call failed") from answer
        return answer

    def _shard(self, index: int) -> None:
        self.ahead.local.ask = lambda side, requests: self.ask(index, side, requests)
        self.go[index].acquire()
        try:
            self.make_shard(self.plans[index], self.seen[index])
        except Exception as exc:  # noqa: BLE001 - only a forecast: the real pass meets (and raises) it again
            log.debug("generate: look-ahead of shard %s stopped early: %s", self.plans[index].name, exc)
        finally:
            self.back.release()

    def _step(self, index: int) -> None:
        """Let thread ``index`` run until it asks again or ends."""
        self.go[index].release()
        self.back.acquire()

    def run(self) -> None:
        threads = [threading.Thread(target=self._shard, args=(i,), daemon=True, name=f"look-ahead-{p.name}")
                   for i, p in enumerate(self.plans)]
        for thread in threads:
            thread.start()
        for index in range(len(self.plans)):
            self._step(index)
        while self.asked:
            batch, self.asked = self.asked, {}
            for key in dict.fromkeys(side.key for side, _ in batch.values()):  # one call per engine
                indices = [i for i, (side, _) in batch.items() if side.key == key]
                side = batch[indices[0]][0]
                requests = [r for i in indices for r in batch[i][1]]
                try:
                    outputs = self.engine_call(side, requests)
                except Exception as exc:  # noqa: BLE001 - handed to the asking threads, which stop
                    self.answers.update({i: exc for i in indices})
                    continue
                for request, output in zip(requests, outputs, strict=True):
                    if (memo := memo_key(side, request)) is not None:
                        self.ahead.memo[memo] = output
                start = 0
                for i in indices:
                    self.answers[i] = outputs[start:start + len(batch[i][1])]
                    start += len(batch[i][1])
            for index in sorted(batch):
                self._step(index)
        for thread in threads:
            thread.join()
