"""``executor=ray``: one model's in-process engine (vllm or hf) as Ray actors that share out every batch.

A :class:`RayEngine` is an :class:`~magpie_exp.engines.Engine` like the others, so generate, tag (judge, guard,
reward, URIAL base answers), pair and the evaluation answers and judges run on it unchanged. Each ``generate``
call is cut into chunks of about equal sample counts (:func:`cut`), the chunks go to the actors as they free up,
and the answers are put back in request order. Several threads may call at once: one dispatcher thread hands the
chunks of every call in progress to free actors, first in first out, so with the generate stage's waves in flight
(``generate.waves_in_flight``) an actor done with its chunk of one call takes the next call's chunk instead of
waiting at the call's end for the slowest chunk. The driver keeps writing every shard and manifest, so resume,
checksums and stage hashes are exactly those of ``executor=local`` (the executor is in no stage hash: a run
started locally can be finished on a cluster).

Cutting a request of n samples does not change its samples on vLLM: vLLM seeds the k-th sample of a request
seeded s with s + k (``vllm/v1/engine/parallel_sampling.py``), so the part that starts at sample k is sent with
seed s + k and draws what one engine would have drawn.

An actor that dies (lost node, out of memory, killed) fails only its chunk in flight, which goes at once to an
actor that is alive; Ray restarts the dead actor (``executor.max_restarts``), and it rejoins when it answers a
ping. A chunk is tried ``1 + executor.max_retries`` times at most; then the stage stops with the error, and
what was written stays for the rerun, as after any crash.

On CPU every actor binds its own cores (``executor.cpus_per_worker`` of them, in actor order) so two vLLM-CPU
engines do not fight over one core. On GPU each actor reserves ``gpus_per_worker`` GPUs (default: the model's
``tensor_parallel_size``) and its vLLM runs tensor parallel over them with its multiprocessing backend (an actor
has no placement group and sees just its own GPUs, which is when vLLM 0.32 picks ``mp``: vllm/config/parallel.py). Model folders must be readable at the
same path on every node (a shared file system); hub ids are fetched by each node.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any
from collections.abc import Sequence

from magpie_exp.console import tick
from magpie_exp.engines import Completion, Engine, EngineInfo, Request

if TYPE_CHECKING:
    from magpie_exp.config import EngineConfig, ExecutorConfig, GeneratorConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Piece:
    """Samples ``offset .. offset + request.sampling.n - 1`` of request ``index``."""

    index: int
    offset: int
    request: Request


def cut(requests: Sequence[Request], parts: int) -> list[list[Piece]]:
    """Cut ``requests`` into at most ``parts`` chunks of about equal sample counts, in order.

    A request whose samples straddle a boundary is split; each part keeps the seeds its samples had (s + offset).
    """
    total = sum(r.sampling.n for r in requests)
    target = max(1, math.ceil(total / max(1, parts)))
    chunks: list[list[Piece]] = [[]]
    room = target
    for index, request in enumerate(requests):
        offset, left = 0, request.sampling.n
        while left > 0:
            if room == 0:
                chunks.append([])
                room = target
            take = min(left, room)
            spec = request.sampling
            if take != spec.n:
                spec = replace(spec, n=take, seed=None if spec.seed is None else spec.seed + offset)
            chunks[-1].append(Piece(index, offset, replace(request, sampling=spec)))
            offset, left, room = offset + take, left - take, room - take
    return [chunk for chunk in chunks if chunk]


def join(requests: Sequence[Request], chunks: list[list[Piece]], outputs: list[list[list[Completion]]]) -> list[list[Completion]]:
    """Put the chunks' completions back together: one list of n completions per request, in request order."""
    parts: list[list[tuple[int, list[Completion]]]] = [[] for _ in requests]
    for chunk, out in zip(chunks, outputs, strict=True):
        if len(out) != len(chunk):
            raise RuntimeError(f"a Ray worker answered {len(out)} of the {len(chunk)} requests it was sent")
        for piece, completions in zip(chunk, out, strict=True):
            parts[piece.index].append((piece.offset, completions))
    joined = [[c for _, cs in sorted(p, key=lambda item: item[0]) for c in cs] for p in parts]
    for request, completions in zip(requests, joined, strict=True):
        if len(completions) != request.sampling.n:
            raise RuntimeError(f"a request for {request.sampling.n} samples came back with {len(completions)}")
    return joined


