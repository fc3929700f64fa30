"""Inference engines behind one interface: in-process vLLM, Hugging Face transformers, OpenAI-compatible servers.

Every engine takes prompts as token ids (so no template text is tokenized twice and no second BOS appears),
samples ``n`` completions per prompt, and returns each completion's text, token count and finish reason.
Choose one with ``engine=vllm|hf|openai``; the same code runs vLLM-CPU here and CUDA vLLM on a GPU node.

    from magpie_exp.engines import Request, SamplingSpec, build_engine
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from collections.abc import Sequence

if TYPE_CHECKING:
    from magpie_exp.config import EngineConfig, ExecutorConfig, GeneratorConfig


@dataclass(frozen=True)
class SamplingSpec:
    """What to sample for one prompt. ``ban_first_token_ids`` may not be the first generated token.

    ``json_schema`` / ``regex`` ask for structured decoding (vLLM structured outputs, also over HTTP); the HF
    engine cannot constrain decoding and samples freely, so callers always validate what comes back.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    repetition_penalty: float = 1.0
    ban_first_token_ids: tuple[int, ...] = ()
    json_schema: str | None = None  # constrain the output to this JSON schema (JSON text): vllm, openai
    regex: str | None = None  # or to this regular expression: vllm, openai
    skip_special_tokens: bool = True  # False: keep special tokens in the text (reasoning markers to split on)
    logprobs: int = 0  # > 0: the top-k token ids and log-probabilities at each generated position: vllm, hf, openai

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Request:
    """A prompt as token ids; or, for chat endpoints (``engine.api=chat``, hosted judges), as chat messages."""

    prompt_token_ids: list[int]
    sampling: SamplingSpec
    messages: list[dict[str, str]] | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    token_count: int
    finish_reason: str  # "stop" (end of turn, stop string or stop id) or "length" (hit max_tokens)
    # with ``sampling.logprobs = k``: per generated position, token id -> log-probability of the model's top k
    # (raw model distribution, before any sampling constraint); empty otherwise
    top_logprobs: tuple[dict[int, float], ...] = ()


@dataclass
class EngineInfo:
    kind: str
    version: str
    model: str
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(ABC):
    """A text generator over token-id prompts."""

    info: EngineInfo
    # True when ``generate`` may be called from several threads at once and gains from it (the calls share a
    # server's or a cluster's batches): the generate stage then keeps ``generate.waves_in_flight`` waves going
    concurrent: bool = False

    # True when requests may join the running batch while earlier ones decode (``submit`` / ``advance``): the
    # generate stage then hands each shard's next requests to the engine as soon as the shard asks for them
    streams: bool = False

    @abstractmethod
    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        """One list of ``request.sampling.n`` completions per request, in request order."""

    def submit(self, requests: Sequence[Request]) -> int:
        """Queue ``requests`` as one call beside those already running (engines that ``stream``); its ticket."""
        raise NotImplementedError(f"{type(self).__name__} does not stream")

    def advance(self) -> list[tuple[int, list[list[Completion]]]]:
        """Run the engine a step; the submitted calls that finished during it, as (ticket, answers in request
        order). Engines that ``stream``."""
        raise NotImplementedError(f"{type(self).__name__} does not stream")

    def abort(self) -> None:  # noqa: B027 - engines that do not stream have nothing to drop
        """Drop every submitted call not yet returned by ``advance`` (engines that ``stream``)."""

    def close(self) -> None:  # noqa: B027 - engines without resources need no override
        """Release the model (engines hold GPU/CPU memory and worker processes)."""


def build_engine(engine: EngineConfig, generator: GeneratorConfig, model_path: str, seed: int,
                 executor: ExecutorConfig | None = None) -> Engine:
    """Build the engine that ``engine.type`` names for one generator model.

    With ``executor.type=ray`` an in-process engine (vllm, hf) runs as Ray actors instead (engines/ray_engine.py);
    an ``openai`` engine is a client of its servers either way.
    """
    if executor is not None and executor.type == "ray" and engine.type in ("vllm", "hf"):
        from magpie_exp.engines.ray_engine import RayEngine

        return RayEngine(engine, generator, model_path, seed, executor)
    if engine.type == "vllm":
        from magpie_exp.engines.vllm_engine import VLLMEngine

        return VLLMEngine(engine, generator, model_path, seed)
    if engine.type == "hf":
        from magpie_exp.engines.hf_engine import HFEngine

        return HFEngine(engine, generator, model_path, seed)
    if engine.type == "openai":
        from magpie_exp.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(engine, generator, model_path, seed)
    raise ValueError(f"engine.type must be one of vllm, hf, openai; got {engine.type!r}")
