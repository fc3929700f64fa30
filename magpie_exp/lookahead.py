"""Look-ahead for the generate stage: shards made side by side so the engine works on ``generate.engine_batch``
records at a time whatever the shard size, with one writer and byte-identical records.

A wave of consecutive shards is made once in look-ahead threads that run one at a time (so tokenizers and
counters are never shared across threads). Either every shard runs until it asks for its next answers or ends,
in shard order, and their requests go to the engine as one call per engine; or, where the engines stream (vLLM
in process takes requests while it decodes: ``Stream``), each shard's requests go to its engine as soon as it
asks, and it goes on as soon as they are answered, whatever the other shards are waiting for. Nothing the
look-ahead makes is kept but the engine's answers, keyed by the exact seeded request; the shards are then made in
order exactly as without it, and a request the look-ahead did not foresee goes to the engine then.

With an engine that takes calls from several threads (a Ray cluster, a server pool), ``generate.waves_in_flight``
waves are drawn at once, each in its own thread, while the shards of the oldest are made and written: the
engine gets the next wave's requests while the last answers of this one decode, instead of waiting at the end of
every call for its slowest answer. The look-ahead of a later wave counts the ids an earlier wave's look-ahead
accepted as seen; a forecast that still misses only costs an engine call in the real pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from magpie_exp.engines import Completion, Engine, Request

log = logging.getLogger(__name__)
EngineCall = Callable[[Any, list[Request]], list[list[Completion]]]  # (side, requests) -> answers


@dataclass(frozen=True)
class Stream:
    """How a wave hands requests to engines that stream: ``engine(side)`` is the side's engine, ``step(engine)``
    runs it a step (``Engine.advance``, with the caller's clock and counters) and returns the calls it finished."""

    engine: Callable[[Any], Engine]
    step: Callable[[Engine], list[tuple[int, list[list[Completion]]]]]


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


class BusyClock:
    """Seconds during which at least one engine call was running (overlapping calls count once), and the tokens
    they made; ``with clock:`` around each call, from any thread."""

    def __init__(self) -> None:
        self._lock, self._running, self._since, self._seconds, self.tokens = threading.Lock(), 0, 0.0, 0.0, 0

    def __enter__(self) -> BusyClock:
        with self._lock:
            if not self._running:
                self._since = time.perf_counter()
            self._running += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._running -= 1
            if not self._running:
                self._seconds += time.perf_counter() - self._since

    def count(self, tokens: int) -> int:
        """Add ``tokens``; the total so far."""
        with self._lock:
            self.tokens += tokens
            return self.tokens

    def seconds(self) -> float:
        with self._lock:
            return self._seconds + (time.perf_counter() - self._since if self._running else 0.0)


class LookAhead:
    """The answers drawn ahead for the shards being made, and where a look-ahead thread sends its engine calls.

    Waves may be in flight together (:meth:`wave` in other threads while the shards of an earlier wave are made
    and written): ``turn`` is held by whichever thread runs stage code (a look-ahead step, or the making of a shard
    for real), so tokenizers and counters are still used by one thread at a time; only the engine calls overlap.
    """

    def __init__(self) -> None:
        self.memo: dict[tuple, list[Completion]] = {}
        self.local = threading.local()  # .ask, set in a look-ahead thread
        self.through: EngineCall | None = None  # where the real pass's unforeseen requests go while a Window runs
        self.turn = threading.RLock()

    def answers(self, side: Any, requests: list[Request], engine_call: EngineCall) -> list[list[Completion]]:
        """The answers to ``requests``: drawn ahead where they could be, from ``engine_call`` otherwise (or, in a
        look-ahead thread, from the wave's next engine call)."""
        ask = getattr(self.local, "ask", None)
        if ask is not None:
            return ask(side, requests)
        keys = [memo_key(side, r) for r in requests]
        missing = [i for i, key in enumerate(keys) if key is None or key not in self.memo]
        call = self.through or engine_call
        drawn = dict(zip(missing, call(side, [requests[i] for i in missing]), strict=True)) if missing else {}
        return [drawn[i] if i in drawn else self.memo[key] for i, key in enumerate(keys)]

    def wave(self, plans: Sequence[Plan], seen: set[str], make_shard: Callable[[Any, Any], Any],
             engine_call: EngineCall, earlier: Sequence[Wave] = ()) -> Wave:
        """A wave of ``plans`` to make side by side once (``make_shard(plan, seen)``) by :meth:`Wave.run`.

        ``earlier``: waves still in flight before it, whose shards are not written yet; the ids their look-ahead
        accepted count as seen, as they will be by the time this wave's shards are made for real."""
        return Wave(self, plans, seen, make_shard, engine_call, earlier)

    def make(self, todo: Sequence[Sequence[Plan]], seen: set[str], make_shard: Callable[[Any, Any], Any],
             engine_call: EngineCall, write: Callable[[Any, Any, dict[str, Any]], None], in_flight: int = 1,
             expect: Callable[[int], None] | None = None, stream: Stream | None = None) -> None:
        """Make every shard of the waves ``todo`` for real, in order, in this thread, and ``write(plan, records,
        meta)`` each; ``make_shard(plan, seen)`` returns ``(records, meta)``.

        Each wave is first drawn ahead (:meth:`wave`): one wave at a time, or ``in_flight`` of them, each in a
        thread of its own, the next started as soon as the oldest is written. ``expect(records)`` is told the
        records of the shards in hand (the progress view's ceiling). With ``stream`` (engines that stream, one at
        a time) the shards are drawn ahead in a :class:`Window` of a wave's records sliding over the run instead."""
        if stream is not None and in_flight <= 1 and any(len(plans) > 1 for plans in todo):
            Window(self, seen, make_shard, stream).make([p for plans in todo for p in plans],
                                                        max(sum(p.size for p in plans) for plans in todo), write, expect)
            self.forget()
            return
        if in_flight <= 1:
            for plans in todo:
                if expect is not None:
                    expect(sum(p.size for p in plans))
                start = time.perf_counter()
                if len(plans) > 1:
                    self.wave(plans, seen, make_shard, engine_call).run()
                self._write(plans, seen, make_shard, write, time.perf_counter() - start)
                self.forget()
            return
        log.info("generate: %d wave(s), up to %d in flight (the engine takes concurrent calls)", len(todo), in_flight)
        upcoming = iter(todo)
        flying: deque[tuple[Sequence[Plan], Wave, Future]] = deque()
        threads = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="generate-wave")

        def launch() -> None:
            plans = next(upcoming, None)
            if plans is not None:
                wave = self.wave(plans, seen, make_shard, engine_call, [w for _, w, _ in flying])
                flying.append((plans, wave, threads.submit(wave.run)))

        try:
            for _ in range(in_flight):
                launch()
            while flying:
                plans, wave, drawn = flying[0]
                if expect is not None:
                    expect(sum(p.size for ps, _, _ in flying for p in ps))
                start = time.perf_counter()
                drawn.result()
                flying.popleft()
                self._write(plans, seen, make_shard, write, time.perf_counter() - start)
                self.forget(wave)
                launch()
        finally:
            for _, wave, _ in flying:
                wave.cancel()
            threads.shutdown(wait=False, cancel_futures=True)

    def _write(self, plans: Sequence[Plan], seen: set[str], make_shard: Callable[[Any, Any], Any],
               write: Callable[[Any, Any, dict[str, Any]], None], ahead_seconds: float) -> None:
        """Make a wave's shards for real, in order, and write each; its seconds include its share of the time
        this thread waited for the wave's look-ahead."""
        per_record = ahead_seconds / sum(p.size for p in plans)
        for plan in plans:
            with self.turn:
                records, meta = make_shard(plan, seen)
            meta["seconds"] = round(meta["seconds"] + per_record * plan.size, 3)
            write(plan, records, meta)

    def forget(self, wave: Wave | None = None) -> None:
        """Drop the answers drawn for ``wave`` (its shards are written), or all of them."""
        if wave is None:
            self.memo.clear()
        else:
            for key in wave.keys:
                self.memo.pop(key, None)