def start_ray(ex: ExecutorConfig) -> Any:
    """Connect to the cluster ``executor.address`` names, or start one in this process (once per process)."""
    import ray

    if ray.is_initialized():
        return ray
    common = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    started = time.perf_counter()
    if ex.address:
        ray.init(address=ex.address, **common)
    else:
        ray.init(num_cpus=ex.num_cpus or os.cpu_count() or 1, object_store_memory=ex.object_store_mib << 20, **common)
    resources = ray.cluster_resources()
    log.info("ray %s: %s cluster with %g CPUs, %g GPUs, %d node(s) (%.1fs)", ray.__version__,
             "joined the" if ex.address else "started a", resources.get("CPU", 0), resources.get("GPU", 0),
             len(ray.nodes()), time.perf_counter() - started)
    return ray


class EngineWorker:
    """The actor: one engine of its own, built from the same configs as a local one."""

    def __init__(self, engine_cfg: EngineConfig, generator: GeneratorConfig, model_path: str, seed: int,
                 slot: int, cores: int, on_gpu: bool) -> None:
        if not on_gpu:
            from magpie_exp.engines.hardware import bind_cpu_cores

            bind_cpu_cores(cores, slot)  # before the engine reads it: this actor's own cores
        from magpie_exp.engines import build_engine

        self.engine = build_engine(engine_cfg, generator, model_path, seed)

    def describe(self) -> dict[str, Any]:
        import ray

        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(), "info": asdict(self.engine.info),
                "cores": os.environ.get("VLLM_CPU_OMP_THREADS_BIND")}

    def ping(self) -> bool:
        return True

    def generate(self, requests: list[Request]) -> list[list[Completion]]:
        from magpie_exp.faults import failpoint

        failpoint("ray.worker.generate")
        return self.engine.generate(requests)

    def close(self) -> None:
        self.engine.close()


@dataclass
class _Actor:
    slot: int
    handle: Any
    up: bool = True
    dead: bool = False  # restarts exhausted
    ping: Any = None  # the ObjectRef of the ping sent after a failure
    ping_at: float = 0.0  # when to ping again (time.monotonic) after a ping found it still restarting
    chunks: int = 0
    samples: int = 0
    failures: int = 0


@dataclass(eq=False)
class _Call:
    """One ``generate`` call in progress: its chunks, their answers as they come, and how it ended."""

    chunks: list[list[Piece]]
    outputs: list[Any] = field(default_factory=list)
    tries: list[int] = field(default_factory=list)
    left: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.outputs, self.tries, self.left = [None] * len(self.chunks), [0] * len(self.chunks), len(self.chunks)


