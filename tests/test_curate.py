"""Curate recipes on a hand-built tagged table: each paper recipe keeps exactly the expected records, sizes
scale with the data, drops are counted by reason, and bad recipes fail with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import schema
from magpie_exp.config import ConfigError
from magpie_exp.rules import OPS, check_tagged_fields, failed_rules, rule_name
from magpie_exp.stages.curate import check_inputs, run_curate, target_count
from magpie_exp.stages.common import StageInput

# id: (quality, difficulty, reward, reward_difference, response length, category, language, safety, keeper,
#      instruction, response text)
TABLE = {
    "r0": ("excellent", "hard", 0.0, 1.0, 900, "Math", "EN", "safe", True, "Prove it.", "First x, therefore y."),
    "r1": ("good", "medium", -5.0, 2.0, 800, "Reasoning", "EN", "safe", True, "Why?", "## Step 1: look.\n## Step 2: see."),
    "r2": ("average", "easy", -11.0, -1.0, 700, "Information seeking", "EN", "safe", True, "What is X?", "X is a thing."),
    "r3": ("poor", "very easy", 0.0, 3.0, 1000, "Creative writing", "EN", "safe", True, "A poem", "Roses are red."),
    "r4": ("good", "easy", -13.0, 1.0, 600, "Advice seeking", "ZH", "safe", True, "我该怎么办", "别担心。"),
    "r5": ("excellent", "hard", -1.0, 0.5, 650, "Coding & Debugging", "EN", "unsafe", False, "Fix it", "Done."),
    "r6": ("good", "medium", -10.5, -0.2, 500, "Math", "EN", "safe", True, "Compute the following:", "1) add\n2) carry"),
    "r7": (None, "medium", 1.0, 1.0, 400, "Planning", "EN", "safe", True, "Plan a trip", "Go."),
    "r8": ("good", "easy", -2.0, 0.1, 300, "Editing", "EN", "safe", True, "Shorten this", "Short."),
    "r9": ("excellent", "very hard", 2.0, 1.0, 200, "Math", "EN", "safe", True, "Hard sum", "42"),
}


def write_table(path: Path) -> Path:
    with path.open("w") as handle:
        for rid, (q, d, r, rd, length, cat, lang, safety, keep, ins, res) in TABLE.items():
            tags = {"input_quality": q, "difficulty": d, "reward": r, "reward_difference": rd, "response_length": length,
                    "task_category": cat, "language": lang, "safety": safety, "near_dup_keep": keep,
                    "contaminated": rid == "r2",  # r2 reproduces an evaluation prompt (the decontam tagger)
                    "errors": {} if q else {"quality": "truncated"}}
            messages = [{"role": "user", "content": ins}, {"role": "assistant", "content": res}]
            # r1's instruction was sanitized: as sampled it carried the model's "## Step 1" (issue #38's CoT filter)
            gen = {"turns": [{"raw_instruction": "Why?\n## Step 1: think"}]} if rid == "r1" else {}
            handle.write(json.dumps({"id": rid, "messages": messages, "gen": gen, "tags": tags}, ensure_ascii=False) + "\n")
    return path


EXPECTED = {
    "pro-300k-filtered": {"r0", "r1", "r2"},
    "pro-300k-card": {"r0", "r1", "r8"},
    "air-300k-filtered": {"r0"},
    "pro-filter2": {"r0", "r1", "r6"},
    "pro-filter3": {"r3", "r0", "r1"},
    "pro-filter4": {"r0", "r1", "r4"},
    "pro-filter5": {"r0", "r1", "r6", "r8", "r9"},
    "pro-filter6": {"r0", "r2"},
    "english-safe": {"r0", "r1", "r3", "r6", "r7", "r8", "r9"},  # r2 reproduces an evaluation prompt
    "reasoning-cot": {"r1"},  # r0 says "first ... therefore" but has no step markers; r6 ends with ':'

    "none": {"r0", "r1", "r2", "r3", "r4", "r6", "r7", "r8", "r9"},
}


def curate(tmp_path: Path, *overrides: str):
    table = write_table(tmp_path / "table.jsonl")
    cfg = schema(f"input={table}", f"paths.outputs={tmp_path / 'out'}", "curate.export=[messages]", *overrides)
    return run_curate(cfg, show_progress=False)


def kept_ids(result) -> set[str]:
    return {json.loads(line)["id"] for line in open(result.exports["messages"])}


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_recipe_keeps_the_expected_records(tmp_path: Path, recipe: str) -> None:
    result = curate(tmp_path, f"curate={recipe}")
    assert kept_ids(result) == EXPECTED[recipe]
    stats = result.stats
    assert stats["kept"] + sum(stats["dropped"].values()) == stats["input_records"] == len(TABLE)
    rejected = [json.loads(line) for line in open(result.stage_dir / "rejected.jsonl")]
    assert {r["id"] for r in rejected} == set(TABLE) - EXPECTED[recipe]
    assert all(r["reason"] for r in rejected)


def test_drop_reasons_are_named_and_counted(tmp_path: Path) -> None:
    stats = curate(tmp_path, "curate=pro-300k-filtered").stats
    assert stats["dropped"] == {
        "input_quality >= average": 1,  # r3
        "reward > -12": 1,  # r4
        "near-duplicate (not its cluster's keeper)": 1,  # r5
        "input_quality >= average: the quality tagger failed (truncated)": 1,  # r7: its tag failed, it is not guessed
        "top 3 by response_length": 3,  # r6, r8, r9
    }
    assert stats["target_count"] == 3 and stats["kept_fraction"] == 0.3


def test_quota_with_an_explicit_count(tmp_path: Path) -> None:
    result = curate(tmp_path, "curate=dpo-instructions", "curate.select.count=6")
    # seeking and writing have no candidates: their slots go to the reasoning group's remaining member (r9)
    assert kept_ids(result) == {"r0", "r1", "r9"}
    assert not any(k.startswith("quota") for k in result.stats["dropped"])


def test_share_quotas_fill_to_the_target_and_max_caps_hold() -> None:
    """The issue's case: target 5, shares .3/.35/.35, 30 candidates: 5 kept (floors alone gave 3)."""
    from magpie_exp.stages.curate import Survivor, select

    cfg = schema("curate=dpo-instructions").curate
    groups = ["seeking", "reasoning", "writing"]
    pool = [Survivor(f"c{i:02d}", float(i), groups[i % 3]) for i in range(30)]
    kept, reasons = select(pool, cfg, 5)
    assert len(kept) == 5 and {c.group for c in pool if c.id in kept} == set(groups)
    assert len(reasons) == 25 and set(reasons.values()) <= {f"quota task_category={g}: over its share" for g in groups}
    cfg.quota.groups[0].share, cfg.quota.groups[0].max = None, 0  # a hard cap of 0 for seeking: never filled
    kept, reasons = select(pool, cfg, 5)
    assert len(kept) == 5 and not any(c.group == "seeking" for c in pool if c.id in kept)
    assert reasons["c00"] == "quota task_category=seeking: over its max"
    one = [Survivor("x", 1.0, None), *pool[:3]]
    assert select(one, cfg, 5)[1]["x"] == "quota task_category: in no group"


