"""The ``magpie-exp`` command: a Hydra app that runs the whole pipeline, or one stage, from configs.

    magpie-exp                                   # the pipeline on the embedded models (generate ... evaluate)
    magpie-exp stage=generate generator=llama3.1-8b-instruct control=math generate.count=10000
    magpie-exp -m curate=pro-filter3,english-safe      # a Hydra multirun sweep (stages shared where equal)
    magpie-exp experiment=embedded-pro-dpo       # an experiment (conf/experiment/)
    magpie-exp stage=inspect generator=gpt-oss-20b generator.model=<folder>   # the template, stops, BOS, reasoning

The Hydra ``main`` only wires: environment, config check, pipeline or stage call, tracker. A bad value ends
with one line naming the key and the fix (exit code 2), never a half-written stage folder that looks complete.
With ``pipeline.objective`` set, the job returns that score to Hydra's sweeper (Optuna).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from magpie_exp.config import ConfigError, MagpieConfig, register_configs
from magpie_exp.console import is_quiet, session
from magpie_exp.runner import run_stage_result, setup_environment
from magpie_exp.stages.common import check_writable, is_disk_full

log = logging.getLogger("magpie_exp")


def conf_dir() -> str:
    """``conf/`` shipped inside the wheel, or the repository's top-level ``conf/`` in an editable install."""
    packaged = Path(__file__).parent / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "conf")


def compose_config(*overrides: str) -> DictConfig:
    """The shipped config composed with Hydra overrides, as ``magpie-exp <overrides>`` would see it (no run)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def load_config(*overrides: str) -> MagpieConfig:
    """``compose_config`` checked against the schema and validated (for scripts, notebooks and benchmarks)."""
    from magpie_exp.checks import checked  # imports every stage: only once a config is to be checked

    return checked(compose_config(*overrides))


def run_stage(cfg: MagpieConfig) -> dict[str, str]:
    """Run one stage; returns {stage: folder} (train is named train-sft / train-dpo)."""
    name = f"train-{cfg.trainer}" if cfg.stage == "train" else cfg.stage
    return {name: str(run_stage_result(cfg).stage_dir)}


def _job_identity() -> tuple[str, str, list[str]]:
    """(run name, job type, tags) for the tracker, from Hydra's view of this job."""
    if not HydraConfig.initialized():  # called from Python, not the magpie-exp command
        return "default", "run", []
    hc = HydraConfig.get()
    overrides = [o for o in hc.overrides.task if not o.startswith(("paths.", "tracker."))]
    name = ",".join(overrides)[:120] or "default"
    if str(hc.mode) == "RunMode.MULTIRUN":
        return name, f"sweep-{Path(hc.sweep.dir).name}", ["sweep"]
    return name, "run", []


