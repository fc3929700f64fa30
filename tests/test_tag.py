"""The tag stage without vLLM: lengths, lingua, MiniLM embeddings + FAISS dedup, and the sequence-classification
reward path on a real (tiny, randomly initialised) classifier; judge and guard answer parsing on real-format
strings; input readers; resume and order independence."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from conftest import schema
from magpie_exp.config import ConfigError
from magpie_exp.labels import judge_tasks, parse_guard, parse_judgement
from magpie_exp.stages.common import normalize_row
from magpie_exp.stages.tag import run_tag

TASKS = judge_tasks()


@pytest.mark.parametrize(
    ("task", "text", "finish", "fields", "error"),
    [
        ("quality", '{"explanation":"Clear.","input_quality":"good"}', "stop",
         {"quality_explanation": "Clear.", "input_quality": "good"}, None),
        ("quality", '{"explanation":"Clear.","input_quality":"great"}', "stop", None, "schema: input_quality"),
        ("quality", '{"explanation":"Clear.","input_quality":"go', "length", None, "truncated"),
        ("quality", 'The query is good.', "stop", None, "invalid_json"),
        ("quality", '{"input_quality":"good"}', "stop", None, "schema: missing key 'explanation'"),
        ("task_category", '{"primary_tag":"Math","other_tags":["Reasoning","Math","Reasoning"]}', "stop",
         {"task_category": "Math", "other_task_category": ["Reasoning"]}, None),
        ("task_category", '{"primary_tag":"Other","other_tags":[]}', "stop", None, "schema: primary_tag"),
        ("judge_score", '{"explanation":"ok","rating":11}', "stop", None, "schema: rating"),
        ("judge_score", '{"explanation":"ok","rating":7}', "stop", {"judge_explanation": "ok", "judge_score": 7}, None),
    ],
)
def test_judge_answers_are_parsed_strictly(task, text, finish, fields, error) -> None:
    got, problem = parse_judgement(TASKS[task], text, finish)
    if error is None:
        assert problem is None and got == fields
    else:
        assert problem.startswith(error) and all(v is None for v in got.values())


@pytest.mark.parametrize(
    ("text", "label", "cats"),
    [("safe", "safe", []), ("unsafe\nS1", "unsafe", ["S1"]), ("unsafe\nS2,S14", "unsafe", ["S2", "S14"]),
     ("  safe\n", "safe", []), ("unsafe\nS99", None, []), ("I think it is fine", None, []), ("", None, [])],
)
def test_guard_verdicts(text: str, label, cats) -> None:
    got, categories, error = parse_guard(text)
    assert got == label and categories == cats and (error is None) == (label is not None)


def test_input_layouts_and_bad_rows() -> None:
    sharegpt = normalize_row({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, 1, "f")
    pair = normalize_row({"instruction": "hi", "response": "yo"}, 2, "f")
    assert sharegpt["messages"] == pair["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert sharegpt["id"] == pair["id"]  # content-derived
    with pytest.raises(ConfigError, match="line 3 has none of messages"):
        normalize_row({"text": "hi"}, 3, "f")
    with pytest.raises(ConfigError, match="line 4: messages must be"):
        normalize_row({"messages": [{"role": "bot", "content": "x"}]}, 4, "f")


def test_reward_model_batches_equal_single_scores(tiny_reward_model) -> None:
    from magpie_exp.scoring import RewardModel

    rm = RewardModel(str(tiny_reward_model), batch_size=4, max_length=512)
    convs = [[{"role": "user", "content": f"Question {i}" + " more" * i}, {"role": "assistant", "content": "Answer " * (i + 1)}]
             for i in range(6)]
    batched = rm.score(convs)
    single = [RewardModel.score(rm, [c])[0] for c in convs]
    assert batched == pytest.approx(single, abs=1e-4)
    assert len(set(round(s, 5) for s in batched)) > 1  # a real model: different inputs, different scores


INSTRUCTIONS = [
    "How do I bake sourdough bread at home?",
    "How do I bake sourdough bread at home??",  # near-duplicate of the first
    "How can I bake sourdough bread at home?",  # and of the first two
    "Write a short poem about the sea.",
    "Explain the difference between TCP and UDP.",
    "Explain the difference between TCP and UDP",  # near-duplicate
    "What is the capital of Australia?",
    "Quelle est la capitale de l'Australie ?",
    "¿Cuál es la capital de Australia?",
    "Give me three tips for a job interview.",
]


def write_input(path: Path, order: list[int]) -> Path:
    with path.open("w") as handle:
        for i in order:
            messages = [{"role": "user", "content": INSTRUCTIONS[i]}, {"role": "assistant", "content": f"Answer number {i}. " * (i + 1)}]
            handle.write(json.dumps({"id": f"rec-{i}", "messages": messages}, ensure_ascii=False) + "\n")
    return path


def tag(tmp_path: Path, rm: Path, order: list[int], *extra: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = schema(f"input={write_input(tmp_path / 'in.jsonl', order)}", f"paths.outputs={tmp_path / 'out'}",
                 "tag.taggers=[length,language,reward,embedding]", f"tag.reward_model.model={rm}",
                 "tag.reward_source=model", "tag.reward_model.name=tiny-rm", *extra)
    return run_tag(cfg, show_progress=False)


def tags_by_id(result) -> dict[str, dict]:
    return {json.loads(line)["id"]: json.loads(line)["tags"] for line in open(result.exports["records"])}


def test_tag_stage_without_vllm(tmp_path: Path, tiny_reward_model: Path) -> None:
    result = tag(tmp_path, tiny_reward_model, list(range(len(INSTRUCTIONS))))
    tags = tags_by_id(result)
    assert len(tags) == len(INSTRUCTIONS)
    assert tags["rec-0"]["instruction_length"] == len(INSTRUCTIONS[0]) and tags["rec-0"]["response_tokens"] > 0
    assert tags["rec-7"]["language"] == "FR" and tags["rec-8"]["language"] == "ES" and tags["rec-4"]["language"] == "EN"
    assert all(isinstance(t["reward"], float) for t in tags.values())
    assert {t["by"]["reward"] for t in tags.values()} == {"tiny-rm"}
    # near-duplicates: {0, 1, 2} and {4, 5}; each cluster keeps its best-reward member
    clusters: dict[str, set[str]] = {}
    for rid, t in tags.items():
        if t["near_dup_cluster"]:
            clusters.setdefault(t["near_dup_cluster"], set()).add(rid)
    assert sorted(map(sorted, clusters.values())) == [["rec-0", "rec-1", "rec-2"], ["rec-4", "rec-5"]]
    for members in clusters.values():
        best = max(members, key=lambda r: (tags[r]["reward"], r))
        assert [r for r in members if tags[r]["near_dup_keep"]] == [best]
        assert all(tags[r]["min_neighbor_distance"] < 0.05 and tags[r]["repeat_count"] >= 1 for r in members)
    assert tags["rec-3"]["repeat_count"] == 0 and tags["rec-3"]["near_dup_keep"] is True
    stats = result.stats
    assert stats["labels"]["language"]["EN"] == 8 and stats["near_duplicates_dropped_by_dedup"] == 3
    for name in ("lengths", "reward", "min_neighbor_distance", "coverage"):
        assert Path(stats["plots"][name]).stat().st_size > 5000

    # the same data in another order: same tags, same keepers
    shuffled = list(range(len(INSTRUCTIONS)))
    random.Random(3).shuffle(shuffled)
    other = tags_by_id(tag(tmp_path / "shuffled", tiny_reward_model, shuffled))
    for rid, t in tags.items():
        assert other[rid]["near_dup_keep"] == t["near_dup_keep"] and other[rid]["near_dup_cluster"] == t["near_dup_cluster"]
        assert other[rid]["reward"] == pytest.approx(t["reward"], abs=1e-4)


def test_tag_resumes_after_losing_work_and_reuses_when_complete(tmp_path: Path, tiny_reward_model: Path) -> None:
    order = list(range(len(INSTRUCTIONS)))
    first = tag(tmp_path, tiny_reward_model, order)
    before = open(first.exports["records"]).read()
    # as if killed after the length tagger: later parts, dedup and the merged output are gone
    import shutil

    for name in ("reward", "embedding"):
        shutil.rmtree(first.stage_dir / "parts" / name)
    (first.stage_dir / "dedup.json").unlink()
    shutil.rmtree(first.stage_dir / "shards")
    (first.stage_dir / "manifest.json").unlink()
    again = tag(tmp_path, tiny_reward_model, order)
    assert not again.cache_hit and again.stage_dir == first.stage_dir
    assert open(again.exports["records"]).read() == before
    assert tag(tmp_path, tiny_reward_model, order).cache_hit


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tag.taggers=[length,sentiment]"], "unknown tagger"),
        (["tag.taggers=[reward]", "tag.reward_source=model"], "tag.reward_model.model is null"),
        (["tag.taggers=[quality]", "tag.judge=null"], "need a judge but tag.judge is null"),
        (["tag.taggers=[base_reward]"], "without reward"),
        (["tag.dedup.threshold=5"], "in \\(0, 4\\]"),
        (["tag.dedup.nprobe=0"], "tag.dedup.nprobe must be >= 1; got 0"),
        (["tag.dedup.nlist=0"], "tag.dedup.nlist must be >= 1 IVF cells or null"),
    ],
)
def test_bad_tag_config(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        schema(*overrides)


def test_missing_reward_model_folder_fails_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tag.reward_model.model"):
        tag(tmp_path, tmp_path / "no-such-model", [0, 1])
    assert not (tmp_path / "out" / "stages" / "tag").exists() or not any((tmp_path / "out" / "stages" / "tag").rglob("*.jsonl"))


def test_tag_without_upstream_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run `magpie-exp stage=generate`"):
        run_tag(schema(f"paths.outputs={tmp_path}", "stage=tag"), show_progress=False)
