"""Taggers: each adds named fields to ``record["tags"]`` for a batch of records, and says how each one went.

A tagger returns one dict per record: its fields (``None`` where it failed) and, on failure, ``_error`` with
the reason ("truncated", "invalid_json: ...", "schema: ...", "unparsable: guard verdict ..."). Failures are
counted by the stage and kept in ``tags.errors``; they are never turned into a label.

Tags describe the first exchange of a conversation (first user turn and its answer), as the official tags do.
Models are shared: every tagger asks the stage's ``chat.Models`` pool for a chat model, so the judge, a stand-in
guard of the same model and the judge-score reward all run on one vLLM engine, started once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Sequence

from magpie_exp.config import ConfigError, GeneratorConfig, TagConfig
from magpie_exp.engines import Request, SamplingSpec
from magpie_exp.labels import GUARD_REGEX, urial_prompt, JudgeTask, guard_prompt, judge_tasks, parse_guard, parse_judgement
from magpie_exp.models import resolve_model
from magpie_exp.chat import Models
from magpie_exp.rating import answer_ids, rate
from magpie_exp.records import Record, first_exchange

log = logging.getLogger(__name__)
TagRow = dict[str, Any]


@dataclass(frozen=True)
class TagContext:
    """What taggers read: the ``tag`` section, and the few facts they need from the rest of the config (built by
    the stages: ``stages.common.tag_context``)."""

    tag: TagConfig
    generator: GeneratorConfig  # whose tokenizer counts tokens (length tagger)
    cache_dir: Path
    seed: int
    eval_data_dir: str | None = None  # evaluation.data_dir (decontam reads the evaluation sets)
    lm_eval_local_data: dict[str, Any] = field(default_factory=dict)  # evaluation.lm_eval.local_data (decontam)


class Tagger:
    name: str = ""
    fields: tuple[str, ...] = ()

    def __init__(self, ctx: TagContext, models: Models) -> None:
        self.ctx, self.tc, self.models = ctx, ctx.tag, models

    def model_ids(self) -> set[str]:
        """Identities of the pooled chat models this tagger uses (to close engines after their last user)."""
        return set()

    def prepare(self) -> None:
        """Load what can fail on bad config before any shard is written."""

    def run(self, records: Sequence[Record]) -> list[TagRow]:
        raise NotImplementedError

    def close(self) -> None:
        """Free models that are not pooled."""

    def model_name(self) -> str | None:
        return None


class LengthTagger(Tagger):
    name = "length"
    fields = ("instruction_length", "response_length", "instruction_tokens", "response_tokens")

    def prepare(self) -> None:
        from transformers import AutoTokenizer

        path = resolve_model(self.ctx.generator.model, self.ctx.cache_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=self.ctx.generator.trust_remote_code)

    def model_name(self) -> str:
        return f"{self.ctx.generator.name} tokenizer"

    def run(self, records: Sequence[Record]) -> list[TagRow]:
        rows = []
        for record in records:
            ins, res = first_exchange(record)
            rows.append({"instruction_length": len(ins), "response_length": len(res),
                         "instruction_tokens": len(self.tokenizer.encode(ins, add_special_tokens=False)),
                         "response_tokens": len(self.tokenizer.encode(res, add_special_tokens=False))})
        return rows


class LanguageTagger(Tagger):
    """ISO 639-1 code of the instruction's language (lingua over all languages, as the official tagger)."""

    name = "language"
    fields = ("language",)

    def prepare(self) -> None:
        from lingua import LanguageDetectorBuilder

        self.detector = LanguageDetectorBuilder.from_all_languages().build()

    def model_name(self) -> str:
        return "lingua"

    def run(self, records: Sequence[Record]) -> list[TagRow]:
        texts = [first_exchange(r)[0] for r in records]
        found = self.detector.detect_languages_in_parallel_of(texts)
        rows: list[TagRow] = []
        for text, lang in zip(texts, found, strict=True):
            if lang is None:
                rows.append({"language": None, "_error": "empty" if not text.strip() else "undetected"})
            else:
                rows.append({"language": lang.iso_code_639_1.name})
        return rows


