"""W&B lineage (fast, offline): each stage folder is an artifact by reference, named <stage>-<hash>, whose
metadata names the artifacts it was made from; read back from the offline run's file. The whole loop's lineage is
checked on the DPO twin (test_pipeline.py)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import schema, wandb_artifacts
from magpie_exp.tracking import artifact_name, build_tracker


def test_stage_folders_are_artifacts_by_reference_with_their_inputs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    stages = tmp_path / "out" / "stages"
    tag, curate, train = stages / "tag" / "aaa111", stages / "curate" / "bbb222", stages / "train" / "ccc333"
    for folder in (tag, curate, train / "model"):
        folder.mkdir(parents=True)
    (tag / "manifest.json").write_text(json.dumps({"complete": True}))
    (curate / "stats.json").write_text(json.dumps({"kept": 3}))
    (train / "model" / "config.json").write_text("{}")
    assert artifact_name(train / "model") == "train-ccc333" and artifact_name(curate) == "curate-bbb222"
    tracker = build_tracker(schema(f"paths.outputs={tmp_path / 'out'}", "tracker.mode=offline"), "t", "run")
    tracker.log_stage_artifact("tag", str(tag), [], False)
    tracker.log_stage_artifact("curate", str(curate), ["tag-aaa111"], False)
    tracker.log_stage_artifact("sft", str(train), ["curate-bbb222"], True)
    run_dir = tracker.run_dir
    tracker.finish()
    arts = wandb_artifacts(run_dir, expect=3)
    assert {k: (v["type"], v["metadata"]["inputs"]) for k, v in arts.items()} == {
        "tag-aaa111": ("dataset", []), "curate-bbb222": ("dataset", ["tag-aaa111"]), "train-ccc333": ("model", ["curate-bbb222"])}
    assert arts["curate-bbb222"]["refs"] == {"stats.json": (curate / "stats.json").resolve().as_uri()}  # a reference, no upload
    assert arts["train-ccc333"]["metadata"]["cache_hit"] is True and "model/config.json" in arts["train-ccc333"]["refs"]
