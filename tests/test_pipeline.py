"""The pipeline end to end: experiments compose, embedded twins run, sweeps reuse stages, W&B offline, reports."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CACHE, REPO, chromium_dom, schema, wandb_artifacts
from magpie_exp.tracking import artifact_name
from magpie_exp.config import ConfigError

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
TWINS = [e for e in EXPERIMENTS if e.startswith("embedded-")]
SECRET = "sk-magpie-test-secret-0123456789"
NO_TWIN = {"magpie-reasoning-traces"}  # needs a reasoning model: none installs from PyPI


# -- configs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_says_how_to_run_it(experiment: str) -> None:
    text = (REPO / "conf" / "experiment" / f"{experiment}.yaml").read_text()
    assert text.startswith("# @package _global_")
    assert f"magpie-exp experiment={experiment}" in text.split("defaults:")[0].split("experiment_name:")[0]
    cfg = schema(f"experiment={experiment}")
    assert cfg.experiment_name == experiment and cfg.stage == "pipeline"
    if experiment.startswith("embedded-"):
        assert cfg.generator.model.startswith("embedded:") and cfg.sft.base_model.startswith("embedded:")
        tiny = schema(f"experiment={experiment}", "scale=tiny")
        assert tiny.generate.count == 8 and tiny.evaluation.model_engine.type == "hf"
    elif experiment in NO_TWIN:
        assert "No embedded twin" in text
    else:
        twin = "embedded-" + {"magpie-air-300k-filtered-sft": "air-sft", "magpie-pro-300k-filtered-sft": "pro-sft",
                              "magpie-pro-300k-dpo": "pro-dpo", "table7-sampling-grid": "table7-grid",
                              "table13-filter-ablation": "filter-ablation"}[experiment]
        assert twin in TWINS and f"experiment={twin}" in text


def test_paper_experiments_carry_the_paper_settings() -> None:
    dpo = schema("experiment=magpie-pro-300k-dpo")
    assert dpo.generator.name == "llama3-70b-instruct" and dpo.generator.tensor_parallel_size == 4
    assert dpo.tag.reward_model.name.startswith("armorm-llama3-8b") and dpo.pair.num_responses == 5 and dpo.pair.temperature == 0.8
    assert dpo.sft.base_model == "meta-llama/Meta-Llama-3-8B" and dpo.dpo.beta == 0.01
    assert sum(c.count for c in dpo.generate.grid) == 1_000_000
    air = schema("experiment=magpie-air-300k-filtered-sft")
    assert air.curate.name == "air-300k-filtered" and "base_reward" in air.tag.taggers
    raw = yaml.safe_load((REPO / "conf" / "experiment" / "table13-filter-ablation.yaml").read_text())
    assert raw["hydra"]["mode"] == "MULTIRUN"
    assert raw["hydra"]["sweeper"]["params"]["curate"].split(",")[0] == "pro-300k-filtered"
    for recipe in raw["hydra"]["sweeper"]["params"]["curate"].split(","):
        schema("experiment=table13-filter-ablation", f"curate={recipe}")


@pytest.mark.parametrize(("overrides", "message"), [
    (["pipeline.stages=[tag,generate]"], "pipeline.stages must keep the pipeline order"),
    (["pipeline.stages=[generate,train]"], r"pipeline.stages has unknown stage\(s\) \['train'\]"),
    (["pipeline.evaluate_models=[base]"], "pipeline.evaluate_models must list sft, dpo and/or generator"),
    (["force=[everything]"], r"force has unknown stage\(s\) \['everything'\]"),
    (["tracker.type=mlflow"], "tracker.type must be wandb or none"),
    (["tracker.mode=sometimes"], "tracker.mode must be auto, online or offline"),
])
def test_bad_pipeline_configs(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        schema(*overrides)


def test_a_recipe_on_an_untagged_field_stops_the_pipeline_before_generating(tmp_path: Path) -> None:
    from magpie_exp.cli import run_pipeline

    cfg = schema("tag.taggers=[length,embedding]", "curate=pro-filter3", f"paths.outputs={tmp_path / 'out'}",
                 "tracker.type=none", "pipeline.report=false")
    with pytest.raises(ConfigError, match=r"curate \(reward\) needs the field 'reward'.*add 'reward' to tag.taggers"):
        run_pipeline(cfg, tmp_path)
    assert not (tmp_path / "out" / "stages").exists()  # nothing was generated


def test_objective_and_scrub() -> None:
    from magpie_exp.pipeline import objective
    from magpie_exp.tracking import scrub

    scores = {"dpo": {"mt_bench": {"score": 4.5, "label": "x"}}}
    assert objective(scores, "dpo/mt_bench/score") == 4.5 and objective(scores, None) is None
    with pytest.raises(ConfigError, match="pipeline.objective: 'sft/mt_bench/score' is not in this run's scores"):
        objective(scores, "sft/mt_bench/score")
    with pytest.raises(ConfigError, match="not a number"):
        objective(scores, "dpo/mt_bench/label")
    cleaned = scrub({"engine": {"api_key_env": "OPENAI_API_KEY", "api_key": SECRET}, "x": [{"token": SECRET}]})
    assert SECRET not in json.dumps(cleaned) and cleaned["engine"]["api_key_env"] == "OPENAI_API_KEY"


def test_launcher_and_sweeper_configs_compose() -> None:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from magpie_exp.cli import conf_dir

    targets = {"hydra/launcher=slurm": "SlurmLauncher", "hydra/launcher=local": "LocalLauncher",
               "hydra/sweeper=optuna-filter-search": "OptunaSweeper"}
    for override, target in targets.items():
        with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=[override], return_hydra_config=True)
        node = cfg.hydra.launcher if "launcher" in override else cfg.hydra.sweeper
        assert node._target_.endswith(target)
    ray = yaml.safe_load((REPO / "conf" / "hydra" / "launcher" / "ray-cluster.yaml").read_text())
    assert ray["defaults"] == ["ray"] and ray["ray"]["init"]["address"] == "auto"


# -- real runs ---------------------------------------------------------------------------------------------------
# The embedded twins share their tagging settings and run in one outputs folder, in this order: the filter
# ablation computes generate and tag (temperature 1.0) and two recipes; the Table 7 grid reuses the 1.0 cell and
# computes 1.2; the Pro SFT twin is then entirely cached; the Pro DPO twin adds pairs, DPO and its evaluations;
# the Air twin tags anew (base-model answers). Each test's assertions hold in any order.


@pytest.fixture(scope="session")
def twin_outputs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("twins")


@pytest.fixture
def lent_engine(vllm_engine):
    """The session's SmolLM2 engine, lent to every pipeline run (in-process Hydra jobs included)."""
    from magpie_exp.engines.pool import _KEPT, _LENT, engine_identity, lend_engine

    cfg = schema("scale=tiny")
    lend_engine(cfg, cfg.generator, vllm_engine)
    yield vllm_engine
    key = engine_identity(cfg, cfg.generator)
    _KEPT.pop(key, None)
    _LENT.discard(key)


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch) -> Path:
    for key, value in {"WANDB_DIR": "wandb", "WANDB_DATA_DIR": "wandb-data", "WANDB_CACHE_DIR": "wandb-cache",
                       "WANDB_CONFIG_DIR": "wandb-config"}.items():
        monkeypatch.setenv(key, str(tmp_path / value))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # must never show up in anything a run writes
    return tmp_path