class JudgeTagger(Tagger):
    """quality / difficulty / task_category / judge_score from the judge.

    ``tag.judge_mode=logprobs`` (the default): the ratings (quality, difficulty, judge_score) are asked as a number
    alone and read from the judge's token probabilities in one forward pass (``magpie_exp/rating.py``): the most
    probable label, the expected score and the distribution. ``explain``, and task_category in either mode: one
    JSON-schema-constrained answer with its explanation.
    """

    task_name = ""

    def __init__(self, ctx: TagContext, models: Models) -> None:
        super().__init__(ctx, models)
        self.task: JudgeTask = judge_tasks(ctx.tag.explanation_chars, ctx.tag.judge_mode)[self.task_name]
        self.fields = tuple(self.task.fields.values())

    def model_ids(self) -> set[str]:
        return {self.models.identity(self.tc.judge)}

    def prepare(self) -> None:
        self.judge = self.models.get("tag.judge", self.tc.judge)

    def model_name(self) -> str:
        return self.tc.judge.name

    def judge_records(self, task: JudgeTask, pairs: Sequence[tuple[str, str]]) -> list[tuple[dict[str, Any], str | None]]:
        if task.rating is not None:
            prompts = [self.judge.chat_ids([{"role": "user", "content": task.render(i, r)}]) for i, r in pairs]
            seqs = answer_ids(task.rating, lambda a: self.judge.tokenizer.encode(a, add_special_tokens=False))
            return rate(task.rating, prompts, seqs, self.judge.generate, self.tc.judge_top_logprobs, self.ctx.seed,
                        self.tc.judge_min_mass)
        spec = SamplingSpec(temperature=0.0, max_tokens=self.tc.judge_max_tokens, json_schema=task.schema_json,
                            seed=self.ctx.seed)
        requests = [Request(self.judge.chat_ids([{"role": "user", "content": task.render(i, r)}]), spec) for i, r in pairs]
        return [parse_judgement(task, c.text, c.finish_reason) for c in self.judge.generate(requests)]

    def run(self, records: Sequence[Record]) -> list[TagRow]:
        rows = []
        for fields, error in self.judge_records(self.task, [first_exchange(r) for r in records]):
            rows.append({**fields, **({"_error": error} if error else {})})
        return rows


class QualityTagger(JudgeTagger):
    name = task_name = "quality"


class DifficultyTagger(JudgeTagger):
    name = task_name = "difficulty"


class TaskCategoryTagger(JudgeTagger):
    name = task_name = "task_category"


class JudgeScoreTagger(JudgeTagger):
    name = task_name = "judge_score"


class SafetyTagger(Tagger):
    """A guard model's verdict on the first exchange: ``safety`` (safe/unsafe) and ``safety_categories``.

    ``tag.guard_format=chat_template``: the guard's own chat template builds the classification prompt from the
    [user, assistant] conversation (Llama Guard 2/3). ``instruction``: our Llama-Guard-style request goes to a
    chat model as a user turn (a stand-in guard). Either way the verdict is constrained to the
    "safe" / "unsafe\\nS<n>[,S<n>...]" format and parsed strictly.
    """

    name = "safety"
    fields = ("safety", "safety_categories", "safety_raw")

    def model_ids(self) -> set[str]:
        return {self.models.identity(self.tc.guard)}

    def prepare(self) -> None:
        self.guard = self.models.get("tag.guard", self.tc.guard)

    def model_name(self) -> str:
        return self.tc.guard.name

    def prompt_ids(self, instruction: str, response: str) -> list[int]:
        if self.tc.guard_format == "instruction":
            return self.guard.chat_ids([{"role": "user", "content": guard_prompt(instruction, response)}])
        return self.guard.chat_ids([{"role": "user", "content": instruction}, {"role": "assistant", "content": response}])

    def run(self, records: Sequence[Record]) -> list[TagRow]:
        spec = SamplingSpec(temperature=0.0, max_tokens=24, regex=GUARD_REGEX, seed=self.ctx.seed)
        requests = [Request(self.prompt_ids(*first_exchange(r)), spec) for r in records]
        rows = []
        for completion in self.guard.generate(requests):
            label, categories, error = parse_guard(completion.text)
            row = {"safety": label, "safety_categories": categories if label else None, "safety_raw": completion.text}
            rows.append({**row, **({"_error": error} if error else {})})
        return rows