def test_rejected_reasons_are_as_precise_as_the_stats(tmp_path: Path) -> None:
    result = curate(tmp_path, "curate=pro-300k-filtered")
    rejected = {r["id"]: r["reason"] for r in map(json.loads, open(result.stage_dir / "rejected.jsonl"))}
    assert rejected["r6"] == rejected["r8"] == rejected["r9"] == "top 3 by response_length"
    from collections import Counter

    assert Counter(rejected.values()) == Counter(result.stats["dropped"])


def _rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(rid: str | None, **tags) -> dict:
    row = {"messages": [{"role": "user", "content": f"question {rid}"}, {"role": "assistant", "content": "answer"}],
           "tags": {"near_dup_keep": True, **tags}}
    return row if rid is None else {"id": rid, **row}


def test_duplicate_ids_are_refused_naming_both_lines(tmp_path: Path) -> None:
    """Membership was decided by id: a second row with a kept row's id was written too, failing rule or not."""
    rows = _rows(tmp_path / "dup.jsonl", [_row("a", reward=1.0), _row("b", reward=1.0), _row("a", reward=-50.0)])
    cfg = schema(f"input={rows}", f"paths.outputs={tmp_path / 'out'}", "curate=none",
                 "curate.rules=[{field: reward, op: '>', value: -12}]")
    with pytest.raises(ConfigError, match=r"record id 'a' appears twice \(.*dup.jsonl line 1 and .*dup.jsonl line 3\)"):
        run_curate(cfg, show_progress=False)
    same_text = _rows(tmp_path / "noid.jsonl", [_row(None), {**_row(None), "tags": {"near_dup_keep": True}}])
    with pytest.raises(ConfigError, match="appears twice"):  # id-less rows with one instruction: one derived id
        run_curate(schema(f"input={same_text}", f"paths.outputs={tmp_path / 'out'}", "curate=none"), show_progress=False)


