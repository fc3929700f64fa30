"""The one place stages get engines from: an engine per model identity, started on first use, shared by every
user of that model, closed by whoever owns the pool.

One identity rule (``engine_identity``): the engine settings, the executor, the model, its context length and
parallelism, remote code and the seed. The generator, the tag judge, a stand-in guard of the same model, the
pair stage's response model and the evaluation judge are often one model (on CPU: SmolLM2 for all of them), so
one engine serves them all.

Who owns it:
- a stage run on its own (``magpie-exp stage=tag``, a test) makes its own pool (``EnginePool.of``) and closes it
  at the end; engines a caller lends (``engines={model: engine}``) are used and never closed;
- the pipeline makes one pool for the whole run and lends it to each step (the step never closes it); it closes
  it before training, which needs the memory (on a GPU node, the GPUs), and at the end. On CPU the engines of the
  models the config shares are also kept for later runs in this process (the jobs of a multirun share one
  process), and ``lend_engine`` offers an engine the caller owns (a test session's, a notebook's) to all of them.

A user of a model gives it back with ``release`` once no later user needs it (the tag stage, between taggers;
the evaluate stage, an evaluated model): the pool closes it then, unless it is lent, or it belongs to a model
several pipeline steps share (the pipeline's pool closes those itself, or keeps them on CPU).
"""

from __future__ import annotations

import atexit
import json
import logging
from collections.abc import Mapping
from pathlib import Path

from magpie_exp.config import EngineConfig, GeneratorConfig, MagpieConfig, as_plain
from magpie_exp.engines import Engine, build_engine

log = logging.getLogger(__name__)

_KEPT: dict[str, Engine] = {}  # engines that outlive one pipeline run (the jobs of a multirun share one process)
_LENT: set[str] = set()  # identities of engines lent by the caller (never closed here)
_HOOKED = False


def engine_identity(cfg: MagpieConfig, gen: GeneratorConfig, engine_cfg: EngineConfig | None = None) -> str:
    """What makes two engines interchangeable: engine settings, executor, model, context, parallelism, seed."""
    return json.dumps([as_plain(engine_cfg or cfg.engine), as_plain(cfg.executor), gen.model, gen.max_model_len,
                       gen.tensor_parallel_size, gen.trust_remote_code, cfg.seed], sort_keys=True)


def shared_models(cfg: MagpieConfig) -> list[GeneratorConfig]:
    """The models several steps of a run use on the engine group: generator, response generator, tag judge and
    guard, and the evaluation judge unless it has an engine of its own."""
    ev = cfg.evaluation
    models = [cfg.generator, cfg.response_generator, cfg.tag.judge, cfg.tag.guard, ev.judge if ev.judge_engine is None else None]
    return [g for g in models if g is not None]


def lend_engine(cfg: MagpieConfig, gen: GeneratorConfig, engine: Engine) -> None:
    """Offer an engine the caller owns (a test session's, a notebook's) to every later pipeline run in this process."""
    key = engine_identity(cfg, gen)
    _keep(key, engine)
    _LENT.add(key)


def _keep(key: str, engine: Engine) -> None:
    """Keep ``engine`` for later runs in this process, and close it when the process exits.

    The exit hook is registered here, after the engine exists: atexit runs hooks last-registered first, and
    multiprocessing's own hook (registered when vLLM first imports it) joins the engine's worker process, which
    only ends once the engine is closed. Registered at import time, the hook came too late and the process
    hung at exit."""
    global _HOOKED
    _KEPT[key] = engine
    if not _HOOKED:
        atexit.register(_close_kept)
        _HOOKED = True


def _close_kept() -> None:
    while _KEPT:
        key, engine = _KEPT.popitem()
        if key in _LENT:
            continue
        try:
            engine.close()
        except Exception:  # interpreter shutdown: best effort
            pass