class _Seen:
    """Membership in any of several id sets (the ids accepted before a wave, and by the waves still in flight)."""

    def __init__(self, *sets: Any) -> None:
        self.sets = sets

    def __contains__(self, rid: object) -> bool:
        return any(rid in ids for ids in self.sets)


class _AheadSeen:
    """The ids a look-ahead shard must not repeat: those accepted before the wave and, as far as the look-ahead
    has got, by the wave's earlier shards (made one by one, they would all be in ``seen`` by then). ``first``:
    the first shard not written yet (a :class:`Window`'s; the written ones' ids are in ``before``)."""

    def __init__(self, before: set[str], accepted: list[set[str]], index: int,
                 first: Callable[[], int] = lambda: 0) -> None:
        self.before, self.accepted, self.index, self.first = before, accepted, index, first

    def __contains__(self, rid: object) -> bool:
        return rid in self.before or any(rid in self.accepted[i] for i in range(self.first(), self.index + 1))

    def add(self, rid: str) -> None:
        self.accepted[self.index].add(rid)

    def discard(self, rid: str) -> None:
        self.accepted[self.index].discard(rid)


class Wave:
    """One wave: its shards in look-ahead threads stepped one at a time; their requests batched per engine."""

    def __init__(self, ahead: LookAhead, plans: Sequence[Plan], seen: set[str], make_shard: Callable[[Any, Any], Any],
                 engine_call: EngineCall, earlier: Sequence[Wave] = ()) -> None:
        self.ahead, self.plans, self.make_shard, self.engine_call = ahead, list(plans), make_shard, engine_call
        self.accepted: list[set[str]] = [set() for _ in plans]  # ids each shard's look-ahead accepted
        self.before = _Seen(seen, *(ids for wave in earlier for ids in wave.accepted)) if earlier else seen
        self.seen = [_AheadSeen(self.before, self.accepted, i) for i in range(len(plans))]
        self.keys: set[tuple] = set()  # the memo entries this wave drew
        self.go = [threading.Semaphore(0) for _ in plans]
        self.back = threading.Semaphore(0)
        self.asked: dict[int, tuple[Any, list[Request]]] = {}
        self.answers: dict[int, list[list[Completion]] | BaseException] = {}
        self.cancelled = False  # set when the run stops: no more engine calls; the look-ahead threads end

    def cancel(self) -> None:
        self.cancelled = True

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
            self._ended(index)
            self.back.release()

    def _ended(self, index: int) -> None:
        """Shard ``index``'s look-ahead is over (its thread is about to end)."""

    def _thread(self, index: int) -> threading.Thread:
        thread = threading.Thread(target=self._shard, args=(index,), daemon=True,
                                  name=f"look-ahead-{self.plans[index].name}")
        thread.start()
        return thread

    def _step(self, index: int) -> None:
        """Let thread ``index`` run until it asks again or ends (holding the stage's turn meanwhile)."""
        with self.ahead.turn:
            self.go[index].release()
            self.back.acquire()

    def _keep(self, index: int, side: Any, requests: list[Request], outputs: list[list[Completion]]) -> None:
        """Keep shard ``index``'s answers for the real pass."""
        for request, output in zip(requests, outputs, strict=True):
            if (memo := memo_key(side, request)) is not None:
                self.ahead.memo[memo] = output
                self._drawn(index).add(memo)

    def _drawn(self, index: int) -> set[tuple]:
        """Where the memo keys shard ``index`` drew are listed (to forget them once written): the wave's."""
        return self.keys

    def run(self) -> None:
        threads = [self._thread(i) for i in range(len(self.plans))]
        for index in range(len(self.plans)):
            self._step(index)
        while self.asked:
            batch, self.asked = self.asked, {}
            for key in dict.fromkeys(side.key for side, _ in batch.values()):  # one call per engine
                indices = [i for i, (side, _) in batch.items() if side.key == key]
                side = batch[indices[0]][0]
                requests = [r for i in indices for r in batch[i][1]]
                try:
                    if self.cancelled:
                        raise RuntimeError("the run stopped")
                    outputs = self.engine_call(side, requests)
                except Exception as exc:  # noqa: BLE001 - handed to the asking threads, which stop
                    self.answers.update({i: exc for i in indices})
                    continue
                start = 0
                for i in indices:
                    self._keep(i, side, batch[i][1], outputs[start:start + len(batch[i][1])])
                    self.answers[i] = outputs[start:start + len(batch[i][1])]
                    start += len(batch[i][1])
            for index in sorted(batch):
                self._step(index)
        for thread in threads:
            thread.join()


