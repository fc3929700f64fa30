"""The Python entry point (magpie_exp.run) for notebooks: a stage or the pipeline from overrides, the folders,
stats and scores back, a bad value as a ConfigError with the command's line (fast: curate on a JSONL file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import magpie_exp
from magpie_exp.config import ConfigError


def _data(tmp_path: Path) -> Path:
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Question {i}?"},
                                         {"role": "assistant", "content": "An answer. " * (i + 1)}],
             "tags": {"response_length": 11 * (i + 1)}} for i in range(6)]
    data = tmp_path / "tagged.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def test_a_stage_and_the_pipeline_from_python(tmp_path: Path) -> None:
    common = [f"input={_data(tmp_path)}", "curate=none", "curate.dedup=false", "curate.select.count=3",
              "curate.export=[messages]", f"paths.outputs={tmp_path / 'out'}"]
    alone = magpie_exp.run("stage=curate", *common)
    assert list(alone.folders) == ["curate"] and alone.stats["curate"]["kept"] == 3 and not alone.cache_hits["curate"]
    assert (Path(alone.folders["curate"]) / "export" / "messages.jsonl").exists()
    piped = magpie_exp.run("pipeline.stages=[curate]", "tracker.type=none", *common, run_dir=tmp_path / "run")
    assert piped.folders == alone.folders and piped.cache_hits == {"curate": True} and piped.scores == {}
    assert piped.stats["curate"]["kept"] == 3 and (tmp_path / "run" / "report.html").exists()
    with pytest.raises(ConfigError, match="curate.select.count must be >= 1 or null; got 0"):
        magpie_exp.run("stage=curate", *common, "curate.select.count=0")
