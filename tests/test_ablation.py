"""The sweep page's ablation picture (magpie_exp/ablation.py) on a made-up sweep folder (fast): which settings
were swept, each score and data-side number per job, bootstrap intervals over the evaluated items, and the plot
embedded in index.html. The real sweep page is rendered in Chromium by test_pipeline.py."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from magpie_exp.ablation import bootstrap_interval, job_point, swept_keys
from magpie_exp.report import write_sweep_report


def _job(sweep: Path, num: int, temperature: str, recipe: str, passed: list[bool], kept: int) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        [f"generator.instruction.temperature={temperature}", f"curate={recipe}", "paths.outputs=/x"]))
    curate, evaluate = job / "curate", job / "eval"
    curate.mkdir()
    (curate / "stats.json").write_text(json.dumps({"kept": kept, "diversity": {"distinct_2": 0.5 + kept / 100, "vendi_score": kept / 2}}))
    (evaluate / "ifeval").mkdir(parents=True)
    (evaluate / "ifeval" / "items.jsonl").write_text("".join(json.dumps({"id": f"i{i}", "prompt_level_strict_acc": p}) + "\n"
                                                             for i, p in enumerate(passed)))
    score = round(100 * sum(passed) / len(passed), 2)
    (job / "pipeline.json").write_text(json.dumps({
        "steps": [{"step": "curate", "folder": str(curate), "cache_hit": False, "seconds": 1},
                  {"step": "evaluate:sft", "folder": str(evaluate), "cache_hit": False, "seconds": 1}],
        "scores": {"sft": {"ifeval": {"prompt_level_strict_acc": score, "n": len(passed)},
                           "arena_hard": {"score": 40.0 + num, "ci95": [35.0 + num, 45.0 + num]}}}}))


def test_the_sweep_page_plots_each_score_against_the_swept_settings(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    grid = [("1.0", "pro-filter3"), ("1.2", "pro-filter3"), ("1.0", "english-safe"), ("1.2", "english-safe")]
    for num, (temperature, recipe) in enumerate(grid):
        _job(sweep, num, temperature, recipe, [True, False, True, num % 2 == 0] * 5, 10 + num)
    points = [job_point([o for o in yaml.safe_load((sweep / str(n) / ".hydra" / "overrides.yaml").read_text())
                         if not o.startswith("paths.")], json.loads((sweep / str(n) / "pipeline.json").read_text()))
              for n in range(4)]
    assert swept_keys(points) == ["generator.instruction.temperature", "curate"]
    first = points[0]
    assert first.values["sft: IFEval prompt strict"] == 75.0 and first.values["data: kept records"] == 10
    assert first.values["data: Vendi score"] == 5.0 and first.intervals["sft: Arena-Hard-style"] == (35.0, 45.0)
    low, high = first.intervals["sft: IFEval prompt strict"]  # bootstrap over the 20 items
    assert low < 75.0 < high and 50 < low and high <= 100
    page = write_sweep_report(sweep).read_text()
    assert "id='ablation'" in page and "each score against generator.instruction.temperature, one line per curate" in page
    assert (sweep / "ablation.png").stat().st_size > 10_000 and page.count("data:image/png;base64,") == 1


def test_bootstrap_intervals_are_seeded_and_collapse_on_constant_items() -> None:
    values = [0.0, 100.0, 100.0, 0.0, 100.0, 100.0, 100.0, 0.0]
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    assert bootstrap_interval([100.0] * 8) == (100.0, 100.0) and bootstrap_interval([1.0]) is None


def test_one_job_or_nothing_swept_gives_no_plot(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    _job(sweep, 0, "1.0", "pro-filter3", [True, False], 3)
    assert "id='ablation'" not in write_sweep_report(sweep).read_text() and not (sweep / "ablation.png").exists()
