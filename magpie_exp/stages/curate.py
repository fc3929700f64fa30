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

import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magpie_exp import __version__
from magpie_exp.card import write_card
from magpie_exp.config import ConfigError, CurateConfig, MagpieConfig
from magpie_exp.console import Progress
from magpie_exp.diversity import diversity, stored_vectors
from magpie_exp.records import EXPORT_FILES, Record, export_records, first_exchange, write_jsonl
from magpie_exp.rules import (DERIVED_FIELDS, FIELD_TAGGER, check_tagged_fields, failed_rules, field_value, recipe_fields,
                              recipe_rules)
from magpie_exp.shards import ShardStore
from magpie_exp.stages.common import StageInput, StageResult, check_writable, finish, finished, open_input
from magpie_exp.stages.keys import config_hash, curate_payload, stage_folder

log = logging.getLogger(__name__)


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
        check_tagged_fields(cfg.curate, list(taggers))
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


def run_curate(cfg: MagpieConfig, stage_dir: Path | None = None, show_progress: bool = True,
               upstream: str | None = None) -> StageResult:
    """Run (or reuse) the curate stage on ``upstream`` (else ``input``, else this config's tag folder)."""
    check_writable(Path(cfg.paths.outputs), "paths.outputs")
    source = open_input(cfg, "curate", upstream)
    check_inputs(cfg, source)
    payload = curate_payload(cfg, source.key)
    stage_dir = Path(stage_dir) if stage_dir is not None else stage_folder(cfg, "curate", payload)
    export_dir = stage_dir / "export"
    formats = cfg.curate.export
    store = ShardStore(stage_dir, "curate", config_hash(payload), payload)
    if hit := finished(store, {f: export_dir / EXPORT_FILES[f] for f in formats}):
        return hit
    curate = cfg.curate
    # Pass 1: rules and dedup per record; keep only (id, sort value, group) of the survivors. Records are keyed
    # by id, so two records with one id are refused: the second would share the first's fate unseen.
    first_reason: dict[str, str] = {}
    rule_failures: Counter = Counter()
    candidates: list[Survivor] = []
    seen: dict[str, tuple[str, int]] = {}
    n_input = 0
    rules = recipe_rules(curate)
    total = sum(info.get("records", 0) for info in source.manifest.get("shards", {}).values()) or None
    with Progress("curate", total, enabled=show_progress) as bar:
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
                bar.done(1)
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
    tag_dir = source.path if source.key.startswith("tag:") else None  # a tag folder: its embeddings measure us too
    stats["diversity"] = diversity(store.records(), (lambda wanted: stored_vectors(tag_dir, wanted)) if tag_dir else None)
    if not kept:
        log.warning("curate: recipe %s kept no records of %d; see %s", curate.name, n_input, stage_dir / "rejected.jsonl")
    from magpie_exp.plots import dataset_plots

    stats["plots"] = dataset_plots(store.records, stage_dir / "plots") if kept else {}
    exports = export_records(store.records, export_dir, formats, cfg.generate.include_system)
    exports["card"] = str(write_card(stage_dir, export_dir, len(kept), stats))
    log.info("curate %s: kept %d of %d; dropped %s", curate.name, len(kept), n_input, dict(dropped.most_common(6)))
    return finish(store, stats, exports, records=len(kept))
