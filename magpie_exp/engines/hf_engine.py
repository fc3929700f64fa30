"""Hugging Face transformers engine: the fallback where vLLM is unavailable (and the reference in benchmarks).

Requests with identical sampling settings are expanded to ``n`` rows each and batched with left padding. HF
keeps stepping finished rows until the longest row is done, so token counts here count only useful tokens, up
to the first stop. On a 2-core CPU use bf16 and one thread (``engine.num_threads``): two threads collapse as
soon as anything else runs (measured on SmolLM2-135M on this project's 2-core machines).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING
from collections.abc import Sequence

import torch

from magpie_exp.console import tick
from magpie_exp.engines import Completion, Engine, EngineInfo, Request, SamplingSpec
from magpie_exp.engines.hardware import resolve_dtype

if TYPE_CHECKING:
    from magpie_exp.config import EngineConfig, GeneratorConfig

log = logging.getLogger(__name__)


class _BanFirstToken:
    """transformers logits processor: ban ids at the first generated position of each row."""

    def __init__(self, banned: Sequence[int], prompt_len: int) -> None:
        self.banned = list(banned)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] == self.prompt_len:
            scores[:, self.banned] = float("-inf")
        return scores


class HFEngine(Engine):
    def __init__(self, cfg: EngineConfig, generator: GeneratorConfig, model_path: str, seed: int) -> None:
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(cfg.num_threads)
        self.batch_size = cfg.batch_size
        self.seed = seed
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=generator.trust_remote_code)
        dtype = resolve_dtype(cfg.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype), trust_remote_code=generator.trust_remote_code
        )
        self.model.eval()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        self.info = EngineInfo(kind="hf", version=transformers.__version__, model=model_path, extra={"dtype": dtype})

    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        results: list[list[Completion | None]] = [[None] * r.sampling.n for r in requests]
        groups: dict[SamplingSpec, list[tuple[int, int]]] = defaultdict(list)
        for i, request in enumerate(requests):
            spec = request.sampling
            key = SamplingSpec(**{**spec.__dict__, "n": 1, "seed": None})
            groups[key].extend((i, j) for j in range(spec.n))
        for spec, rows in groups.items():
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                first = requests[batch[0][0]].sampling.seed
                torch.manual_seed(self.seed if first is None else first)
                for (i, j), completion in zip(batch, self._generate_batch([requests[i].prompt_token_ids for i, _ in batch], spec), strict=True):
                    results[i][j] = completion
                tick(len(batch))
        return [[c for c in row if c is not None] for row in results]

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[list[int]], spec: SamplingSpec) -> list[Completion]:
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + list(p) for p in prompts])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        sampling = spec.temperature > 0
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=spec.max_tokens,
            do_sample=sampling,
            pad_token_id=self.pad_id,
            eos_token_id=list(spec.stop_token_ids) or None,
            repetition_penalty=spec.repetition_penalty,
        )
        if sampling:
            kwargs.update(temperature=spec.temperature, top_p=spec.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if spec.stop:
            kwargs.update(stop_strings=list(spec.stop), tokenizer=self.tokenizer)
        if spec.ban_first_token_ids:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList([_BanFirstToken(spec.ban_first_token_ids, width)])
        if spec.logprobs:
            kwargs.update(return_dict_in_generate=True, output_logits=True)
        output = self.model.generate(**kwargs)
        top: list[tuple[dict[int, float], ...]] = [()] * len(prompts)
        if spec.logprobs:  # the raw model distribution at each position (before sampling), as vLLM returns
            logits, output = output.logits, output.sequences
            per_step = [torch.log_softmax(step.float(), dim=-1).topk(spec.logprobs, dim=-1) for step in logits]
            top = [tuple(dict(zip(s.indices[b].tolist(), s.values[b].tolist(), strict=True)) for s in per_step)
                   for b in range(len(prompts))]
        stop_ids = set(spec.stop_token_ids)
        completions = []
        for b, row in enumerate(output[:, width:].tolist()):
            finish, kept = "length", row
            for k, token in enumerate(row):
                if token in stop_ids:
                    finish, kept = "stop", row[:k]
                    break
            text = self.tokenizer.decode(kept, skip_special_tokens=spec.skip_special_tokens)
            for stop in spec.stop:
                if stop in text:
                    text, finish = text[: text.index(stop)], "stop"
                    kept = self.tokenizer.encode(text, add_special_tokens=False)
            if finish == "length" and len(kept) < spec.max_tokens:
                finish = "stop"  # ended on a token we do not count (pad after an eos the model emitted)
            completions.append(Completion(text, len(kept), finish, top[b][:max(len(kept), 1)] if top[b] else ()))
        return completions

    def close(self) -> None:
        self.model = None
