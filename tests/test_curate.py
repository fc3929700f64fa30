"""Curate recipes on a hand-built tagged table: each paper recipe keeps exactly the expected records, sizes
scale with the data, drops are counted by reason, and bad recipes fail with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import schema
from magpie_exp.config import ConfigError
from magpie_exp.curate import check_inputs, run_curate, target_count
from magpie_exp.stages import StageInput

# id: (quality, difficulty, reward, reward_difference, response length, category, language, safety, keeper,
#      instruction, response text)
TABLE = {
    "r0": ("excellent", "hard", 0.0, 1.0, 900, "Math", "EN", "safe", True, "Prove it.", "First x, therefore y."),
    "r1": ("good", "medium", -5.0, 2.0, 800, "Reasoning", "EN", "safe", True, "Why?", "Step 1: look.\nStep 2: see."),
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
                    "errors": {} if q else {"quality": "truncated"}}
            messages = [{"role": "user", "content": ins}, {"role": "assistant", "content": res}]
            handle.write(json.dumps({"id": rid, "messages": messages, "tags": tags}, ensure_ascii=False) + "\n")
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
    "english-safe": {"r0", "r1", "r2", "r3", "r6", "r7", "r8", "r9"},
    "reasoning-cot": {"r0", "r1", "r6"},
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
        "input_quality >= average: not tagged": 1,  # r7: its quality tag failed, it is not guessed
        "top 3 by response_length": 3,  # r6, r8, r9
    }
    assert stats["target_count"] == 3 and stats["kept_fraction"] == 0.3


def test_quota_with_an_explicit_count(tmp_path: Path) -> None:
    result = curate(tmp_path, "curate=dpo-instructions", "curate.select.count=6")
    assert kept_ids(result) == {"r0", "r1"}  # seeking none pass; reasoning capped at floor(0.35 * 6) = 2
    assert result.stats["dropped"]["quota task_category=reasoning"] == 1


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
    from magpie_exp.stages import open_input

    with pytest.raises(ConfigError, match="holds no records"):
        open_input(schema(f"input={result.stage_dir}"), "train", lambda: result.stage_dir)
