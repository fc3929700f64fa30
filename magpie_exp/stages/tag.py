"""The tag stage: every configured tagger over every input shard, then dedup, then one tagged dataset.

    magpie-exp stage=tag                                    # tags this config's generate output
    magpie-exp stage=tag input=path/to/records.jsonl tag.taggers=[length,language,embedding]
    magpie-exp stage=tag generator@tag.judge=llama3-8b-instruct tag/reward_model=fsfairx-llama3-rm tag/guard=llama-guard-3-8b

Layout of the stage folder::

    parts/<tagger>/       # one ShardStore per tagger: its fields for each input shard (resume unit)
    parts/embedding/*.npy # unit-norm embeddings beside each shard
    dedup.json            # min_neighbor_distance, repeat_count, near-dup cluster and keeper, by record id
    shards/               # the merged, tagged records (the stage's output)
    stats.json, plots/, export/

Taggers run one after another, each over all shards, so each model (vLLM judge, guard, base model, reward
model, embedder) is loaded once; a killed run resumes at the first unfinished (tagger, shard).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from magpie_exp import __version__
from magpie_exp.card import write_card
from magpie_exp.config import MagpieConfig, need, validate_engine
from magpie_exp.console import Progress
from magpie_exp.decontam import BENCHMARKS, Counts
from magpie_exp.diversity import diversity
from magpie_exp.engines import Engine
from magpie_exp.engines.pool import EnginePool
from magpie_exp.labels import DIFFICULTY, JUDGE_MODES, QUALITY
from magpie_exp.records import EXPORT_FILES, Record, export_records
from magpie_exp.files import atomic_write_bytes
from magpie_exp.shards import ShardStore, wait_for_writer
from magpie_exp.stages.common import StageInput, StageResult, check_writable, finish, finished, open_input, tag_context
from magpie_exp.stages.keys import config_hash, folder, tag_payload
from magpie_exp.chat import Models
from magpie_exp.taggers import ORDER, TAGGER_CLASSES, DecontamTagger, Tagger

log = logging.getLogger(__name__)

def _rank_value(tags: dict[str, Any], key: str) -> Any:
    """Sort value for a dedup keep key (smaller sorts first = better)."""
    value = tags.get(key)
    if key in ("input_quality", "difficulty"):
        order = QUALITY if key == "input_quality" else DIFFICULTY
        return -order.index(value) if value in order else 1
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return -float(value)
    return float("inf")


class TagStage:
    def __init__(self, cfg: MagpieConfig, source: StageInput, stage_dir: Path, pool: EnginePool,
                 show_progress: bool) -> None:
        self.cfg, self.source, self.stage_dir = cfg, source, stage_dir
        self.payload = tag_payload(cfg, source.key)
        self.hash = config_hash(self.payload)
        self.models = Models(pool)
        self.show_progress = show_progress
        names = [n for n in ORDER if n in cfg.tag.taggers]
        context = tag_context(cfg)
        self.taggers: list[Tagger] = [TAGGER_CLASSES[n](context, self.models) for n in names]

    def part(self, name: str) -> ShardStore:
        return ShardStore(self.stage_dir / "parts" / name, f"tag.{name}", self.hash)

    def todo(self, tagger: Tagger) -> list[str]:
        part = self.part(tagger.name)
        part.verify()
        return [s for s in self.source.shard_names if s not in part.done()]

    def prepare(self) -> None:
        """Load every tagger that has work left, so bad models fail before any shard is written."""
        for tagger in self.taggers:
            if self.todo(tagger):
                tagger.prepare()

    def run_taggers(self) -> dict[str, Any]:
        timings: dict[str, Any] = {}
        total = sum(info["records"] for info in self.source.manifest.get("shards", {}).values()) or None
        for t_index, tagger in enumerate(self.taggers):
            part = self.part(tagger.name)
            todo = self.todo(tagger)
            if not todo:  # finished by an earlier run, which kept its timing in the part's manifest
                if part.manifest.get("timing"):
                    timings[tagger.name] = part.manifest["timing"]
                continue
            start, count = time.perf_counter(), 0
            with Progress(f"tag:{tagger.name}", total, part.record_count(), enabled=self.show_progress) as bar:
                for shard in todo:
                    records = list(self.source.read(shard))
                    rows, vectors = [], None
                    for b in range(0, len(records), self.cfg.tag.batch_size):
                        batch = records[b:b + self.cfg.tag.batch_size]
                        bar.expect(len(batch))
                        rows.extend(tagger.run(batch))
                        if tagger.name == "embedding":
                            part_vectors = tagger.embed(batch)  # type: ignore[attr-defined]
                            vectors = part_vectors if vectors is None else np.concatenate([vectors, part_vectors])
                        bar.done(len(batch))
                        count += len(batch)
                    if vectors is not None:  # written before the shard, so a listed shard always has its vectors
                        part.write_vectors(shard, vectors)
                    errors = Counter(row["_error"].split(":")[0] for row in rows if row.get("_error"))
                    out = [{"id": r["id"], **row} for r, row in zip(records, rows, strict=True)]
                    part.write_shard(shard, out, {"errors": dict(errors), "model": tagger.model_name()})
            tagger.close()
            elapsed = time.perf_counter() - start
            timings[tagger.name] = {"seconds": round(elapsed, 2), "records": count,
                                    "records_per_s": round(count / elapsed, 2) if elapsed else None}
            # Close engines no later tagger needs (each vLLM engine holds memory and worker processes).
            self.models.release(set().union(*(t.model_ids() for t in self.taggers[t_index + 1:])))
            part.mark_complete(timing=timings[tagger.name])
        return timings

    def load_vectors(self) -> tuple[list[str], np.ndarray]:
        """All ids and embeddings in shard order, read from disk once per stage run (dedup and plots share them)."""
        if getattr(self, "_vectors", None) is None:
            self._vectors = self._read_vectors()
        return self._vectors

    def _read_vectors(self) -> tuple[list[str], np.ndarray]:
        part = self.part("embedding")
        ids, chunks = [], []
        for shard in self.source.shard_names:
            shard_ids, vectors = part.read_vectors(shard)
            ids.extend(shard_ids)
            chunks.append(vectors)
        return ids, np.concatenate(chunks) if chunks else np.zeros((0, 1), np.float32)

    def dedup(self) -> dict[str, dict[str, Any]]:
        """Neighbour stats and near-duplicate clusters over all records (order-independent keepers)."""
        path = self.stage_dir / "dedup.json"
        if path.exists():
            return json.loads(path.read_text())
        from magpie_exp.dedup import IndexParams, choose_keepers, clusters, neighbour_stats

        d = self.cfg.tag.dedup
        ids, vectors = self.load_vectors()
        start = time.perf_counter()
        stats = neighbour_stats(vectors, d.threshold, d.index, d.exact_max, d.device,
                                params=IndexParams(d.nlist, d.nprobe, d.hnsw_m, d.ef_search))
        labels = clusters(len(ids), stats.pairs)
        partial = {t.name: self.part(t.name) for t in self.taggers if t.name in ("reward", "quality", "difficulty")}
        tags: dict[str, dict[str, Any]] = {i: {} for i in ids}
        for store in partial.values():
            for row in store.records():
                tags[row["id"]].update({k: v for k, v in row.items() if k != "id"})
        keys = d.keep_by

        def rank(i: int) -> tuple:
            return tuple(ids[i] if k == "id" else _rank_value(tags[ids[i]], k) for k in keys) + (ids[i],)

        keep = choose_keepers(labels, rank)
        sizes = Counter(labels.tolist())
        name: dict[int, str] = {}  # a cluster is named by its smallest member id: the same in any input order
        for i, label in enumerate(labels.tolist()):
            name[label] = min(name.get(label, ids[i]), ids[i])
        result = {
            rid: {"min_neighbor_distance": None if not np.isfinite(stats.min_distance[i]) else round(float(stats.min_distance[i]), 6),
                  "repeat_count": int(stats.repeat_count[i]),
                  "near_dup_cluster": name[int(labels[i])] if sizes[int(labels[i])] > 1 else None,
                  "near_dup_keep": bool(keep[i])}
            for i, rid in enumerate(ids)
        }
        log.info("dedup: %d records, %d near-duplicate pairs, %d clusters > 1, index %s, %.1fs", len(ids),
                 len(stats.pairs), sum(1 for s in sizes.values() if s > 1), stats.index, time.perf_counter() - start)
        atomic_write_bytes(path, json.dumps(result).encode())
        return result

    def merge(self, final: ShardStore, dedup: dict[str, dict[str, Any]]) -> None:
        models = {t.name: t.model_name() for t in self.taggers}
        for shard in self.source.shard_names:
            if shard in final.done():
                continue
            parts = {t.name: {row["id"]: row for row in self.part(t.name).read_shard(shard)} for t in self.taggers}
            out: list[Record] = []
            for record in self.source.read(shard):
                tags = dict(record.get("tags") or {})
                errors = dict(tags.get("errors") or {})
                for name, rows in parts.items():
                    row = dict(rows[record["id"]])
                    row.pop("id")
                    if error := row.pop("_error", None):
                        errors[name] = error
                    tags.update(row)
                if "reward" in tags and "base_reward" in tags:
                    r, b = tags["reward"], tags["base_reward"]
                    tags["reward_difference"] = None if r is None or b is None else round(r - b, 6)
                tags.update(dedup.get(record["id"], {}))
                tags["errors"] = errors
                tags["by"] = {**dict(tags.get("by") or {}), **{k: v for k, v in models.items() if v}}
                out.append({**record, "tags": tags})
            final.write_shard(shard, out)


def aggregate(final: ShardStore, timings: dict[str, Any], taggers: list[str]) -> dict[str, Any]:
    counts: dict[str, Counter] = {k: Counter() for k in ("input_quality", "difficulty", "task_category", "safety", "language")}
    errors: Counter = Counter()
    numeric: dict[str, list[float]] = {k: [] for k in ("reward", "base_reward", "reward_difference", "judge_score",
                                                       "min_neighbor_distance", "response_length", "instruction_length")}
    records = dups = 0
    contamination = Counts() if "decontam" in taggers else None
    for record in final.records():
        records += 1
        tags = record["tags"]
        if contamination is not None:
            contamination.add(tags)
        for key, counter in counts.items():
            if key in tags:
                counter[str(tags[key])] += 1
        for name, reason in tags.get("errors", {}).items():
            errors[f"{name}:{reason.split(':')[0]}"] += 1
        for key, values in numeric.items():
            if isinstance(tags.get(key), (int, float)):
                values.append(float(tags[key]))
        dups += tags.get("near_dup_keep") is False
    summary = {k: {"mean": round(float(np.mean(v)), 4), "median": round(float(np.median(v)), 4),
                   "min": round(float(np.min(v)), 4), "max": round(float(np.max(v)), 4)}
               for k, v in numeric.items() if v}
    return {"records": records, "taggers": taggers, "labels": {k: dict(v.most_common()) for k, v in counts.items() if v},
            "failures": dict(sorted(errors.items())), "numeric": summary, "near_duplicates_dropped_by_dedup": dups,
            "timings": timings, **({"decontam": contamination.as_dict()} if contamination is not None else {})}


def run_tag(cfg: MagpieConfig, engines: EnginePool | dict[str, Engine] | None = None, stage_dir: Path | None = None,
            show_progress: bool = True, export: list[str] | None = None, upstream: str | None = None) -> StageResult:
    """Run (or resume, or reuse) the tag stage; ``engines`` is the pipeline's engine pool or lends engines by model
    spec, ``upstream`` is the folder or file to tag (else ``input``, else this config's generate folder)."""
    check_writable(Path(cfg.paths.outputs), "paths.outputs")
    source = open_input(cfg, "tag", upstream)
    stage_dir = Path(stage_dir) if stage_dir is not None else folder(cfg, "tag", source.key)
    payload = tag_payload(cfg, source.key)
    formats = list(export if export is not None else ["records", "hf"])
    export_dir = stage_dir / "export"

    def cached(final: ShardStore) -> StageResult | None:
        return finished(final, {f: export_dir / EXPORT_FILES[f] for f in formats})

    wait_for_writer(stage_dir)  # a sweep member making this same folder finishes first
    if (stage_dir / "manifest.json").exists() and (hit := cached(ShardStore(stage_dir, "tag", config_hash(payload), payload))):
        return hit
    pool, owned = EnginePool.of(cfg, engines)
    stage = TagStage(cfg, source, stage_dir, pool, show_progress)
    try:
        stage.prepare()  # bad models fail here, before any shard is written
        final = ShardStore(stage_dir, "tag", config_hash(payload), payload)
        if hit := cached(final):  # finished meanwhile by another job
            return hit
        log.info("tag stage %s: taggers %s over %d shard(s) of %s", stage_dir, [t.name for t in stage.taggers],
                 len(source.shard_names), source.path)
        timings = stage.run_taggers()
    finally:
        stage.models.close()
        if owned:
            pool.close()
    dedup = stage.dedup() if "embedding" in cfg.tag.taggers else {}
    stage.merge(final, dedup)
    stats = aggregate(final, timings, [t.name for t in stage.taggers])
    stats["code_version"] = __version__
    decontam = next((t for t in stage.taggers if isinstance(t, DecontamTagger)), None)
    if decontam is not None:
        _, against, unchecked = decontam.sources()
        stats["decontam"].update(against=against, unchecked=unchecked)
        log.info("decontam: %d of %d records match an evaluation prompt %s", stats["decontam"]["contaminated"],
                 stats["records"], stats["decontam"]["by_benchmark"] or "")
    if "embedding" in cfg.tag.taggers:
        ids, matrix = stage.load_vectors()
        stats["diversity"] = diversity(final.records(), lambda wanted: {i: v for i, v in zip(ids, matrix, strict=True) if i in wanted})
    else:
        stats["diversity"] = diversity(final.records())
    if cfg.tag.plots:
        from magpie_exp.plots import dataset_plots

        vectors = stage.load_vectors() if "embedding" in cfg.tag.taggers else None
        stats["plots"] = dataset_plots(final.records, stage_dir / "plots", vectors)
    exports = export_records(final.records, export_dir, formats, cfg.generate.include_system)
    exports["card"] = str(write_card(stage_dir, export_dir, stats["records"], stats))
    log.info("tag: %d records, failures %s", stats["records"], stats["failures"] or "none")
    return finish(final, stats, exports, records=stats["records"])


def check_tag_config(cfg: MagpieConfig) -> None:
    """Cross-key checks of ``tag`` (gathered by ``magpie_exp.checks``)."""
    from magpie_exp.config import JUDGE_TAGGERS, TAGGERS

    t = cfg.tag

    unknown = [n for n in t.taggers if n not in TAGGERS]
    need(not unknown, f"tag.taggers has unknown tagger(s) {unknown}; choose from {list(TAGGERS)}")
    judged = [n for n in t.taggers if n in JUDGE_TAGGERS] + (["reward"] if t.reward_source == "judge" and "reward" in t.taggers else [])
    need(not judged or t.judge is not None,
         f"tag.taggers {judged} need a judge but tag.judge is null; set generator@tag.judge=smollm2-135m-instruct (or another model)")
    need(t.reward_source in ("model", "judge"), f"tag.reward_source must be model or judge; got {t.reward_source!r}")
    scored = [n for n in ("reward", "base_reward") if n in t.taggers]
    need(not scored or t.reward_source != "model" or t.reward_model.model is not None,
         f"tag.taggers {scored} need a reward model but tag.reward_model.model is null; "
         "pick one (tag/reward_model=fsfairx-llama3-rm) or set tag.reward_source=judge")
    need("safety" not in t.taggers or t.guard is not None,
         "tag.taggers has safety but tag.guard is null; pick a guard (tag/guard=llama-guard-3-8b) or drop safety")
    need(t.guard_format in ("chat_template", "instruction"),
         f"tag.guard_format must be chat_template or instruction; got {t.guard_format!r}")
    need("base_reward" not in t.taggers or t.base_model is not None,
         "tag.taggers has base_reward but tag.base_model is null; set generator@tag.base_model=gemma3-270m-base")
    if t.base_engine is not None:
        validate_engine("tag.base_engine", t.base_engine)
        need(t.base_engine.api == "completions", "tag.base_engine.api must be completions (a base model answers a raw "
             "URIAL prompt; a chat API cannot); use engine@tag.base_engine=openai or hf or vllm")
    need("base_reward" not in t.taggers or "reward" in t.taggers,
         "tag.taggers has base_reward (reward difference) without reward; add reward to tag.taggers")
    need(t.batch_size >= 1, f"tag.batch_size must be >= 1; got {t.batch_size}")
    need(t.judge_max_tokens >= 16, f"tag.judge_max_tokens must be >= 16; got {t.judge_max_tokens}")
    need(t.judge_mode in JUDGE_MODES, f"tag.judge_mode must be one of {', '.join(JUDGE_MODES)}; got {t.judge_mode!r}")
    need(1 <= t.judge_top_logprobs <= 20, f"tag.judge_top_logprobs must be in 1..20; got {t.judge_top_logprobs}")
    need(0 <= t.judge_min_mass < 1, f"tag.judge_min_mass must be in [0, 1); got {t.judge_min_mass}")
    need(not judged or t.judge_mode == "explain" or not (cfg.engine.type == "openai" and cfg.engine.api == "chat"),
         "tag.judge_mode=logprobs reads token-id log-probabilities, which engine.api=chat does not give; set "
         "tag.judge_mode=explain, or engine.api=completions (a vLLM server)")
    need(t.explanation_chars >= 1,
         f"tag.explanation_chars must be >= 1 (characters per free-text judge field); got {t.explanation_chars}")
    need(t.reward_model.batch_size >= 1, f"tag.reward_model.batch_size must be >= 1; got {t.reward_model.batch_size}")
    d = t.dedup
    need(0 < d.threshold <= 4, f"tag.dedup.threshold is a squared L2 distance between unit vectors, in (0, 4]; got {d.threshold}")
    need(d.index in ("auto", "flat", "ivf", "hnsw"), f"tag.dedup.index must be auto, flat, ivf or hnsw; got {d.index!r}")
    need(d.device in ("cpu", "cuda"), f"tag.dedup.device must be cpu or cuda; got {d.device!r}")
    need(d.exact_max >= 0, f"tag.dedup.exact_max must be >= 0 records; got {d.exact_max}")
    need(d.nlist is None or d.nlist >= 1, f"tag.dedup.nlist must be >= 1 IVF cells or null (sqrt of the records); got {d.nlist}")
    for key, low in (("nprobe", 1), ("hnsw_m", 4), ("ef_search", 1)):
        need(getattr(d, key) >= low, f"tag.dedup.{key} must be >= {low}; got {getattr(d, key)}")
    dc = t.decontam
    unknown_sets = [b for b in dc.benchmarks if b not in BENCHMARKS]
    need(not unknown_sets, f"tag.decontam.benchmarks has unknown set(s) {unknown_sets}; choose from {list(BENCHMARKS)} "
         "(lm-eval tasks come from evaluation.lm_eval.local_data)")
    need(dc.ngram >= 1, f"tag.decontam.ngram must be >= 1 word; got {dc.ngram}")
    for key in ("ngram_overlap", "similarity"):
        value = getattr(dc, key)
        need(value is None or 0 < value <= 1, f"tag.decontam.{key} must be in (0, 1] or null (off); got {value}")
    need(dc.ngram_overlap is not None or dc.similarity is not None,
         "tag.decontam: ngram_overlap and similarity are both null, so nothing could match; set one, or drop "
         "decontam from tag.taggers")
    bad_keys = [k for k in d.keep_by if k not in ("id", "reward", "input_quality", "difficulty", "judge_score")]
    need(not bad_keys, f"tag.dedup.keep_by has unknown key(s) {bad_keys}; use reward, input_quality, difficulty, judge_score, id")