def _hydra(args: list[str], monkeypatch) -> None:
    """``magpie-exp <args>`` in this process (Hydra's basic launcher runs a multirun's jobs one after another)."""
    from hydra.core.global_hydra import GlobalHydra

    from magpie_exp import cli

    monkeypatch.setattr(sys, "argv", ["magpie-exp", *args])
    GlobalHydra.instance().clear()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        cli.main()
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers[:]:  # Hydra's job logging (this test's stderr, a log file) ends with the job
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.handlers[:], root.level = handlers, level


def _jobs(sweep_dir: Path) -> list[dict]:
    jobs = sorted(sweep_dir.glob("*/pipeline.json"), key=lambda p: int(p.parent.name))
    return [json.loads(p.read_text()) for p in jobs]


def _chromium_text(page: Path, tmp: Path) -> str:
    return chromium_dom(page.as_uri(), tmp)


def _no_secret_in(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_filter_ablation_sweep_reuses_generated_and_tagged_data(twin_outputs: Path, tmp_path: Path, lent_engine,
                                                                 wandb_offline, monkeypatch, capfd) -> None:
    """Two filter recipes through Hydra's multirun: one generate, one tag, two curated sets, models and score tables."""
    sweep = tmp_path / "sweep"
    _hydra(["experiment=embedded-filter-ablation", "scale=tiny", f"paths.outputs={twin_outputs}", f"hydra.sweep.dir={sweep}"],
           monkeypatch)
    err = capfd.readouterr().err
    # a quiet console: the project's lines ('HH:MM:SS ...'), progress views, each member's closing summary; the
    # libraries' output (transformers, TRL, torch, warnings) went to each member's log file
    segments = [seg for line in err.splitlines() for seg in line.split("\r") if seg.strip()]
    # (our multi-line messages continue on lines of their own: the evaluation's Markdown table and its notes)
    shown = re.compile(r"^\d\d:\d\d:\d\d |^  [\w:]+ +(cached|\d+[smh])|^\[[\d\- :,]+\]\[magpie_exp|^\||^- \w+: n=")
    progress = re.compile(r"^[\w:]+( \w+)?: +(\d+%\||\d+ \w+ \[)")
    strays = [seg for seg in segments if not shown.match(seg) and not progress.match(seg)]
    assert not strays, strays[:10]
    assert sum(" done in " in seg and "report: " in seg for seg in segments) == 2, segments[-30:]
    logs = [(sweep / str(i) / "magpie-exp.log").read_text() for i in (0, 1)]
    assert all("pipeline: sft ran" in text and "done in " in text for text in logs)
    first, second = _jobs(sweep)
    hits = {s["step"]: s["cache_hit"] for s in second["steps"]}
    assert hits["generate"] and hits["tag"] and not hits["curate"] and not hits["sft"]
    assert "cache hit: generate stage" in err and "cache hit: tag" in err
    folders = [{s["step"]: s["folder"] for s in run["steps"]} for run in (first, second)]
    assert folders[0]["generate"] == folders[1]["generate"] and folders[0]["tag"] == folders[1]["tag"]
    assert folders[0]["curate"] != folders[1]["curate"] and folders[0]["sft"] != folders[1]["sft"]
    for f in folders:
        assert (Path(f["sft"]) / "model" / "config.json").exists()
        assert (Path(f["evaluate:sft"]) / "scores.json").exists() and (Path(f["evaluate:sft"]) / "results.md").exists()
    assert {r["scores"]["sft"]["mt_bench"]["judge"] for r in (first, second)} == {"smollm2-135m-instruct"}
    dom = _chromium_text(sweep / "index.html", tmp_path)
    assert 'id="jobs"' in dom and dom.count("report</a>") == 2 and "curate=english-safe" in dom
    assert 'id="ablation"' in dom and "each score against curate" in dom and (sweep / "ablation.png").exists()
    assert len(list((twin_outputs / "wandb" / "wandb").glob("offline-run-*"))) >= 2
    _no_secret_in(sweep)


@pytest.mark.slow
def test_table7_twin_sweeps_the_temperature(twin_outputs: Path, tmp_path: Path, lent_engine, monkeypatch) -> None:
    """The grid's generate step per temperature (tag to evaluate per sweep job: the filter-ablation twin)."""
    sweep = tmp_path / "sweep"
    _hydra(["experiment=embedded-table7-grid", "scale=tiny", f"paths.outputs={twin_outputs}", f"hydra.sweep.dir={sweep}",
            "tracker.type=none", "pipeline.stages=[generate]"], monkeypatch)
    jobs = _jobs(sweep)
    assert len(jobs) == 2
    temps = []
    for job in jobs:
        generate = Path(job["steps"][0]["folder"])
        temps.append(json.loads((generate / "manifest.json").read_text())["config"]["generator"]["instruction"]["temperature"])
        assert json.loads((generate / "stats.json").read_text())["records"] == 8
    assert temps == [1.0, 1.2]
    assert jobs[0]["steps"][0]["folder"] != jobs[1]["steps"][0]["folder"]


@pytest.mark.slow
def test_pro_sft_twin(twin_outputs: Path, tmp_path: Path, lent_engine) -> None:
    from magpie_exp.cli import run_pipeline

    cfg = schema("experiment=embedded-pro-sft", "scale=tiny", f"paths.outputs={twin_outputs}", "tracker.type=none")
    outcome = run_pipeline(cfg, tmp_path)
    assert [s["step"] for s in outcome["steps"]] == ["generate", "tag", "curate", "sft", "evaluate:sft"]
    scores = outcome["scores"]["sft"]
    assert scores["ifeval"]["n"] == 1 and scores["mt_bench"]["n"] == 1
    assert (Path(outcome["steps"][3]["folder"]) / "model" / "config.json").exists()
    assert (tmp_path / "report.html").exists()


def tagged_records(outcome: dict) -> int:
    return json.loads((Path(outcome["steps"][1]["folder"]) / "stats.json").read_text())["records"]


@pytest.mark.slow
def test_pro_dpo_twin_end_to_end(twin_outputs: Path, tmp_path: Path, lent_engine, wandb_offline,
                                 tiny_reward_model) -> None:
    """The whole loop, the two trained Gemmas side by side, W&B offline with lineage, the report in Chromium.

    Pairs are ranked by a reward model, as the paper's (ArmoRM): here a tiny random classifier, whose real-valued
    scores do not tie. The embedded judge's 1-10 score ties on most of 4 x 2 tiny answers, and on which ones
    depends on the CPU's numerics; the judge-score ranking has its own test (test_pair_train)."""
    from magpie_exp.cli import run_pipeline

    overrides = ["experiment=embedded-pro-dpo", "scale=tiny", f"paths.outputs={twin_outputs}",
                 "tag.reward_source=model",
                 f"tag.reward_model.model={tiny_reward_model}", "tag.reward_model.name=tiny-rm"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    outcome = run_pipeline(schema(*overrides), run_dir)
    steps = [s["step"] for s in outcome["steps"]]
    assert steps == ["generate", "tag", "curate", "pair", "sft", "dpo", "evaluate:sft", "evaluate:dpo"]
    assert set(outcome["scores"]) == {"sft", "dpo"}  # the generator's own evaluation: test_evaluate.py
    assert all(set(s) == {"ifeval", "mt_bench"} for s in outcome["scores"].values())
    saved = json.loads((run_dir / "pipeline.json").read_text())
    assert [s["step"] for s in saved["steps"]] == steps
    sft, dpo = (Path(s["folder"]) for s in outcome["steps"][4:6])
    assert json.loads((dpo / "stats.json").read_text())["init_from"] == str(sft / "model")
    pairs = [json.loads(line) for line in (Path(outcome["steps"][3]["folder"]) / "export" / "pairs.jsonl").open()]
    assert pairs and all(p["chosen_score"] > p["rejected_score"] for p in pairs)

    # the W&B offline run: its binary log and the sample tables
    runs = sorted((twin_outputs / "wandb" / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime)
    assert list(runs[-1].glob("run-*.wandb"))
    tables = [p.relative_to(runs[-1]).as_posix() for p in runs[-1].rglob("*.table.json")]
    assert any("media/table/eval/dpo/items" in t for t in tables), tables
    # lineage: every step's folder is an artifact naming the artifacts it was made from
    arts = wandb_artifacts(runs[-1], expect=8)
    name = {s["step"]: artifact_name(s["folder"]) for s in outcome["steps"]}
    inputs = {step: arts[n]["metadata"]["inputs"] for step, n in name.items()}
    assert inputs == {"generate": [], "tag": [name["generate"]], "curate": [name["tag"]], "pair": [name["curate"]],
                      "sft": [name["curate"]], "dpo": [name["pair"], name["sft"]],
                      "evaluate:sft": [name["sft"]], "evaluate:dpo": [name["dpo"]]}, inputs
    assert arts[name["dpo"]]["type"] == "model" and arts[name["evaluate:dpo"]]["type"] == "evaluation"

    # the report, as Chromium renders it
    dom = _chromium_text(run_dir / "report.html", tmp_path)
    for section in ("stages", "dataset", "samples", "filters", "training", "evaluation", "config"):
        assert f'id="{section}"' in dom, section
    assert "dropped:" in dom and "training loss" in dom  # 4 of 8 records are kept: the rest are dropped with a reason
    assert "IFEval prompt strict" in dom and "MT-Bench (1-10)" in dom and "data:image/png;base64" in dom
    for model in ("sft", "dpo"):
        assert f"<td>{model}</td>" in dom
    # diversity of the tagged and curated sets, with the embedding figures from the tag stage's vectors
    for step, n in ((1, tagged_records(outcome)), (2, 4)):
        div = json.loads((Path(outcome["steps"][step]["folder"]) / "stats.json").read_text())["diversity"]
        assert div["sample"] == n and 1.0 <= div["vendi_score"] <= n and 0 < div["mean_cosine_distance"] <= 2, div
    # decontamination runs in the loop and says what it checked against
    tagged = json.loads((Path(outcome["steps"][1]["folder"]) / "stats.json").read_text())["decontam"]
    assert tagged["checked"] == tagged_records(outcome) and {"ifeval", "mt_bench", "arena_hard"} <= set(tagged["against"])
    assert 'id="decontam"' in dom and "match an evaluation prompt" in dom and "ifeval (541 prompts)" in dom

    # the same run again: every stage is a cache hit, with the same scores
    again = run_pipeline(schema(*overrides), run_dir)
    assert all(s["cache_hit"] for s in again["steps"]), again["steps"]
    assert again["scores"] == outcome["scores"]
    # force re-runs the stages it names, and only those
    forced = run_pipeline(schema(*overrides, "force=[curate]", "pipeline.stages=[generate,tag,curate]",
                                 "tracker.type=none"), run_dir)
    assert [s["cache_hit"] for s in forced["steps"]] == [True, True, False]
    _no_secret_in(run_dir)
    _no_secret_in(twin_outputs / "wandb")


@pytest.mark.slow
def test_air_sft_twin_with_base_model_answers(twin_outputs: Path, tmp_path: Path, lent_engine) -> None:
    from magpie_exp.cli import run_pipeline

    # Up to curate: what is the Air twin's own (Gemma's URIAL answers, the reward difference, the Air recipe). Its SFT
    # and evaluation are the Pro SFT twin's, with the same recipe and model on another curated set.
    cfg = schema("experiment=embedded-air-sft", "scale=tiny", f"paths.outputs={twin_outputs}", "tracker.type=none",
                 "pipeline.stages=[generate,tag,curate]")
    outcome = run_pipeline(cfg, tmp_path)
    assert [s["step"] for s in outcome["steps"]] == ["generate", "tag", "curate"]
    tagged = [json.loads(line) for shard in sorted((Path(outcome["steps"][1]["folder"]) / "shards").glob("*.jsonl"))
              for line in shard.open()]
    assert len(tagged) == 8
    for record in tagged:  # Gemma-3-270M (base) answered URIAL-style; the judge scored both answers
        tags = record["tags"]
        assert tags["base_response"] and tags["base_finish_reason"] in ("stop", "length")
        assert "gemma3-270m-base (URIAL)" in tags["by"]["base_reward"]
        if tags["reward"] is not None and tags["base_reward"] is not None:
            assert tags["reward_difference"] == pytest.approx(tags["reward"] - tags["base_reward"])
    curated = json.loads((Path(outcome["steps"][2]["folder"]) / "stats.json").read_text())
    assert curated["recipe"] == "air-embedded" and curated["kept"] >= 1
    kept = [json.loads(line) for line in open(Path(outcome["steps"][2]["folder"]) / "export" / "messages.jsonl")]
    by_id = {r["id"]: r["tags"] for r in tagged}
    assert all(by_id[r["id"]]["reward_difference"] > 0 for r in kept)  # the Air rule: the instruct answer won


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path: Path) -> None:
    """hydra-submitit-launcher's local executor runs sweep members as separate processes."""
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Question {i}?"},
                                         {"role": "assistant", "content": "An answer. " * (i + 1)}],
             "tags": {"language": "EN" if i % 2 else "FR", "safety": "safe", "reward": float(i), "contaminated": False}}
            for i in range(6)]
    data = tmp_path / "tagged.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "MAGPIE_EXP_CACHE": str(CACHE)}
    out = subprocess.run([sys.executable, "-m", "magpie_exp.cli", "-m", "hydra/launcher=local", "stage=curate",
                          f"input={data}", "curate=none,english-safe", "curate.dedup=false",
                          f"paths.outputs={tmp_path / 'out'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    kept = sorted(json.loads((s / "stats.json").read_text())["kept"] for s in (tmp_path / "out" / "stages" / "curate").iterdir())
    assert kept == [3, 6]
    assert list((tmp_path / "sweep").rglob("*_submitted.pkl")) or list((tmp_path / "sweep").rglob(".submitit"))
    page = (tmp_path / "sweep" / "index.html").read_text()  # one-stage members are listed too
    assert page.count("<td>finished</td>") == 2 and "curate=english-safe" in page


@pytest.mark.slow
def test_parallel_sweep_members_share_one_upstream_folder(tmp_path: Path) -> None:
    """Three members at once (submitit's local launcher) need the same tag folder: one writes it, held mid-write
    by a pause, while the other two wait for it and then read it. All finish; the folder is written once, nothing
    in it changes after it is complete, and no temporary file is lost or left behind."""
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Question {i} about topic {i * 7}?"},
                                         {"role": "assistant", "content": "An answer. " * (i + 1)}]} for i in range(12)]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # the first shard a process writes holds it for 8 s: the tag folder's writer (the readers pause later, in curate)
    env = {**os.environ, "MAGPIE_EXP_CACHE": str(CACHE), "MAGPIE_EXP_FAILPOINT": "shard.written:1:pause=8"}
    out = subprocess.run([sys.executable, "-m", "magpie_exp.cli", "-m", "hydra/launcher=local",
                          "hydra.launcher.cpus_per_task=1", "pipeline.stages=[tag,curate]", f"input={data}",
                          "tag.taggers=[length]", "tag.plots=false", "curate=none", "curate.dedup=false",
                          "curate.select.by=response_length", "curate.select.count=3,6,9", "tracker.type=none",
                          f"paths.outputs={tmp_path / 'out'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    tag_dirs = list((tmp_path / "out" / "stages" / "tag").iterdir())
    assert len(tag_dirs) == 1
    tag_dir = tag_dirs[0]
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "sweep").rglob("magpie-exp.log"))  # Hydra's job logs
    assert logs.count("is being written by another job") >= 2, logs[-3000:]  # both waited: they did overlap
    assert logs.count("cache hit: tag stage") == 2, logs[-3000:]  # ... and then only read what the writer made
    assert json.loads((tag_dir / "manifest.json").read_text())["complete"]
    assert not [p for p in tag_dir.rglob("*") if ".tmp-" in p.name]

    def snapshot() -> dict[str, tuple[bytes, int]]:
        return {str(p.relative_to(tag_dir)): (p.read_bytes(), p.stat().st_mtime_ns) for p in tag_dir.rglob("*") if p.is_file()}

    before = snapshot()
    again = subprocess.run([sys.executable, "-m", "magpie_exp.cli", "stage=curate", f"input={tag_dir}", "curate=none",
                            "curate.dedup=false", "curate.select.count=4", "tracker.type=none",
                            f"paths.outputs={tmp_path / 'out'}"], cwd=tmp_path, capture_output=True, text=True,
                           env={k: v for k, v in env.items() if k != "MAGPIE_EXP_FAILPOINT"}, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert snapshot() == before  # reading it again changes no byte and no timestamp
    kept = sorted(json.loads((c / "stats.json").read_text())["kept"] for c in (tmp_path / "out" / "stages" / "curate").iterdir())
    assert kept == [3, 4, 6, 9]  # the three members and the reading run
    from magpie_exp.shards import ShardStore

    assert ShardStore.open(tag_dir).verify() == []


def test_a_failed_sweep_member_is_listed_and_the_others_run(tmp_path: Path, monkeypatch, capfd) -> None:
    """One member's bad value fails that member only: the others run, index.html lists it as failed with its one
    line, and the command exits with the member's code (2) at the end."""
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Question {i}?"},
                                         {"role": "assistant", "content": "An answer. " * (i + 1)}],
             "tags": {"response_length": 11 * (i + 1)}} for i in range(6)]
    data = tmp_path / "tagged.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sweep = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_info:
        _hydra(["-m", "pipeline.stages=[curate]", f"input={data}", "curate=none", "curate.dedup=false",
                "curate.select.count=0,3", "tracker.type=none", f"paths.outputs={tmp_path / 'out'}",
                f"hydra.sweep.dir={sweep}"], monkeypatch)
    assert exit_info.value.code == 2
    err = capfd.readouterr().err
    assert "curate.select.count must be >= 1 or null; got 0" in err and "1 sweep member(s) failed (0)" in err
    assert json.loads((sweep / "0" / "failed.json").read_text())["exit_code"] == 2
    assert [s["step"] for s in _jobs(sweep)[0]["steps"]] == ["curate"]  # member 1 ran
    page = (sweep / "index.html").read_text()
    assert "failed: curate.select.count must be &gt;= 1 or null; got 0" in page and "<td>finished</td>" in page