@pytest.mark.parametrize("op", OPS)
def test_a_null_tag_fails_every_operator(op: str) -> None:
    """A tag that could not be produced (null) is never a pass: not under != (safety != unsafe kept a record whose
    guard verdict failed), not under is_false."""
    from magpie_exp.config import Rule

    value = {"in": ["safe"], "not_in": ["unsafe"], "regex": "x", "not_regex": "x", "endswith": "x",
             "not_endswith": "x", "is_true": None, "is_false": None}.get(op, "unsafe")
    rule = Rule(field="safety", op=op, value=value)
    assert failed_rules({"id": "n", "messages": [], "tags": {"safety": None}}, [rule]) == [f"{rule_name(rule)}: not tagged"]
    assert failed_rules({"id": "m", "messages": [], "tags": {}}, [rule]) == [f"{rule_name(rule)}: not tagged"]


def test_a_tag_of_the_wrong_type_is_an_error_naming_record_field_and_value(tmp_path: Path) -> None:
    rows = _rows(tmp_path / "typed.jsonl", [_row("a", reward=1.0), _row("b", reward="high")])
    with pytest.raises(ConfigError, match=r"record b has reward='high' \(str\).*reward > -12"):
        run_curate(schema(f"input={rows}", f"paths.outputs={tmp_path / 'out'}", "curate=none",
                          "curate.rules=[{field: reward, op: '>', value: -12}]"), show_progress=False)
    labels = _rows(tmp_path / "labels.jsonl", [_row("a", input_quality="great", reward=0.0)])
    with pytest.raises(ConfigError, match=r"record a has input_quality='great', not one of the labels"):
        run_curate(schema(f"input={labels}", f"paths.outputs={tmp_path / 'out'}", "curate=none",
                          "curate.rules=[{field: input_quality, op: '>=', value: average}]"), show_progress=False)


def test_dedup_never_passes_a_record_without_its_dedup_tag(tmp_path: Path) -> None:
    rows = _rows(tmp_path / "d.jsonl", [_row("a"), {**_row("b"), "tags": {"near_dup_keep": None}}])
    result = run_curate(schema(f"input={rows}", f"paths.outputs={tmp_path / 'out'}", "curate=none"), show_progress=False)
    assert kept_ids(result) == {"a"} and result.stats["dropped"] == {"near-duplicate: not tagged": 1}


@pytest.mark.parametrize(("overrides", "message"), [
    (["curate.rules=[{field: rewrd, op: '>', value: 0}]"], r"curate.rules\[0\] \(rewrd > 0\): 'rewrd' is not a field.*did you mean 'reward'"),
    (["curate.select.by=response_lenght"], r"curate.select.by: 'response_lenght' is not a field.*did you mean 'response_length'"),
    (["curate=dpo-instructions", "curate.quota.by=task_categry"], r"curate.quota.by: 'task_categry'.*did you mean 'task_category'"),
])
def test_misspelled_recipe_fields_are_one_line(tmp_path: Path, overrides: list[str], message: str) -> None:
    table = write_table(tmp_path / "table.jsonl")
    with pytest.raises(ConfigError, match=message):
        run_curate(schema(f"input={table}", f"paths.outputs={tmp_path / 'out'}", *overrides), show_progress=False)
    with pytest.raises(ConfigError, match=message.split(":")[0]):  # the pipeline says so before generating
        check_tagged_fields(schema(*overrides).curate, ["length", "quality", "difficulty", "task_category", "reward", "embedding"])