class Window(Wave):
    """Shards drawn ahead on engines that stream, a window of about ``capacity`` records sliding over the run.

    Each shard's requests go to its engine as soon as it asks, and it goes on as soon as they are answered,
    whatever the others are waiting for: one shard's answers decode beside another's instructions, a refill joins
    the running batch, and as soon as the oldest shard's look-ahead is over it is made for real and written and
    the next shard comes in. So the engine never waits for a call's slowest answer, neither within a wave of
    shards nor between waves. The real pass's requests the look-ahead did not foresee go through the stream too
    (the engine is running others' meanwhile)."""

    def __init__(self, ahead: LookAhead, seen: set[str], make_shard: Callable[[Any, Any], Any], stream: Stream) -> None:
        super().__init__(ahead, [], seen, make_shard, self._through_stream)
        self.stream = stream
        self.keys_of: list[set[tuple]] = []  # the memo entries each shard's look-ahead drew
        self.over: list[bool] = []  # each shard's look-ahead is over
        self.running: dict[tuple[int, int], tuple[Engine, int, Any, list[Request]]] = {}
        self.early: list[tuple[Engine, int, list[list[Completion]]]] = []  # finished while the real pass waited
        self.engines: dict[int, Engine] = {}  # every engine it submitted to (all dropped from if the run stops)
        self.written = 0  # shards made for real and written so far

    def _submit(self, engine: Engine, requests: list[Request]) -> int:
        self.engines[id(engine)] = engine
        return engine.submit(requests)

    def _ended(self, index: int) -> None:
        self.over[index] = True

    def _drawn(self, index: int) -> set[tuple]:
        return self.keys_of[index]

    def admit(self, plan: Plan) -> None:
        """Start drawing ``plan`` ahead: its first requests go to the engine now."""
        index = len(self.plans)
        self.plans.append(plan)
        self.accepted.append(set())
        self.seen.append(_AheadSeen(self.before, self.accepted, index, lambda: self.written))
        self.go.append(threading.Semaphore(0))
        self.keys_of.append(set())
        self.over.append(False)
        self._thread(index)
        self._step(index)
        self._hand_on(index)

    def _hand_on(self, index: int) -> None:
        if index in self.asked:
            side, requests = self.asked.pop(index)
            engine = self.stream.engine(side)
            self.running[id(engine), self._submit(engine, requests)] = engine, index, side, requests

    def _deliver(self, engine: Engine, ticket: int, outputs: list[list[Completion]] | BaseException) -> None:
        _, index, side, requests = self.running.pop((id(engine), ticket))
        if not isinstance(outputs, BaseException):
            self._keep(index, side, requests, outputs)
        self.answers[index] = outputs
        self._step(index)
        self._hand_on(index)

    def _advance(self) -> None:
        """A step of each engine with work; the answers it finished go to their shards, which ask on."""
        for engine in {id(e): e for e, *_ in self.running.values()}.values():
            try:
                finished = self.stream.step(engine)
            except Exception as exc:  # noqa: BLE001 - handed to the asking threads, which stop
                engine.abort()  # its calls end here: nothing of them is left in the engine
                finished = [(ticket, exc) for (_, ticket), (e, *_) in list(self.running.items()) if e is engine]
            for ticket, outputs in finished:
                self._deliver(engine, ticket, outputs)

    def _through_stream(self, side: Any, requests: list[Request]) -> list[list[Completion]]:
        """The real pass's call for requests the look-ahead did not foresee: submitted beside the look-ahead's,
        the engine stepped until they are answered; what else finishes meanwhile is handed on afterwards."""
        engine = self.stream.engine(side)
        ticket = self._submit(engine, requests)
        while True:
            for done, outputs in self.stream.step(engine):
                if done == ticket:
                    return outputs
                self.early.append((engine, done, outputs))

    def make(self, plans: Sequence[Plan], capacity: int, write: Callable[[Any, Any, dict[str, Any]], None],
             expect: Callable[[int], None] | None = None) -> None:
        """Make and write every shard of ``plans``, in order, keeping about ``capacity`` records drawn ahead."""
        upcoming, since = deque(plans), time.perf_counter()
        self.ahead.through = self._through_stream
        try:
            while upcoming or self.written < len(self.plans):
                held = sum(p.size for p in self.plans[self.written:])
                while upcoming and (self.written == len(self.plans) or held + upcoming[0].size <= capacity):
                    held += upcoming[0].size
                    self.admit(upcoming.popleft())
                if expect is not None:
                    expect(held)
                if self.over[self.written]:  # the oldest shard is drawn: made for real, written, forgotten
                    plan = self.plans[self.written]
                    with self.ahead.turn:
                        records, meta = self.make_shard(plan, self.before)
                    now = time.perf_counter()
                    meta["seconds"] = round(now - since, 3)  # the shards' seconds add up to the stage's
                    since = now
                    write(plan, records, meta)
                    for key in self.keys_of[self.written]:
                        self.ahead.memo.pop(key, None)
                    self.keys_of[self.written] = set()  # a long run keeps no prompt of the shards it wrote
                    self.accepted[self.written].clear()  # in ``seen`` now, as the real pass accepted them
                    self.written += 1
                    while self.early:
                        self._deliver(*self.early.pop(0))
                elif self.running:
                    self._advance()
                else:
                    raise RuntimeError(f"generate: the look-ahead of shard {self.plans[self.written].name} waits for nothing")
        finally:
            self.ahead.through = None
            if upcoming or self.written < len(self.plans):  # stopped early: nothing of it may stay in the engines
                for engine in self.engines.values():
                    engine.abort()