def run_pipeline(cfg: MagpieConfig, run_dir: Path, engines: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pipeline with its tracker and report; the tracker is closed whatever happens."""
    from magpie_exp.pipeline import Pipeline, summary
    from magpie_exp.tracking import build_tracker

    setup_environment(Path(cfg.paths.cache_dir))
    check_writable(Path(cfg.paths.outputs), "paths.outputs")  # before the tracker writes there
    if cfg.tracker.dir:
        check_writable(Path(cfg.tracker.dir), "tracker.dir")
    name, job_type, tags = _job_identity()
    tracker = build_tracker(cfg, name, job_type, tags)
    pipeline = Pipeline(cfg, tracker, run_dir, engines)
    exit_code, start, report = 1, time.perf_counter(), None
    try:
        outcome = pipeline.run()
        if cfg.pipeline.report:
            from magpie_exp.report import write_run_report

            report = write_run_report(run_dir, cfg, pipeline.records, pipeline.scores, tracker)
            tracker.log_file("report", str(report))
        exit_code = 0
        log.info("%s", summary(pipeline.records, time.perf_counter() - start, report))
        return outcome
    finally:
        if cfg.pipeline.report and exit_code:
            try:  # a failed run still gets a report of what it did
                from magpie_exp.report import write_run_report

                write_run_report(run_dir, cfg, pipeline.records, pipeline.scores, None, failed=True)
            except Exception as exc:  # the original error matters more
                log.warning("no report for the failed run: %s", exc)
        tracker.finish(exit_code)


register_configs()


def _private_files(run_dir: Path) -> None:
    """What a run creates is not world-readable and only its owner writes it (umask 027): datasets, models and
    logs of a shared machine stay with their owner and group."""
    os.umask(os.umask(0o027) | 0o027)
    if run_dir.is_dir() and run_dir.stat().st_uid == os.getuid():  # Hydra made it before the job started
        run_dir.chmod(run_dir.stat().st_mode & ~0o027)


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
def main(raw: DictConfig) -> float | None:
    from hydra.types import RunMode

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    _private_files(run_dir)
    log_file = run_dir / f"{HydraConfig.get().job.name}.log"
    verbose = bool(raw.get("verbose", False)) if isinstance(raw, DictConfig) else False
    with session(log_file, verbose, keep_stdout=raw.get("stage") in ("inspect", "publish")):
        return _job(raw, run_dir, multirun, log_file)


def _job(raw: DictConfig, run_dir: Path, multirun: bool, log_file: Path) -> float | None:
    try:
        from magpie_exp.checks import checked

        cfg = checked(raw)
        if cfg.stage == "inspect":  # a report on stdout: no stage folder, no engine
            from magpie_exp.inspection import render_text, run_inspect

            report = run_inspect(cfg)
            sys.stdout.write((json.dumps(report, ensure_ascii=False, indent=1) if cfg.inspect.json else render_text(report)) + "\n")
            return None
        if cfg.stage == "publish":  # a stage's export to the Hub (or, dry, the list of files): no stage folder
            from magpie_exp.publish import render, run_publish

            sys.stdout.write(render(run_publish(cfg)) + "\n")
            return None
        if cfg.stage == "pipeline":
            from magpie_exp.pipeline import objective

            outcome = run_pipeline(cfg, run_dir)
            folders = {s["step"]: s["folder"] for s in outcome["steps"]}
            value = objective(outcome["scores"], cfg.pipeline.objective)
        else:
            folders, value = run_stage(cfg), None
    except ConfigError as exc:
        log.error("%s", exc)
        if multirun:
            return _member_failed(run_dir, str(exc), 2, raw)
        sys.exit(2)
    except Exception as exc:
        if is_disk_full(exc):
            message = (f"paths.outputs: the disk under '{raw.paths.outputs}' is full "
                       f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}); free some space or "
                       "point paths.outputs at a bigger disk, then run the same command again: finished shards and "
                       "checkpoints are kept, the unfinished ones are redone")
            log.error("%s", message)
            if multirun:
                return _member_failed(run_dir, message, 3, raw)
            sys.exit(3)
        if not multirun:
            if not is_quiet():
                raise
            import traceback

            traceback.print_exc()  # stderr is the log file in a quiet session: the traceback goes there
            log.error("%s: %s (the traceback is in %s)", type(exc).__name__,
                      str(exc).splitlines()[0][:300] if str(exc) else "", log_file)
            sys.exit(1)
        log.exception("sweep member failed")  # the traceback goes to this member's log
        return _member_failed(run_dir, f"{type(exc).__name__}: {str(exc)[:300]}", 1, raw)
    (run_dir / "stages.json").write_text(json.dumps(folders, indent=1))
    if cfg.stage != "pipeline":  # the pipeline's summary has said it all
        for stage, folder in folders.items():
            log.info("%s output: %s", stage, folder)
    return value  # Hydra sweepers (Optuna) minimise or maximise this


def _member_failed(run_dir: Path, error: str, code: int, raw: DictConfig) -> float | None:
    """A failed sweep member: ``failed.json`` in its folder (the sweep page lists it), and the sweep goes on with
    the other members; the command exits non-zero at the end (``report.SweepReport``). An Optuna sweep is given
    NaN, which it records as a failed trial."""
    (run_dir / "failed.json").write_text(json.dumps({"error": error, "exit_code": code}, indent=1))
    objective = raw.get("pipeline", {}).get("objective") if isinstance(raw, DictConfig) else None
    return float("nan") if objective else None


def _check_writable_leaving_nothing(folder: Path, key: str, refuse: Any) -> None:
    """``check_writable`` (which makes the folder and writes a probe), then remove the folders it made: a command
    refused later, or a typo, leaves no empty folders behind."""
    import shutil

    first_new = next((p for p in [*reversed(folder.absolute().parents), folder.absolute()] if not p.exists()), None)
    try:
        check_writable(folder, key)
    except ConfigError as exc:
        refuse(str(exc))
    finally:
        if first_new is not None and first_new.is_dir():
            shutil.rmtree(first_new, ignore_errors=True)


def entry() -> None:
    """The ``magpie-exp`` command: refuses a secret on the command line before Hydra writes the overrides to the
    run folder (and W&B would see them), then runs the Hydra app."""
    from magpie_exp.config import secret_in_override

    def refuse(message: str, code: int = 2) -> None:
        logging.basicConfig(format="%(message)s")
        log.error("%s", message)
        sys.exit(code)

    for arg in sys.argv[1:]:
        key = secret_in_override(arg)
        if key is not None:
            refuse(f"{key}: a secret on the command line would be written to the run folder and W&B; put it in an "
                   "environment variable and name that variable instead (e.g. engine.api_key_env=OPENAI_API_KEY)")
    args = sys.argv[1:]
    for i, arg in enumerate(args):  # Hydra reads config groups from --config-dir, but never its config.yaml
        folder = (args[i + 1] if i + 1 < len(args) else "") if arg in ("--config-dir", "-cd") else (
            arg.split("=", 1)[1] if arg.startswith(("--config-dir=", "-cd=")) else None)
        if folder is not None and (Path(folder).expanduser() / "config.yaml").exists():
            refuse(f"--config-dir: {Path(folder) / 'config.yaml'} would be ignored (the shipped config.yaml is the primary "
                   "config; --config-dir only adds groups); move its settings into an experiment file "
                   f"({Path(folder) / 'experiment' / '<name>.yaml'}, starting with '# @package _global_') and select it "
                   "with experiment=<name>")
    # Hydra makes the run folder under paths.outputs before the job starts: check the folder first
    for arg in sys.argv[1:]:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key == "paths.outputs":
            if not value.strip():
                refuse("paths.outputs is empty (Hydra would write to /runs/...); give a folder, e.g. paths.outputs=outputs")
            _check_writable_leaving_nothing(Path(value).expanduser(), "paths.outputs", refuse)
    cache = os.environ.get("MAGPIE_EXP_CACHE")
    if cache:
        _check_writable_leaving_nothing(Path(cache).expanduser(), "MAGPIE_EXP_CACHE (paths.cache_dir)", refuse)
    try:
        main()
    except KeyboardInterrupt:  # finished shards and checkpoints are kept; nothing is marked complete
        refuse("interrupted; run the same command again to resume", 130)


if __name__ == "__main__":
    entry()
