"""Chat models below the stages: a model (judge, guard, base model, evaluated model) with its tokenizer, its chat
template and its engine, taken from the stage's engine pool on first use (``ChatModel``), and the chat models a
stage shares (``Models``): one per engine identity (``engines/pool.py``), so the judge, a stand-in guard of the
same model and the judge-score reward run on one engine, started once, and given back to the pool after its
last user. The tag, pair and evaluate stages use them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from magpie_exp.config import ConfigError, EngineConfig, GeneratorConfig
from magpie_exp.engines import Engine, Request, SamplingSpec
from magpie_exp.engines.pool import EnginePool
from magpie_exp.models import resolve_model

log = logging.getLogger(__name__)


class ChatModel:
    """A chat model (judge, guard or base) with its tokenizer and a lazily started engine."""

    def __init__(self, key: str, gen: GeneratorConfig, pool: EnginePool, engine_cfg: EngineConfig | None = None) -> None:
        from transformers import AutoTokenizer

        self.key, self.gen, self.pool = key, gen, pool
        self.own_engine = engine_cfg  # an engine config of its own (None: the engine group)
        self.engine_cfg = engine_cfg or pool.default_engine
        self.engine: Engine | None = None
        self.seconds = 0.0
        self.tokens = 0
        self.chat_api = self.engine_cfg.type == "openai" and self.engine_cfg.api == "chat"
        if self.chat_api:  # a hosted model: the server applies its own template; nothing to load here
            self.model_path, self.tokenizer = gen.model, None
            return
        self.model_path = resolve_model(gen.model, pool.cache_dir, key=f"{key}.model")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=gen.trust_remote_code)
        except OSError as exc:
            raise ConfigError(f"{key}.model: cannot load a tokenizer from '{gen.model}' ({exc.__class__.__name__}); "
                              "check the name, or download the model first") from exc
        if gen.chat_template is not None:
            from magpie_exp.generators import load_chat_template

            self.tokenizer.chat_template = load_chat_template(gen.chat_template)

    @property
    def constrains(self) -> bool:
        """Whether this model's engine honours json_schema / regex (vLLM in process or over /v1/completions)."""
        return self.engine_cfg.type == "vllm" or (self.engine_cfg.type == "openai" and not self.chat_api)

    def chat_request(self, messages: list[dict[str, str]], spec: SamplingSpec) -> Request | None:
        """A request for ``messages``; ``None`` when prompt plus ``spec.max_tokens`` exceed the model's context."""
        if self.chat_api:
            return Request([], spec, messages=messages)
        ids = self.chat_ids(messages)
        if len(ids) + spec.max_tokens > self.gen.max_model_len:
            return None
        return Request(ids, spec)

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        if self.tokenizer.chat_template is None:
            raise ConfigError(f"{self.key}.model: '{self.gen.model}' has no chat template; set {self.key}.chat_template")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  **self.gen.chat_template_kwargs)
        return self.raw_ids(text)

    def raw_ids(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos) and self.tokenizer("x").input_ids[:1] == [bos]:
            ids = [bos, *ids]
        return ids

    def started(self) -> Engine:
        """This model's engine, from the pool (started there on first use)."""
        if self.engine is None:
            self.engine = self.pool.engine(self.gen, self.own_engine, key=f"{self.key}.model", path=self.model_path)
        return self.engine

    def generate(self, requests: list[Request]) -> list[Any]:
        engine = self.started()
        start = time.perf_counter()
        out = engine.generate(requests)
        self.seconds += time.perf_counter() - start
        self.tokens += sum(c.token_count for o in out for c in o)
        return [o[0] for o in out]

    def close(self) -> None:
        """Give the engine back to the pool (which closes it unless it is lent or kept)."""
        if self.engine is not None:
            self.pool.release(self.engine)
        self.engine = None


class Models:
    """Chat models by engine identity, shared between taggers; each engine is given back after its last user."""

    def __init__(self, pool: EnginePool) -> None:
        self.pool = pool
        self.models: dict[str, ChatModel] = {}
        self._shared: dict[str, Any] = {}

    def shared(self, name: str, make: Callable[[], Any]) -> Any:
        """The one ``name`` of a stage (``make()`` on first use): a reward model loaded once for reward and base_reward,
        one sentence embedder for embedding and decontam. Closed (when it has ``close``) with the pool."""
        if name not in self._shared:
            self._shared[name] = make()
        return self._shared[name]

    def identity(self, gen: GeneratorConfig, engine_cfg: EngineConfig | None = None) -> str:
        return self.pool.identity(gen, engine_cfg)

    def get(self, key: str, gen: GeneratorConfig, engine_cfg: EngineConfig | None = None) -> ChatModel:
        """The shared chat model for ``gen``; ``engine_cfg`` (not the engine group) gets an engine of its own."""
        ident = self.identity(gen, engine_cfg)
        if ident not in self.models:
            self.models[ident] = ChatModel(key, gen, self.pool, engine_cfg=engine_cfg)
        return self.models[ident]

    def release(self, keep: set[str]) -> None:
        """Give back the engines of the models no later user needs (``keep``: identities still needed)."""
        for ident, model in list(self.models.items()):
            if ident not in keep and model.engine is not None:
                if self.pool.owns(model.engine):
                    log.info("closing the %s engine (%s)", model.key, model.gen.name)
                model.close()

    def close(self) -> None:
        for thing in self._shared.values():
            if hasattr(thing, "close"):
                thing.close()
        self._shared.clear()
        for model in self.models.values():
            model.close()