class RayEngine(Engine):
    """``workers`` Ray actors for one model; see the module docstring."""

    concurrent = True

    def __init__(self, cfg: EngineConfig, generator: GeneratorConfig, model_path: str, seed: int,
                 ex: ExecutorConfig) -> None:
        ray = start_ray(ex)
        from ray.exceptions import ActorUnavailableError, RayActorError

        self._lost = (RayActorError, ActorUnavailableError)
        self._lock, self._wake = threading.Lock(), threading.Event()
        self._queue: deque[tuple[_Call, int]] = deque()  # chunks of the calls in progress, first in first out
        self._dispatcher: threading.Thread | None = None
        self._closing = False
        self.ex, self.name = ex, generator.name
        resources = ray.cluster_resources()
        on_gpu = resources.get("GPU", 0) > 0
        gpus = ex.gpus_per_worker if ex.gpus_per_worker is not None else (generator.tensor_parallel_size if on_gpu else 0)
        workers = ex.workers
        if workers is None:  # as many as fit
            fit = resources.get("GPU", 0) // gpus if gpus else resources.get("CPU", 1) // ex.cpus_per_worker
            workers = max(1, int(fit))
        self._check_fit(resources, workers, gpus)
        remote = ray.remote(EngineWorker).options(num_cpus=ex.cpus_per_worker, num_gpus=gpus,
                                                  max_restarts=ex.max_restarts, max_task_retries=0)
        cores = max(1, int(ex.cpus_per_worker))
        log.info("ray: starting %d %s worker(s) for %s (%g CPU, %g GPU each)", workers, cfg.type, generator.name,
                 ex.cpus_per_worker, gpus)
        started = time.perf_counter()
        self.actors = [_Actor(slot, remote.remote(cfg, generator, model_path, seed, slot, cores, bool(gpus)))
                       for slot in range(workers)]
        # The actors load their models side by side; describe() returns once each is ready (or raises its error).
        try:
            described = ray.get([a.handle.describe.remote() for a in self.actors])
        except self._lost as exc:
            for actor in self.actors:
                ray.kill(actor.handle, no_restart=True)
            cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise RuntimeError(f"a Ray worker could not start the {cfg.type} engine for {generator.name} "
                               f"({model_path}): {cause}") from exc
        for actor, about in zip(self.actors, described, strict=True):
            log.info("ray worker %d: pid %s on %s, cores %s", actor.slot, about["pid"], about["node"], about["cores"])
        first = described[0]["info"]
        self.info = EngineInfo(kind=first["kind"], version=first["version"], model=first["model"],
                               extra={**first["extra"], "executor": "ray", "workers": workers})
        log.info("ray: %d worker(s) ready in %.1fs", workers, time.perf_counter() - started)

    def _check_fit(self, resources: dict[str, float], workers: int, gpus: float) -> None:
        """Actors that cannot all be placed would wait for ever: refuse that on a cluster started here (a joined
        cluster may be autoscaling, so there it is a warning)."""
        need = {"CPU": workers * self.ex.cpus_per_worker, "GPU": workers * gpus}
        short = {k: v for k, v in need.items() if v > resources.get(k, 0) + 1e-9}
        if not short:
            return
        kind = "GPU" if "GPU" in short else "CPU"
        per = gpus if kind == "GPU" else self.ex.cpus_per_worker
        message = (f"executor.workers={workers} with {per:g} {kind} each needs {need[kind]:g} {kind}s but the Ray "
                   f"cluster has {resources.get(kind, 0):g}; lower executor.workers or executor."
                   f"{'gpus' if kind == 'GPU' else 'cpus'}_per_worker (null workers = as many as fit)")
        if self.ex.address:
            log.warning("%s; waiting for the cluster to grow", message)
            return
        from magpie_exp.config import ConfigError

        raise ConfigError(message)

    # -- health -----------------------------------------------------------------------------------------------
    def _lose(self, actor: _Actor, exc: BaseException) -> None:
        actor.failures += 1
        actor.up = False
        log.warning("ray worker %d for %s is lost (%s); its chunk goes to another worker, and it rejoins once Ray "
                    "has restarted it", actor.slot, self.name, type(exc).__name__)
        actor.ping, actor.ping_at = None, 0.0

    def _recover(self, wait_s: float = 0.0) -> None:
        """Let lost actors that answer their ping rejoin (waiting up to ``wait_s`` for the first).

        A ping to an actor Ray is still restarting fails with ``ActorUnavailableError``: it is asked again a second
        later. ``ActorDiedError`` means Ray will not restart it (``executor.max_restarts`` used up)."""
        import ray
        from ray.exceptions import ActorUnavailableError

        now = time.monotonic()
        for actor in self.actors:
            if not actor.up and not actor.dead and actor.ping is None and now >= actor.ping_at:
                actor.ping = actor.handle.ping.remote()
        pings = {a.ping: a for a in self.actors if a.ping is not None}
        if not pings:
            if wait_s:
                time.sleep(1.0)
            return
        ready, _ = ray.wait(list(pings), num_returns=1 if wait_s else len(pings), timeout=wait_s)
        for ref in ready:
            actor = pings[ref]
            actor.ping = None
            try:
                ray.get(ref)
            except ActorUnavailableError:
                actor.ping_at = time.monotonic() + 1.0
                continue
            except self._lost as exc:
                actor.dead = True
                log.error("ray worker %d for %s is gone for good (%s; executor.max_restarts=%d used up)",
                          actor.slot, self.name, type(exc).__name__, self.ex.max_restarts)
                continue
            actor.up = True
            log.info("ray worker %d for %s is back", actor.slot, self.name)

    # -- work -------------------------------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        """Answer ``requests``; several threads may call at once (the generate stage keeps waves in flight), and
        the chunks of every call in progress go to the actors first in, first out as they free up, so an actor
        that ends its chunk of one call takes the next call's instead of waiting for the slowest chunk."""
        if not requests:
            return []
        call = _Call(cut(requests, len(self.actors) * self.ex.chunks_per_worker))
        with self._lock:
            if self._closing:
                raise RuntimeError(f"the Ray engine for {self.name} is closed")
            self._queue.extend((call, c) for c in range(len(call.chunks)))
            if self._dispatcher is None or not self._dispatcher.is_alive():
                self._dispatcher = threading.Thread(target=self._dispatch, daemon=True, name=f"ray-{self.name}")
                self._dispatcher.start()
        self._wake.set()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return join(requests, call.chunks, call.outputs)

    def _fail(self, call: _Call, error: BaseException) -> None:
        """End ``call`` with ``error`` (its other chunks are dropped from the queue; answers still due are ignored)."""
        if call.error is None and not call.done.is_set():
            call.error = error
            call.done.set()

    def _dispatch(self) -> None:
        """The one thread that talks to the actors: hands out queued chunks, collects answers, retries lost ones."""
        import ray

        flying: dict[Any, tuple[_Call, int, _Actor]] = {}
        try:
            while True:
                self._recover()
                with self._lock:
                    if self._closing:
                        for call, _, _ in flying.values():
                            self._fail(call, RuntimeError(f"the Ray engine for {self.name} was closed"))
                        return
                    busy = {id(actor) for _, _, actor in flying.values()}
                    for actor in self.actors:
                        while self._queue and self._queue[0][0].done.is_set():  # its call failed
                            self._queue.popleft()
                        if self._queue and actor.up and id(actor) not in busy:
                            call, c = self._queue.popleft()
                            flying[actor.handle.generate.remote([p.request for p in call.chunks[c]])] = (call, c, actor)
                            busy.add(id(actor))
                    queued = bool(self._queue)
                    idle = any(actor.up and id(actor) not in busy for actor in self.actors)
                if not flying:
                    if not queued:
                        self._wake.wait(timeout=1.0)  # a new call
                        self._wake.clear()
                    elif all(a.dead for a in self.actors):
                        with self._lock:
                            calls = {id(call): call for call, _ in self._queue}
                            self._queue.clear()
                        for call in calls.values():
                            self._fail(call, RuntimeError(
                                f"every Ray worker for {self.name} is dead (executor.max_restarts="
                                f"{self.ex.max_restarts} used up); what was written is kept: rerun to resume"))
                    else:
                        self._recover(wait_s=1.0)  # every actor is restarting: wait for the first back
                    continue
                # an idle actor looks for new calls every 50 ms; with every actor busy, wait for an answer
                ready, _ = ray.wait(list(flying), num_returns=1, timeout=0.05 if idle else None)
                if not ready:
                    continue
                call, c, actor = flying.pop(ready[0])
                try:
                    out = ray.get(ready[0])
                except self._lost as exc:
                    self._lose(actor, exc)
                    call.tries[c] += 1
                    if call.tries[c] > self.ex.max_retries:
                        error = RuntimeError(
                            f"a chunk of {len(call.chunks[c])} requests for {self.name} lost its Ray worker "
                            f"{call.tries[c]} times (executor.max_retries={self.ex.max_retries}); what was written "
                            "is kept: rerun to resume")
                        error.__cause__ = exc
                        self._fail(call, error)
                    else:
                        with self._lock:
                            self._queue.appendleft((call, c))
                    continue
                except Exception as exc:  # the engine's own error in the actor: the call raises it
                    self._fail(call, exc)
                    continue
                actor.chunks += 1
                actor.samples += sum(p.request.sampling.n for p in call.chunks[c])
                tick(sum(len(o) for o in out))
                call.outputs[c] = out
                call.left -= 1
                if not call.left and not call.done.is_set():
                    call.done.set()
        except BaseException as exc:  # noqa: BLE001 - no caller may wait for ever on a dead dispatcher
            log.error("ray dispatcher for %s stopped: %s", self.name, exc)
            with self._lock:
                calls = [call for call, _ in self._queue] + [call for call, _, _ in flying.values()]
                self._queue.clear()
            for call in calls:
                self._fail(call, RuntimeError(f"the Ray engine for {self.name} stopped: {exc}"))
            raise

    def close(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self._closing = True
            calls = [call for call, _ in getattr(self, "_queue", ())]
        for call in calls:
            self._fail(call, RuntimeError(f"the Ray engine for {self.name} was closed"))
        if getattr(self, "_dispatcher", None) is not None:
            self._wake.set()
            self._dispatcher.join(timeout=60)
        actors, self.actors = getattr(self, "actors", []), []
        if not actors:
            return
        import ray

        for actor in actors:
            log.info("ray worker %d for %s: %d chunks, %d samples, %d failure(s)", actor.slot, self.name,
                     actor.chunks, actor.samples, actor.failures)
        if not ray.is_initialized():
            return
        closing = [a.handle.close.remote() for a in actors if not a.dead]
        try:
            ray.get(closing, timeout=120)
        except Exception as exc:  # best effort: killing the actor frees it anyway
            log.debug("ray worker close: %s", exc)
        for actor in actors:
            ray.kill(actor.handle, no_restart=True)