def test_untagged_input_with_a_tag_recipe_is_refused(tmp_path: Path) -> None:
    plain = _rows(tmp_path / "plain.jsonl", [{"messages": _row("a")["messages"]}])
    with pytest.raises(ConfigError, match=r"reads 'reward', which none of the first 1000 records.*tag the input first"):
        run_curate(schema(f"input={plain}", f"paths.outputs={tmp_path / 'out'}", "curate=pro-filter3"), show_progress=False)
    assert not (tmp_path / "out" / "stages").exists()


@pytest.mark.parametrize(("content", "message"), [
    (b"\n\n  \n", "holds only blank lines"),
    (b'[{"messages": []},\n{"messages": []}]\n', r"looks like a JSON array.*jq -c"),
    (b"\x1f\x8b\x08\x00rest", r"gzip-compressed; decompress it first \(gunzip"),
])
def test_inputs_that_are_not_jsonl_get_the_right_fix(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        run_curate(schema(f"input={path}", f"paths.outputs={tmp_path / 'out'}"), show_progress=False)


def test_the_cot_filter_matches_real_step_markers() -> None:
    cot = schema("curate=reasoning-cot").curate.rules[1]  # the response rule
    steps = {"id": "s", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "## Step 1: add\n## Step 2: done"}]}
    words = {"id": "w", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "First add, thus 4."}]}
    tenth = {"id": "t", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "## Step 10: last"}]}
    assert failed_rules(steps, [cot]) == [] and failed_rules(words, [cot]) == ["response has no '## Step 1'"]
    assert failed_rules(tenth, [cot]) == ["response has no '## Step 1'"]


def test_sizes_scale_with_the_dataset() -> None:
    pro = schema("curate=pro-300k-filtered").curate.select
    air = schema("curate=air-300k-filtered").curate.select
    assert target_count(pro, 1_000_000) == 300_000 and target_count(pro, 1000) == 300
    assert target_count(air, 3_000_000) == 300_000 and target_count(air, 1000) == 100
    pro.count = 42
    assert target_count(pro, 1000) == 42


def test_rerun_is_a_cache_hit(tmp_path: Path) -> None:
    first = curate(tmp_path, "curate=pro-filter3")
    again = curate(tmp_path, "curate=pro-filter3")
    assert again.cache_hit and kept_ids(again) == kept_ids(first)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["curate.rules=[{field: input_quality, op: '>=', value: great}]"], "not in the input_quality labels"),
        (["curate.rules=[{field: reward, op: approx, value: 1}]"], "op 'approx' is unknown"),
        (["curate.rules=[{field: reward, op: '>', value: high}]"], "needs a number"),
        (["curate.rules=[{field: task_category, op: in, value: [Maths]}]"], "not in the task_category labels"),
        (["curate=pro-300k-filtered", "curate.select.recipe_pool=null"], "go together"),
        (["curate=pro-filter6", "curate.quota.groups.0.share=0.9"], "add up to 1.400 > 1"),
    ],
)
def test_bad_recipes_fail_with_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        schema(*overrides)
    assert "\n" not in str(info.value)


def test_a_rule_on_a_field_no_tagger_wrote_is_a_config_error() -> None:
    cfg = schema("curate=pro-300k-filtered")
    source = StageInput("tag:x", Path("."), [], lambda name: iter(()),
                        {"stage": "tag", "config": {"tag": {"taggers": ["length", "quality", "embedding"]}}})
    with pytest.raises(ConfigError, match="tagger 'reward' writes.*add 'reward' to tag.taggers"):
        check_inputs(cfg, source)


def test_empty_input_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        run_curate(schema(f"input={empty}", f"paths.outputs={tmp_path}"), show_progress=False)


def test_a_recipe_that_keeps_nothing_is_a_counted_outcome(tmp_path: Path) -> None:
    table = write_table(tmp_path / "table.jsonl")
    cfg = schema(f"input={table}", f"paths.outputs={tmp_path / 'out'}", "curate=none",
                 "curate.rules=[{field: reward, op: '>', value: 100}]")
    result = run_curate(cfg, show_progress=False)
    assert result.stats["kept"] == 0 and result.stats["dropped"]["reward > 100"] == 10
    assert Path(result.exports["parquet"]).exists() and open(result.exports["messages"]).read() == ""
    from magpie_exp.stages.common import open_input

    with pytest.raises(ConfigError, match="holds no records"):
        open_input(schema(f"input={result.stage_dir}"), "sft")