class Scorer:
    """Reward of (instruction, response) pairs: a sequence-classification model, or the judge's 1-10 score."""

    def __init__(self, ctx: TagContext, models: Models) -> None:
        self.tc = ctx.tag
        self.rm = None
        self.judge: JudgeTagger | None = None
        if self.tc.reward_source == "model":
            from magpie_exp.scoring import RewardModel

            rmc = self.tc.reward_model
            path = resolve_model(rmc.model, ctx.cache_dir, key="tag.reward_model.model")
            self.rm = RewardModel(path, rmc.batch_size, rmc.max_length, rmc.dtype, rmc.trust_remote_code)
        else:
            self.judge = JudgeScoreTagger(ctx, models)
            self.judge.prepare()

    @property
    def name(self) -> str:
        return self.tc.reward_model.name if self.tc.reward_source == "model" else f"{self.tc.judge.name} (judge score)"

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float | None, str | None]]:
        if self.rm is not None:
            convs = [[{"role": "user", "content": i}, {"role": "assistant", "content": r}] for i, r in pairs]
            return [(s, None) for s in self.rm.score(convs)]
        assert self.judge is not None
        out = self.judge.judge_records(self.judge.task, pairs)
        return [(None if f["judge_score"] is None else float(f["judge_score"]), e) for f, e in out]

    def close(self) -> None:
        self.rm = None


def shared_scorer(ctx: TagContext, models: Models) -> Scorer:
    """The stage's one reward scorer (a reward model is loaded once for reward, base_reward and pair)."""
    return models.shared("scorer", lambda: Scorer(ctx, models))


def shared_embedder(ctx: TagContext, models: Models) -> Any:
    """The stage's one sentence embedder (embedding and decontam share it)."""
    def make() -> Any:
        from magpie_exp.scoring import Embedder

        e = ctx.tag.embedder
        return Embedder(e.model, e.batch_size, e.device)

    return models.shared("embedder", make)


class RewardTagger(Tagger):
    name = "reward"
    fields = ("reward",)

    def model_ids(self) -> set[str]:
        return {self.models.identity(self.tc.judge)} if self.tc.reward_source == "judge" else set()

    def prepare(self) -> None:
        self.scorer = shared_scorer(self.ctx, self.models)

    def model_name(self) -> str:
        return self.scorer.name

    def run(self, records: Sequence[Record]) -> list[TagRow]:
        pairs = [first_exchange(r) for r in records]
        return [{"reward": s, **({"_error": e} if e else {})} for s, e in self.scorer.score(pairs)]


# URIAL-style prompt for a base model (our wording; in-context examples show the answer style).
class BaseRewardTagger(Tagger):
    """The paper's reward difference: a base model answers URIAL-style, the same reward scores that answer.

    Writes ``base_response``, ``base_reward``; the stage adds ``reward_difference = reward - base_reward``.
    """

    name = "base_reward"
    fields = ("base_response", "base_finish_reason", "base_reward")

    def model_ids(self) -> set[str]:
        ids = {self.models.identity(self.tc.base_model, self.tc.base_engine)}
        return ids | ({self.models.identity(self.tc.judge)} if self.tc.reward_source == "judge" else set())

    def prepare(self) -> None:
        self.base = self.models.get("tag.base_model", self.tc.base_model, self.tc.base_engine)
        self.scorer = shared_scorer(self.ctx, self.models)

    def model_name(self) -> str:
        return f"{self.tc.base_model.name} (URIAL) scored by {self.scorer.name}"

    def run(self, records: Sequence[Record]) -> list[TagRow]:
        spec = SamplingSpec(temperature=0.0, max_tokens=self.tc.base_max_tokens, stop=("```", "# Query"),
                            seed=self.ctx.seed)
        instructions = [first_exchange(r)[0] for r in records]
        outs = self.base.generate([Request(self.base.raw_ids(urial_prompt(i)), spec) for i in instructions])
        answers = [o.text.strip() for o in outs]
        scores = self.scorer.score(list(zip(instructions, answers, strict=True)))
        rows = []
        for out, answer, (score, error) in zip(outs, answers, scores, strict=True):
            row = {"base_response": answer, "base_finish_reason": out.finish_reason, "base_reward": score}
            rows.append({**row, **({"_error": error} if error else {})})
        return rows


