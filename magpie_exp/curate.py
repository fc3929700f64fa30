"""The curate stage: a filter recipe (``conf/curate/*.yaml``) applied to a tagged dataset.

    magpie-exp stage=curate curate=pro-300k-filtered
    magpie-exp stage=curate curate=air-300k-filtered curate.select.count=500

A recipe is a list of small rules, each keeping or dropping a record with a named reason, then the
near-duplicate rule (keep each cluster's keeper), optional quotas per group (task category, difficulty), and a
final top-k selection (the paper's "longest responses"). The first failing rule is the record's drop reason and
every rule's failures are counted too, so the stats say exactly why records went. Sizes scale with the data: a
recipe that kept 300K of 1M records keeps the same fraction of the records it is given, unless told a count.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magpie_exp import __version__
from magpie_exp.config import ConfigError, CurateConfig, MagpieConfig, Rule, as_plain
from magpie_exp.labels import CATEGORICAL, ORDINAL
from magpie_exp.records import EXPORT_FILES, EXPORT_FORMATS, Record, export_records, write_jsonl
from magpie_exp.shards import ShardStore
from magpie_exp.stages import StageInput, StageResult, check_writable, config_hash, open_input, stage_folder
from magpie_exp.taggers import DecontamTagger, first_exchange

log = logging.getLogger(__name__)

STAGE_VERSION = 1
OPS = ("==", "!=", ">", ">=", "<", "<=", "in", "not_in", "regex", "not_regex", "endswith", "not_endswith",
       "is_true", "is_false")
TEXT_FIELDS = ("instruction", "response")
DERIVED_FIELDS = (*TEXT_FIELDS, "raw_instruction", "id", "num_turns")  # read off the record, not its tags
# Which tagger writes which field (to name the missing tagger when a recipe needs a field nobody wrote).
FIELD_TAGGER = {
    "input_quality": "quality", "quality_explanation": "quality", "difficulty": "difficulty", "intent": "difficulty",
    "knowledge": "difficulty", "task_category": "task_category", "other_task_category": "task_category",
    "judge_score": "judge_score", "judge_explanation": "judge_score", "safety": "safety",
    "safety_categories": "safety", "safety_raw": "safety", "reward": "reward", "base_response": "base_reward",
    "base_finish_reason": "base_reward",
    "base_reward": "base_reward", "reward_difference": "base_reward", "language": "language",
    "instruction_length": "length", "response_length": "length", "instruction_tokens": "length",
    "response_tokens": "length", "min_neighbor_distance": "embedding", "repeat_count": "embedding",
    "near_dup_keep": "embedding", "near_dup_cluster": "embedding", **dict.fromkeys(DecontamTagger.fields, "decontam"),
}
DECONTAM_RULE = Rule(field="contaminated", op="is_false", name="decontam: matches an evaluation prompt")
_MISSING = object()


def rule_name(rule: Rule) -> str:
    if rule.name:
        return rule.name
    return f"{rule.field} {rule.op}" + ("" if rule.op in ("is_true", "is_false") else f" {rule.value}")


def field_value(record: Record, name: str) -> Any:
    if name in TEXT_FIELDS:
        return first_exchange(record)[TEXT_FIELDS.index(name)]
    if name == "raw_instruction":  # the instruction as sampled, before the sanitizer (issue #38's CoT filter)
        turns = (record.get("gen") or {}).get("turns") or [{}]
        return turns[0].get("raw_instruction") or first_exchange(record)[0]
    if name == "id":
        return record["id"]
    if name == "num_turns":
        return sum(1 for m in record["messages"] if m["role"] == "user")
    return record.get("tags", {}).get(name, _MISSING)


def check_rule(rule: Rule, index: int, key: str = "curate.rules") -> None:
    where = f"{key}[{index}] ({rule_name(rule)})"
    if rule.op not in OPS:
        raise ConfigError(f"{where}: op {rule.op!r} is unknown; use one of {', '.join(OPS)}")
    labels = ORDINAL.get(rule.field) or CATEGORICAL.get(rule.field)
    values = rule.value if rule.op in ("in", "not_in") else [rule.value]
    if rule.op in ("in", "not_in") and not isinstance(rule.value, list):
        raise ConfigError(f"{where}: op {rule.op} needs a list value; got {rule.value!r}")
    if labels and rule.op not in ("regex", "not_regex", "is_true", "is_false"):
        unknown = [v for v in values if v not in labels]
        if unknown:
            raise ConfigError(f"{where}: {unknown} not in the {rule.field} labels {list(labels)}; fix the recipe")
    if rule.op in (">", ">=", "<", "<=") and not labels and not isinstance(rule.value, (int, float)):
        raise ConfigError(f"{where}: op {rule.op} on {rule.field} needs a number (or an ordered label); got {rule.value!r}")
    if rule.op in ("regex", "not_regex"):
        try:
            re.compile(str(rule.value))
        except re.error as exc:
            raise ConfigError(f"{where}: value is not a valid regular expression ({exc})") from exc


def _compare(op: str, value: Any, target: Any, labels: tuple[str, ...] | None) -> bool:
    if op in ("is_true", "is_false"):
        return bool(value) == (op == "is_true")
    if op in ("in", "not_in"):
        return (value in target) == (op == "in")
    if op in ("regex", "not_regex"):
        return (re.search(str(target), str(value)) is not None) == (op == "regex")
    if op in ("endswith", "not_endswith"):
        return str(value).rstrip().endswith(str(target)) == (op == "endswith")
    if op == "==":
        return value == target
    if op == "!=":
        return value != target
    if labels is not None:
        if value not in labels:
            return False
        value, target = labels.index(value), labels.index(target)
    return {">": value > target, ">=": value >= target, "<": value < target, "<=": value <= target}[op]


def _why_untagged(record: Record, field: str) -> str:
    """'the quality tagger failed (invalid_json)' where the tag stage recorded why, else 'not tagged'."""
    errors = (record.get("tags") or {}).get("errors")
    tagger = FIELD_TAGGER.get(field)
    error = errors.get(tagger) if isinstance(errors, dict) and tagger else None
    return f"the {tagger} tagger failed ({str(error).split(':')[0]})" if error else "not tagged"


def failed_rules(record: Record, rules: list[Rule]) -> list[str]:
    """Names of the rules the record fails. A missing or null field fails every rule that reads it, as
    '<rule>: the <tagger> tagger failed (<reason>)' or '<rule>: not tagged' (a tag that failed is never a pass,
    whatever the operator); a value of the wrong type, or outside the field's label set, is an error naming the
    record, the field and the value."""
    failed = []
    for rule in rules:
        value = field_value(record, rule.field)
        if value is _MISSING or value is None:
            failed.append(f"{rule_name(rule)}: {_why_untagged(record, rule.field)}")
            continue
        labels = ORDINAL.get(rule.field)
        known = labels or CATEGORICAL.get(rule.field)
        if known is not None and rule.op not in ("regex", "not_regex") and value not in known:
            raise ConfigError(f"curate: record {record['id']} has {rule.field}={value!r}, not one of the labels "
                              f"{list(known)}; fix the input's tags (or re-tag it)")
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if (labels is None and rule.op in (">", ">=", "<", "<=") and not numeric) or (
                rule.op in ("is_true", "is_false") and not isinstance(value, bool)):
            want = "a number" if rule.op not in ("is_true", "is_false") else "true or false"
            raise ConfigError(f"curate: record {record['id']} has {rule.field}={value!r} ({type(value).__name__}), "
                              f"but the rule '{rule_name(rule)}' needs {want}; fix the input's tags or the rule")
        try:
            ok = _compare(rule.op, value, rule.value, labels)
        except TypeError as exc:
            raise ConfigError(f"curate: record {record['id']} has {rule.field}={value!r} ({type(value).__name__}), "
                              f"which the rule '{rule_name(rule)}' cannot compare with {rule.value!r}; fix the "
                              "input's tags or the rule") from exc
        if not ok:
            failed.append(rule_name(rule))
    return failed


def target_count(select_cfg: Any, n_input: int) -> int | None:
    """How many records the final selection keeps, for ``n_input`` input records (None = all that pass)."""
    if select_cfg.count is not None:
        return select_cfg.count
    if select_cfg.recipe_count is not None and select_cfg.recipe_pool is not None:
        return max(1, round(n_input * select_cfg.recipe_count / select_cfg.recipe_pool))
    return None


@dataclass
class Survivor:
    """A record that passed the rules and dedup: what selection needs of it (id, sort value, quota group)."""

    id: str
    sort: Any
    group: str | None


def _sort_key(c: Survivor, descending: bool) -> tuple:
    missing = c.sort is None
    value = 0 if missing else (-c.sort if descending else c.sort)
    return (missing, value, c.id)


def _allocate(total: int, groups: list[Any], members: dict[str | None, list[Survivor]]) -> dict[str, int]:
    """Slots per quota group: ``max`` groups get at most their cap; ``share`` groups split the target by the
    largest-remainder method (so the shares add up to the target, not to its floors)."""
    alloc: dict[str, int] = {}
    exact: dict[str, float] = {}
    for group in groups:
        if group.max is not None:
            alloc[group.name] = min(group.max, len(members.get(group.name, [])))
        elif group.share is not None:
            exact[group.name] = group.share * total
            alloc[group.name] = math.floor(exact[group.name])
        else:
            alloc[group.name] = len(members.get(group.name, []))
    share_total = round(sum(exact.values()))
    spare = share_total - sum(alloc[name] for name in exact)
    for name in sorted(exact, key=lambda n: (-(exact[n] - math.floor(exact[n])), n))[:max(spare, 0)]:
        alloc[name] += 1
    return alloc


def select(candidates: list[Survivor], curate: CurateConfig, k: int | None) -> tuple[set[str], dict[str, str]]:
    """Quotas, then top-k: the ids kept, and the reason of each candidate that was not. Ties break on id
    (order-independent). With a target ``k``, share quotas fill to it: slots a group cannot use go to the best
    remaining members of the other share groups (without one, shares cap each group's part of the pool); ``max``
    caps are never exceeded."""
    reasons: dict[str, str] = {}
    desc = curate.select.descending
    pool = sorted(candidates, key=lambda c: _sort_key(c, desc)) if curate.select.by else list(candidates)
    q = curate.quota
    if q.by:
        total = k if k is not None else len(pool)
        by_group: dict[str | None, list[Survivor]] = defaultdict(list)
        for c in pool:
            by_group[c.group].append(c)
        alloc = _allocate(total, list(q.groups), by_group)
        chosen = [c for g in q.groups for c in by_group.get(g.name, [])[:alloc[g.name]]]
        taken = {c.id for c in chosen}
        share_groups = {g.name for g in q.groups if g.max is None}
        if k is not None:  # a target: slots a group cannot use go to the other share groups' best remaining
            leftovers = [c for c in pool if c.group in share_groups and c.id not in taken]
            chosen += leftovers[:max(0, total - len(chosen))]
        taken = {c.id for c in chosen}
        caps = {g.name: ("over its max" if g.max is not None else "over its share") for g in q.groups}
        for c in pool:
            if c.id not in taken:
                reasons[c.id] = (f"quota {q.by}: in no group" if c.group is None
                                 else f"quota {q.by}={c.group}: {caps[c.group]}")
        pool = sorted(chosen, key=lambda c: _sort_key(c, desc)) if curate.select.by else chosen
    if k is not None and len(pool) > k:
        for c in pool[k:]:
            reasons[c.id] = f"top {k} by {curate.select.by}"
        pool = pool[:k]
    return {c.id for c in pool}, reasons


def _group_of(record: Record, curate: CurateConfig) -> str | None:
    value = field_value(record, curate.quota.by)
    for group in curate.quota.groups:
        if value in group.values:
            return group.name
    return None


def stage_config(cfg: MagpieConfig, input_key: str) -> dict[str, Any]:
    curate = as_plain(cfg.curate)
    for key in ("export", "write_rejected", "description"):
        curate.pop(key)
    return {"stage": "curate", "stage_version": STAGE_VERSION, "input": input_key, "curate": curate}


def upstream_dir(cfg: MagpieConfig) -> Path:
    from magpie_exp.tag import stage_dir_for

    return stage_dir_for(cfg)


def stage_dir_for(cfg: MagpieConfig) -> Path:
    source = open_input(cfg, "curate", lambda: upstream_dir(cfg))
    return stage_folder(cfg, "curate", stage_config(cfg, source.key))


def recipe_rules(curate: CurateConfig) -> list[Rule]:
    """The recipe's rules, then the decontamination rule when ``curate.decontaminate`` is on."""
    return [*curate.rules, *([DECONTAM_RULE] if curate.decontaminate else [])]


def recipe_fields(curate: CurateConfig) -> list[tuple[str, str]]:
    """(config key, field) of every field the recipe reads: rules, decontaminate, dedup, select.by, quota.by."""
    fields = [(f"curate.rules[{i}] ({rule_name(r)})", r.field) for i, r in enumerate(curate.rules)]
    fields += [("curate.decontaminate", "contaminated")] if curate.decontaminate else []
    fields += [("curate.dedup", "near_dup_keep")] if curate.dedup else []
    fields += [("curate.select.by", curate.select.by)] if curate.select.by else []
    fields += [("curate.quota.by", curate.quota.by)] if curate.quota.by else []
    return fields


def check_inputs(cfg: MagpieConfig, source: StageInput, sample: int = 1000) -> None:
    """Every field the recipe reads exists: a misspelled field is one line naming the closest known one, never
    100% drops or a silent ranking by id. For a tag stage folder, its taggers must write the field; for any other
    input (a JSONL file), the first ``sample`` records must carry it."""
    import difflib

    known = sorted({*FIELD_TAGGER, *DERIVED_FIELDS})
    taggers = source.manifest.get("config", {}).get("tag", {}).get("taggers")
    from_tag_stage = source.manifest.get("stage") == "tag" and taggers is not None
    carried: set[str] = set()
    if not from_tag_stage:
        for n, record in enumerate(source.records()):
            carried |= set(record.get("tags") or {})
            if n + 1 >= sample:
                break
    if from_tag_stage:
        check_tagged_fields(cfg, list(taggers))
        return
    for key, name in recipe_fields(cfg.curate):
        if name in DERIVED_FIELDS or name in carried:
            continue
        if name not in FIELD_TAGGER:
            close = difflib.get_close_matches(name, known + sorted(carried), n=1)
            raise ConfigError(f"{key}: '{name}' is not a field the tag stage writes nor one the input's records carry"
                              + (f"; did you mean '{close[0]}'?" if close else f"; known fields: {', '.join(known)}"))
        raise ConfigError(f"{key} reads '{name}', which none of the first {sample} records of {source.path} carry "
                          f"(the '{FIELD_TAGGER[name]}' tagger writes it); tag the input first (magpie-exp stage=tag "
                          f"input={source.path} tag.taggers=[...,{FIELD_TAGGER[name]}]) or drop the rule"
                          + {"near_dup_keep": " (curate.dedup=false)",
                             "contaminated": " (curate.decontaminate=false)"}.get(name, ""))


def check_tagged_fields(cfg: MagpieConfig, taggers: list[str]) -> None:
    """Every field the curate recipe reads is written by one of ``taggers`` (the pipeline checks before it starts)."""
    import difflib

    for key, name in recipe_fields(cfg.curate):
        if name in DERIVED_FIELDS:
            continue
        tagger = FIELD_TAGGER.get(name)
        if tagger is None:
            close = difflib.get_close_matches(name, sorted({*FIELD_TAGGER, *DERIVED_FIELDS}), n=1)
            raise ConfigError(f"{key}: '{name}' is not a field the tag stage writes"
                              + (f"; did you mean '{close[0]}'?" if close else ""))
        if tagger not in taggers:
            key = {"near_dup_keep": "curate.dedup", "contaminated": "curate.decontaminate"}.get(name, f"curate ({name})")
            raise ConfigError(f"{key} needs the field '{name}', which the tag stage's tagger '{tagger}' writes, but "
                              f"tag.taggers was {taggers}; add '{tagger}' to tag.taggers or drop the rule")


def run_curate(cfg: MagpieConfig, stage_dir: Path | None = None, show_progress: bool = True) -> StageResult:
    from tqdm.auto import tqdm

    check_writable(Path(cfg.paths.outputs), "paths.outputs")
    source = open_input(cfg, "curate", lambda: upstream_dir(cfg))
    check_inputs(cfg, source)
    payload = stage_config(cfg, source.key)
    stage_dir = Path(stage_dir) if stage_dir is not None else stage_folder(cfg, "curate", payload)
    export_dir = stage_dir / "export"
    formats = cfg.curate.export
    store = ShardStore(stage_dir, "curate", config_hash(payload), payload)
    if store.complete and all((export_dir / EXPORT_FILES[f]).exists() for f in formats) and not store.verify():
        log.info("cache hit: curate stage %s (%d records kept)", stage_dir, store.record_count())
        stats = json.loads((stage_dir / "stats.json").read_text())
        return StageResult(stage_dir, stats, {f: str(export_dir / EXPORT_FILES[f]) for f in formats}, True)
    curate = cfg.curate
    # Pass 1: rules and dedup per record; keep only (id, sort value, group) of the survivors. Records are keyed
    # by id, so two records with one id are refused: the second would share the first's fate unseen.
    first_reason: dict[str, str] = {}
    rule_failures: Counter = Counter()
    candidates: list[Survivor] = []
    seen: dict[str, tuple[str, int]] = {}
    n_input = 0
    rules = recipe_rules(curate)
    with tqdm(desc="curate", unit="rec", disable=not show_progress, dynamic_ncols=True) as bar:
        for shard in source.shard_names:
            for index, record in enumerate(source.read(shard)):
                n_input += 1
                rid = record["id"]
                if rid in seen:
                    raise ConfigError(f"input: record id {rid!r} appears twice ({source.where(*seen[rid])} and "
                                      f"{source.where(shard, index)}); give every record its own id, or drop the "
                                      "repeated rows")
                seen[rid] = (shard, index)
                failed = failed_rules(record, rules)
                if curate.dedup:
                    keep = record.get("tags", {}).get("near_dup_keep")
                    if keep is None:  # its embedding failed, or the input was never deduplicated
                        failed.append("near-duplicate: not tagged")
                    elif keep is False:
                        failed.append("near-duplicate (not its cluster's keeper)")
                rule_failures.update(failed)
                if failed:
                    first_reason[rid] = failed[0]
                else:
                    sort = field_value(record, curate.select.by) if curate.select.by else None
                    sort = sort if isinstance(sort, (int, float)) and not isinstance(sort, bool) else None
                    candidates.append(Survivor(rid, sort, _group_of(record, curate) if curate.quota.by else None))
                bar.update()
    del seen
    k = target_count(curate.select, n_input)
    kept, select_reasons = select(candidates, curate, k)
    # Pass 2: write kept records shard by shard (resumable), and the rejected ones with their reasons.
    rejected: list[dict[str, Any]] = []
    for shard in source.shard_names:
        out = []
        for record in source.read(shard):
            if record["id"] in kept:
                out.append(record)
            elif curate.write_rejected:
                reason = first_reason.get(record["id"]) or select_reasons[record["id"]]
                rejected.append({"id": record["id"], "reason": reason, "instruction": first_exchange(record)[0][:500],
                                 "tags": record.get("tags", {})})
        if shard not in store.done():
            store.write_shard(shard, out)
    if curate.write_rejected:
        write_jsonl(stage_dir / "rejected.jsonl", rejected)
    dropped = Counter(first_reason.values()) + Counter(select_reasons.values())
    stats = {
        "recipe": curate.name, "input_records": n_input, "passed_rules": len(candidates), "target_count": k,
        "kept": len(kept), "kept_fraction": round(len(kept) / n_input, 4) if n_input else 0.0,
        "dropped": dict(dropped.most_common()), "rule_failures": dict(rule_failures.most_common()),
        "code_version": __version__,
    }
    if not kept:
        log.warning("curate: recipe %s kept no records of %d; see %s", curate.name, n_input, stage_dir / "rejected.jsonl")
    from magpie_exp.plots import dataset_plots

    stats["plots"] = dataset_plots(store.records, stage_dir / "plots") if kept else {}
    (stage_dir / "stats.json").write_text(json.dumps(stats, indent=1))
    exports = export_records(store.records, export_dir, formats, cfg.generate.include_system)
    store.mark_complete(records=len(kept))
    log.info("curate %s: kept %d of %d; dropped %s", curate.name, len(kept), n_input, dict(dropped.most_common(6)))
    return StageResult(stage_dir, stats, exports, False)


def check_curate_config(curate: CurateConfig) -> None:
    for i, rule in enumerate(curate.rules):
        check_rule(rule, i)
    s = curate.select
    if s.count is not None and s.count < 1:
        raise ConfigError(f"curate.select.count must be >= 1 or null; got {s.count}")
    if (s.recipe_count is None) != (s.recipe_pool is None):
        raise ConfigError("curate.select.recipe_count and curate.select.recipe_pool go together (e.g. 300000 of 1000000); set both or neither")
    if s.recipe_count is not None and not 0 < s.recipe_count <= s.recipe_pool:
        raise ConfigError(f"curate.select.recipe_count ({s.recipe_count}) must be in [1, recipe_pool ({s.recipe_pool})]")
    q = curate.quota
    if q.by is not None:
        if not q.groups:
            raise ConfigError(f"curate.quota.by is {q.by!r} but curate.quota.groups is empty; list the groups or set quota.by=null")
        shares = sum(g.share for g in q.groups if g.share is not None)
        if shares > 1.0 + 1e-9:
            raise ConfigError(f"curate.quota.groups shares add up to {shares:.3f} > 1; make them sum to at most 1")
        labels = ORDINAL.get(q.by) or CATEGORICAL.get(q.by)
        for g in q.groups:
            if g.share is None and g.max is None:
                raise ConfigError(f"curate.quota.groups[{g.name}] needs a share or a max")
            unknown = [v for v in g.values if labels and v not in labels]
            if unknown:
                raise ConfigError(f"curate.quota.groups[{g.name}].values {unknown} not in the {q.by} labels {list(labels)}")
    unknown = sorted(set(curate.export) - set(EXPORT_FORMATS))
    if unknown:
        raise ConfigError(f"curate.export has unknown format(s) {unknown}; choose from {list(EXPORT_FORMATS)}")
