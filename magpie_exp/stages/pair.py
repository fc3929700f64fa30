"""The pair stage: k responses per instruction in one request, reward-ranked into DPO preference pairs.

    magpie-exp stage=pair                                     # this config's curated records
    magpie-exp stage=pair pair.num_responses=5 pair.temperature=0.8 tag/reward_model=armorm-llama3-8b

For each record the response model (``response_generator``, default the generator, as in the paper) samples
``pair.num_responses`` answers to the first instruction in one request (n=k from one prompt: prefix caching),
the configured reward (``tag.reward_source``: a sequence-classification model or the judge score) scores them
in batches, and chosen = best, rejected = worst. A pair is dropped, and counted by reason, when fewer than two
responses were scored, when the best and worst tie, or when the margin is below ``pair.min_margin``. With
``pair.length_control`` the chosen answer is the best one no longer than ``pair.length_ratio`` times the
rejected one, so the pair does not teach "longer is better". Output rows are TRL's conversational preference
format (``prompt`` / ``chosen`` / ``rejected`` message lists) with every score kept.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Sequence

from magpie_exp import __version__
from magpie_exp.config import ConfigError, MagpieConfig
from magpie_exp.console import Progress
from magpie_exp.engines import Engine, Request, SamplingSpec
from magpie_exp.engines.pool import EnginePool
from magpie_exp.files import stable_seed
from magpie_exp.generators import load_side
from magpie_exp.records import Record, first_exchange, write_jsonl
from magpie_exp.shards import ShardStore, wait_for_writer
from magpie_exp.stages.common import StageResult, check_writable, finish, finished, open_input, tag_context
from magpie_exp.stages.keys import config_hash, pair_payload, stage_folder
from magpie_exp.chat import Models
from magpie_exp.taggers import Scorer, shared_scorer
from magpie_exp.templates import response_prompt

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Choice:
    chosen: int | None
    rejected: int | None
    margin: float | None
    reason: str | None  # why no pair was formed


def choose_pair(scores: Sequence[float | None], lengths: Sequence[int], min_margin: float = 0.0,
                length_control: bool = False, length_ratio: float = 1.5) -> Choice:
    """Best vs worst by score (ties broken by index); ``None`` scores are left out."""
    scored = [(s, i) for i, s in enumerate(scores) if s is not None]
    if len(scored) < 2:
        return Choice(None, None, None, "fewer than 2 scored responses")
    worst_score, worst = min(scored)
    if length_control:
        limit = length_ratio * max(lengths[worst], 1)
        scored = [(s, i) for s, i in scored if lengths[i] <= limit and i != worst]
        if not scored:
            return Choice(None, None, None, "length control: no other response short enough")
    best_score, best = max(scored, key=lambda si: (si[0], -si[1]))
    margin = best_score - worst_score
    if margin == 0:
        return Choice(None, None, 0.0, "tie")
    if margin < min_margin:
        return Choice(None, None, margin, f"margin < {min_margin}")
    return Choice(best, worst, margin, None)


class PairStage:
    def __init__(self, cfg: MagpieConfig, pool: EnginePool, owned: bool = False) -> None:
        self.cfg, self.p, self.owned = cfg, cfg.pair, owned  # owned: the pool is this stage's to close
        gen = cfg.response_generator or cfg.generator
        key = "response_generator" if cfg.response_generator is not None else "generator"
        self.side = load_side(key, gen, Path(cfg.paths.cache_dir))
        self.models = Models(pool)
        self.chat = self.models.get(key, gen)
        self.scorer: Scorer | None = None
        self.seconds = {"generate": 0.0, "score": 0.0}

    def spec(self, seed: int) -> SamplingSpec:
        r = self.side.cfg.response
        return SamplingSpec(n=self.p.num_responses, temperature=self.p.temperature, top_p=self.p.top_p,
                            max_tokens=self.p.max_tokens or r.max_tokens, stop=self.side.response_stops.strings,
                            stop_token_ids=self.side.response_stops.token_ids, seed=seed,
                            repetition_penalty=r.repetition_penalty,
                            skip_special_tokens=self.side.reasoning_format == "none")

    def make_shard(self, records: list[Record], stats: Counter) -> list[dict[str, Any]]:
        prompts = [[{"role": "user", "content": first_exchange(r)[0]}] for r in records]
        seeds = [stable_seed(self.cfg.seed, r["id"], "pair") for r in records]
        texts_in = [response_prompt(self.side.render, p) for p in prompts]
        requests = [Request(self.side.encode(t), self.spec(s)) for t, s in zip(texts_in, seeds, strict=True)]
        start = time.perf_counter()
        outputs = self.chat.started().generate(requests)  # all n answers of each request
        self.seconds["generate"] += time.perf_counter() - start
        if self.scorer is None:
            self.scorer = shared_scorer(tag_context(self.cfg), self.models)
        # the answer alone is scored and paired; a response cut inside its reasoning trace has none
        answers: list[list[str]] = []
        for out, prompt in zip(outputs, texts_in, strict=True):
            answers.append([])
            for completion in out:
                message, closed = self.side.assistant_message(completion, prompt)
                stats["reasoning_not_closed"] += not closed
                answers[-1].append(message["content"] if closed else "")
        flat = [(i, j, text) for i, out in enumerate(answers) for j, text in enumerate(out)]
        start = time.perf_counter()
        scored = self.scorer.score([(prompts[i][0]["content"], text) for i, _, text in flat])
        self.seconds["score"] += time.perf_counter() - start
        scores: list[list[float | None]] = [[None] * len(out) for out in outputs]
        for (i, j, text), (score, error) in zip(flat, scored, strict=True):
            scores[i][j] = score if text else None  # an empty answer is never chosen nor rejected
            stats["responses"] += 1
            stats["empty_responses"] += not text
            if error:
                stats[f"score_failed:{error.split(':')[0]}"] += 1
        rows = []
        for record, prompt, out, texts, row_scores, seed in zip(records, prompts, outputs, answers, scores, seeds,
                                                                 strict=True):
            choice = choose_pair(row_scores, [len(t) for t in texts], self.p.min_margin, self.p.length_control,
                                 self.p.length_ratio)
            if choice.reason:
                stats[f"dropped:{choice.reason}"] += 1
                continue
            stats["pairs"] += 1
            rows.append({
                "id": record["id"],
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": texts[choice.chosen]}],
                "rejected": [{"role": "assistant", "content": texts[choice.rejected]}],
                "responses": texts,
                "scores": row_scores,
                "finish_reasons": [c.finish_reason for c in out],
                "chosen_index": choice.chosen, "rejected_index": choice.rejected,
                "chosen_score": row_scores[choice.chosen], "rejected_score": row_scores[choice.rejected],
                "margin": round(choice.margin, 6),
                "strategy": "best-vs-worst" + (f", length-controlled x{self.p.length_ratio}" if self.p.length_control else ""),
                "reward": self.scorer.name, "generator": self.side.cfg.name, "seed": seed,
            })
        return rows

    def close(self) -> None:
        self.models.close()
        if self.owned:
            self.models.pool.close()


def run_pair(cfg: MagpieConfig, engines: EnginePool | dict[str, Engine] | None = None, show_progress: bool = True,
             upstream: str | None = None) -> StageResult:
    """Run (or resume, or reuse) the pair stage; ``engines`` is the pipeline's engine pool or lends engines by model
    spec, ``upstream`` is the curated folder or file to pair (else ``input``, else this config's curate folder)."""
    check_writable(Path(cfg.paths.outputs), "paths.outputs")
    source = open_input(cfg, "pair", upstream)
    payload = pair_payload(cfg, source.key)
    stage_dir = stage_folder(cfg, "pair", payload)
    export = stage_dir / "export" / "pairs.jsonl"

    def cached(store: ShardStore) -> StageResult | None:
        return finished(store, {"pairs": export})

    wait_for_writer(stage_dir)  # a sweep member making this same folder finishes first
    store = ShardStore(stage_dir, "pair", config_hash(payload), payload) if (stage_dir / "manifest.json").exists() else None
    if store is not None and (hit := cached(store)):
        return hit
    pool, owned = EnginePool.of(cfg, engines)
    stage = PairStage(cfg, pool, owned)  # bad models fail here, before anything is written
    store = store or ShardStore(stage_dir, "pair", config_hash(payload), payload)
    if hit := cached(store):  # finished meanwhile by another job
        stage.close()
        return hit
    totals: Counter = Counter()
    try:
        todo = [s for s in source.shard_names if s not in store.done()]
        total = sum(info.get("records", 0) for info in source.manifest.get("shards", {}).values()) or None
        # one request of k answers, then a judge request per answer (a reward model scores without the engine)
        done = sum(info.get("records", 0) for name, info in source.manifest.get("shards", {}).items() if name not in todo)
        with Progress("pair", total, done if total else 0, enabled=show_progress,
                      per_record=2 * cfg.pair.num_responses) as bar:
            for shard in todo:
                records = list(source.read(shard))
                bar.expect(len(records))
                stats: Counter = Counter()
                start = time.perf_counter()
                rows = stage.make_shard(records, stats)
                store.write_shard(shard, rows, {"stats": dict(stats), "seconds": round(time.perf_counter() - start, 2)})
                bar.done(len(records))
    finally:
        stage.close()
    for info in store.manifest["shards"].values():
        totals.update(info.get("stats", {}))
    n_input = sum(1 for _ in source.records())
    if totals["pairs"] == 0:
        raise ConfigError(f"pair: no preference pair survived ({dict(totals)}); lower pair.min_margin, raise "
                          "pair.num_responses or pair.temperature, or check the reward model")
    stats = {"input_records": n_input, "pairs": totals["pairs"],
             "dropped": {k.split(":", 1)[1]: v for k, v in totals.items() if k.startswith("dropped:")},
             "responses": totals["responses"], "empty_responses": totals["empty_responses"],
             "score_failures": {k.split(":", 1)[1]: v for k, v in totals.items() if k.startswith("score_failed:")},
             "margin": _margin_summary(store), "seconds": stage.seconds, "code_version": __version__}
    export.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(export, ({k: r[k] for k in ("id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score", "margin")}
                         for r in store.records()))
    log.info("pair: %d pairs from %d records; dropped %s", stats["pairs"], n_input, stats["dropped"] or "none")
    return finish(store, stats, {"pairs": export}, records=stats["pairs"])


def _margin_summary(store: ShardStore) -> dict[str, float]:
    margins = sorted(r["margin"] for r in store.records())
    if not margins:
        return {}
    return {"min": margins[0], "median": margins[len(margins) // 2], "max": margins[-1]}
