"""Curate rules, the filter-recipe language: each rule ``{field, op, value, name}`` keeps or drops a record with a
named reason. Which tagger writes which field (so a recipe on a field nobody wrote fails before a run, naming the
tagger), how a missing, failed or mistyped tag fails a rule with a precise reason (never a pass), and the checks
of a recipe's values. The curate stage (``stages/curate.py``) applies them."""

from __future__ import annotations

import re
from typing import Any

from magpie_exp.config import ConfigError, CurateConfig, Rule
from magpie_exp.labels import CATEGORICAL, ORDINAL
from magpie_exp.records import EXPORT_FORMATS, Record, first_exchange
from magpie_exp.taggers import DecontamTagger


OPS = ("==", "!=", ">", ">=", "<", "<=", "in", "not_in", "regex", "not_regex", "endswith", "not_endswith",
       "is_true", "is_false")
TEXT_FIELDS = ("instruction", "response")
DERIVED_FIELDS = (*TEXT_FIELDS, "raw_instruction", "id", "num_turns")  # read off the record, not its tags
# Which tagger writes which field (to name the missing tagger when a recipe needs a field nobody wrote).
FIELD_TAGGER = {
    "input_quality": "quality", "quality_explanation": "quality", "difficulty": "difficulty", "intent": "difficulty",
    "knowledge": "difficulty", "task_category": "task_category", "other_task_category": "task_category",
    "judge_score": "judge_score", "judge_explanation": "judge_score", "judge_rating": "judge_score",
    "judge_probs": "judge_score", "judge_mass": "judge_score", "input_quality_score": "quality",
    "input_quality_probs": "quality", "input_quality_mass": "quality", "difficulty_score": "difficulty",
    "difficulty_probs": "difficulty", "difficulty_mass": "difficulty", "safety": "safety",
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


def check_tagged_fields(curate: CurateConfig, taggers: list[str]) -> None:
    """Every field the curate recipe reads is written by one of ``taggers`` (the pipeline checks before it starts)."""
    import difflib

    for key, name in recipe_fields(curate):
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