class EnginePool:
    """Engines by identity for one stage run or one pipeline run (see the module docstring)."""

    def __init__(self, cfg: MagpieConfig, given: Mapping[str, Engine] | None = None, pipeline: bool = False,
                 keep: bool = False) -> None:
        self.cfg = cfg
        # lent engines by model spec, or by role ("generator" / "response_generator": two engines of one model)
        self.given = dict(given or {})
        self.built: dict[str, Engine] = {}  # identity -> engine this pool started or took from the kept ones
        # the pipeline's pool holds the engines of the models several steps share until it closes them itself
        # (before training, at the end); a stage's release closes the others (an evaluated model, a base model)
        self.shared = {engine_identity(cfg, g) for g in shared_models(cfg)} if pipeline else set()
        # and on keep (the pipeline on CPU) those engines outlive the run, for the next job in this process
        self.keep = self.shared if keep else set()

    @property
    def default_engine(self) -> EngineConfig:
        """The engine group (``engine``): what a model runs on unless it names an engine of its own."""
        return self.cfg.engine

    @property
    def cache_dir(self) -> Path:
        return Path(self.cfg.paths.cache_dir)

    @classmethod
    def of(cls, cfg: MagpieConfig, engines: EnginePool | Mapping[str, Engine] | None) -> tuple[EnginePool, bool]:
        """The pool a stage uses, and whether the stage owns it: the pipeline's (lent), or its own around the
        engines a caller lends (``{model spec: engine}``, or ``None``)."""
        if isinstance(engines, EnginePool):
            return engines, False
        return cls(cfg, engines), True

    def identity(self, gen: GeneratorConfig, engine_cfg: EngineConfig | None = None) -> str:
        return engine_identity(self.cfg, gen, engine_cfg)

    def _lent(self, gen: GeneratorConfig, engine_cfg: EngineConfig | None, role: str | None) -> Engine | None:
        """A caller's engine for ``gen`` on the engine group (given for its role or its model, or lent to every run)."""
        if engine_cfg is not None and engine_cfg != self.cfg.engine:
            return None
        if role is not None and role in self.given:
            return self.given[role]
        if gen.model in self.given:
            return self.given[gen.model]
        key = self.identity(gen)
        return _KEPT.get(key) if key in _LENT else None

    def engine(self, gen: GeneratorConfig, engine_cfg: EngineConfig | None = None, key: str = "generator.model",
               role: str | None = None, path: str | None = None) -> Engine:
        """The engine for ``gen`` on ``engine_cfg`` (default: the engine group), started on first use; ``role``
        (generate's "generator" / "response_generator") finds an engine a caller lent for that role; ``path`` is
        the model folder where the caller has resolved it already (else resolved here)."""
        lent = self._lent(gen, engine_cfg, role)
        if lent is not None:
            return lent
        ident = self.identity(gen, engine_cfg)
        if ident not in self.built and (wider := self._wider(ident)) is not None:
            return wider
        if ident not in self.built:
            if ident in self.keep and ident in _KEPT:
                log.info("reusing the %s engine for %s from an earlier run in this process", self.cfg.engine.type, gen.name)
                self.built[ident] = _KEPT[ident]
            else:
                from magpie_exp.models import resolve_model

                if self.keep:  # free kept engines this run does not use (lent ones belong to their lender)
                    for old in [k for k in _KEPT if k not in self.keep and k not in _LENT]:
                        _KEPT.pop(old).close()
                eng = engine_cfg or self.cfg.engine
                hosted = eng.type == "openai" and eng.api == "chat"  # the server's model name; no weights here
                if path is None:
                    path = gen.model if hosted else resolve_model(gen.model, Path(self.cfg.paths.cache_dir), key=key)
                log.info("starting the %s engine for %s (executor %s)", eng.type, gen.name, self.cfg.executor.type)
                self.built[ident] = build_engine(eng, gen, path, self.cfg.seed, self.cfg.executor)
                if ident in self.keep:
                    _keep(ident, self.built[ident])
        return self.built[ident]

    def _wider(self, ident: str) -> Engine | None:
        """An engine already up for the same model and settings with at least this context (the evaluated
        generator asks for ``evaluation.max_model_len``, the generator's engine has its own, longer one)."""
        want = json.loads(ident)
        for key, engine in [*self.built.items(), *((k, e) for k, e in _KEPT.items() if k in self.keep)]:
            have = json.loads(key)
            if have[:3] + have[4:] == want[:3] + want[4:] and have[3] >= want[3]:
                return engine
        return None

    def owns(self, engine: Engine) -> bool:
        """Whether closing ``engine`` is this pool's business (it started it and nobody else keeps it)."""
        return any(e is engine for e in self.built.values()) and not any(e is engine for e in _KEPT.values())

    def release(self, engine: Engine) -> None:
        """``engine``'s last user is done: close it now, unless it is lent or kept for a later run, or the pool
        is the pipeline's (a later step may use the model)."""
        if not any(e is engine for k, e in self.built.items() if k in self.shared):
            self._close(engine)

    def _close(self, engine: Engine) -> None:
        for ident, built in list(self.built.items()):
            if built is engine:
                if self.owns(engine):
                    engine.close()
                del self.built[ident]

    def close(self) -> None:
        """Release every engine this pool started; kept ones (CPU pipeline) stay up for the next run."""
        for engine in list(self.built.values()):
            self._close(engine)
