"""The Python entry point, for notebooks and scripts: the same configs and overrides as the ``magpie-exp``
command, the result folders and scores back as a value.

    from magpie_exp import run
    result = run("stage=generate", "generate.count=8")
    result.folders["generate"]                    # the stage folder (records, stats.json, export/ with its card)
    result = run("pipeline.stages=[generate,tag,curate]", "curate=english-safe")
    result.stats["curate"]["kept"], result.scores  # scores: {model: {benchmark: metrics}} when evaluate ran

A bad value raises ``ConfigError`` with the one line the command would print. The console is left as it is (the
progress views show; logging is the notebook's own), and a pipeline run writes ``pipeline.json`` and
``report.html`` into ``run_dir`` (default: a new folder under ``<paths.outputs>/runs/``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunResult:
    folders: dict[str, str]  # step -> stage folder (generate, tag, curate, pair, sft/dpo (train-sft/-dpo alone), evaluate:<model>)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # step -> its stats
    scores: dict[str, Any] = field(default_factory=dict)  # evaluated model -> benchmark -> metrics
    cache_hits: dict[str, bool] = field(default_factory=dict)
    run_dir: Path | None = None  # the pipeline's run folder (pipeline.json, report.html)


def run(*overrides: str, run_dir: str | Path | None = None, engines: dict[str, Any] | None = None) -> RunResult:
    """Run one stage (``stage=...``) or the pipeline (the default) with Hydra ``overrides``; ``engines`` lends
    already built engines (model spec or role -> engine), as the tests and benchmarks do."""
    from magpie_exp.cli import load_config, run_pipeline
    from magpie_exp.runner import run_stage_result

    cfg = load_config(*overrides)
    if cfg.stage == "inspect":
        from magpie_exp.config import ConfigError

        raise ConfigError("stage=inspect prints a report: use `magpie-exp stage=inspect ...` or magpie_exp.inspection.run_inspect")
    if cfg.stage == "publish":
        from magpie_exp.publish import run_publish

        report = run_publish(cfg)
        return RunResult({"publish": report["folder"]}, {"publish": report})
    if cfg.stage != "pipeline":
        name = f"train-{cfg.trainer}" if cfg.stage == "train" else cfg.stage
        result = run_stage_result(cfg, engines)
        return RunResult({name: str(result.stage_dir)}, {name: result.stats}, {}, {name: result.cache_hit})
    folder = Path(run_dir) if run_dir is not None else Path(cfg.paths.outputs) / "runs" / time.strftime("%Y-%m-%d/%H-%M-%S")
    folder.mkdir(parents=True, exist_ok=True)
    outcome = run_pipeline(cfg, folder, engines)
    import json

    steps = json.loads((folder / "pipeline.json").read_text())["steps"]
    stats = {}
    for step in steps:
        path = Path(step["folder"]) / ("scores.json" if step["step"].startswith("evaluate") else "stats.json")
        stats[step["step"]] = json.loads(path.read_text()) if path.exists() else {}
    return RunResult({s["step"]: s["folder"] for s in steps}, stats, outcome["scores"],
                     {s["step"]: s["cache_hit"] for s in steps}, folder)