class EmbeddingTagger(Tagger):
    """Unit-norm sentence embeddings of the instruction (kept beside the shard as .npy for dedup and plots)."""

    name = "embedding"
    fields = ()

    def prepare(self) -> None:
        self.embedder = shared_embedder(self.ctx, self.models)

    def model_name(self) -> str:
        return self.tc.embedder.name

    def embed(self, records: Sequence[Record]):  # noqa: ANN201 - np.ndarray
        return self.embedder.encode([first_exchange(r)[0] for r in records])

    def run(self, records: Sequence[Record]) -> list[TagRow]:
        return [{} for _ in records]

    def close(self) -> None:
        self.embedder = None


class DecontamTagger(Tagger):
    """Whether a conversation reproduces an evaluation prompt (word n-grams and embedding similarity; see
    ``magpie_exp/decontam.py``): ``contaminated``, the benchmark and item matched, and both figures."""

    name = "decontam"
    fields = ("contaminated", "contam_benchmark", "contam_item", "contam_ngram_overlap", "contam_similarity",
              "contam_method")

    def sources(self) -> tuple[list[Any], dict[str, int], dict[str, str]]:
        """(prompts, items per evaluation set, unchecked set -> why), read once."""
        if getattr(self, "_sources", None) is None:
            from magpie_exp.decontam import benchmark_prompts

            self._sources = benchmark_prompts(self.tc.decontam, self.ctx.eval_data_dir, self.ctx.cache_dir,
                                              dict(self.ctx.lm_eval_local_data))
        return self._sources

    def prepare(self) -> None:
        from magpie_exp.decontam import Index, prompt_vectors

        dc = self.tc.decontam
        cache = self.ctx.cache_dir
        prompts, _, self.unchecked = self.sources()
        if not prompts:
            raise ConfigError(f"tag.decontam.benchmarks: none of {list(dc.benchmarks)} is available locally "
                              f"({self.unchecked}); point evaluation.data_dir at the evaluation files, or drop "
                              "decontam from tag.taggers")
        for name, why in self.unchecked.items():
            log.warning("decontam: %s not checked: %s", name, why)
        self.embedder = shared_embedder(self.ctx, self.models) if dc.similarity is not None else None
        vectors = None
        if self.embedder is not None:
            vectors = prompt_vectors(prompts, self.embedder.encode, self.tc.embedder.model, cache)
        self.index = Index(prompts, dc.ngram, vectors)

    def model_name(self) -> str:
        dc = self.tc.decontam
        _, counts, unchecked = self.sources()
        sets = ", ".join(f"{k} ({v})" for k, v in counts.items())
        how = [f"{dc.ngram}-gram overlap >= {dc.ngram_overlap}" if dc.ngram_overlap is not None else "",
               f"{self.tc.embedder.name} cosine >= {dc.similarity}" if dc.similarity is not None else ""]
        return (f"{' or '.join(h for h in how if h)} against {sets}"
                + (f"; not checked: {', '.join(unchecked)}" if unchecked else ""))

    def run(self, records: Sequence[Record]) -> list[TagRow]:
        dc = self.tc.decontam
        turns = [[m["content"] for m in r["messages"] if m["role"] == "user"] for r in records]
        answers = [[m["content"] for m in r["messages"] if m["role"] == "assistant"] if dc.responses else []
                   for r in records]
        flat = None
        if self.embedder is not None and any(turns):
            flat = self.embedder.encode([t for ts in turns for t in ts])
        rows, offset, vectors = [], 0, None
        for user, said in zip(turns, answers, strict=True):
            if flat is not None:
                vectors, offset = flat[offset:offset + len(user)], offset + len(user)
            m = self.index.match([*user, *said], vectors, dc.ngram_overlap, dc.similarity)
            rows.append({"contaminated": m.method is not None, "contam_benchmark": m.benchmark, "contam_item": m.item,
                         "contam_ngram_overlap": m.ngram_overlap, "contam_similarity": m.similarity,
                         "contam_method": m.method})
        return rows

    def close(self) -> None:
        self.embedder = None


TAGGER_CLASSES: dict[str, type[Tagger]] = {
    cls.name: cls
    for cls in (LengthTagger, LanguageTagger, EmbeddingTagger, DecontamTagger, SafetyTagger, BaseRewardTagger, RewardTagger,
                QualityTagger, DifficultyTagger, TaskCategoryTagger, JudgeScoreTagger)
}
# Run order: cheap CPU taggers first, then by model so each engine starts once and closes after its last user.
ORDER = tuple(TAGGER_CLASSES)
