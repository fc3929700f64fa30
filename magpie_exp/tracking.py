"""Experiment tracking behind one small interface: Weights & Biases, or nothing.

    tracker.type=wandb   # default: online when WANDB_API_KEY is set, else offline (sync later with `wandb sync`)
    tracker.type=none

A pipeline run is one W&B run: the resolved config (secrets never enter it: keys are only named, by
``*_env`` keys, and read from the environment), each stage's stats, timings and cache hits, dataset and
evaluation sample tables, the tag stage's plots, TRL's training curves (its W&B callback writes into the same
run) and the evaluation scores. Runs are grouped by ``experiment_name`` (``tracker.group``) and carry the sweep
they belong to as ``job_type``, so W&B's group-by turns a Hydra multirun into an ablation dashboard. ``finish``
is always called, with the exit code, so a crashed job closes its run and the next job of a multirun starts clean.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SECRET_KEY = re.compile(r"(api_key|apikey|token|secret|password)$", re.IGNORECASE)


def scrub(value: Any) -> Any:
    """A copy of a config with any value under a secret-looking key replaced (``*_env`` names are kept)."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if isinstance(k, str) and _SECRET_KEY.search(k) and v else scrub(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def flatten(scores: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numeric scores -> {"a/b/c": x} (lists and strings left out)."""
    out: dict[str, float] = {}
    for key, value in scores.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


class Tracker:
    """No-op tracker: the interface every tracker implements."""

    kind = "none"
    run_dir: Path | None = None

    def log_stage(self, name: str, stats: dict[str, Any], seconds: float, cache_hit: bool, folder: str) -> None:
        """One finished stage: its stats (numbers), timing and whether it came from the cache."""

    def log_scores(self, name: str, scores: dict[str, Any]) -> None:
        """Evaluation scores of one model (``name``: sft, dpo, generator)."""

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        """A sample table (dataset records, per-item evaluation results)."""

    def log_images(self, name: str, paths: list[str]) -> None:
        """Plots (PNG files)."""

    def log_file(self, name: str, path: str) -> None:
        """A file kept with the run (the HTML report)."""

    def log_stage_artifact(self, step: str, folder: str, inputs: list[str], cache_hit: bool) -> None:
        """A step's folder as an artifact by reference (nothing uploaded), with the folders it was made from."""

    def summary(self, values: dict[str, Any]) -> None:
        """Headline numbers of the run."""

    def finish(self, exit_code: int = 0) -> None:
        """Close the run (always called, also after a failure)."""


class WandbTracker(Tracker):
    kind = "wandb"

    def __init__(self, config: dict[str, Any], *, project: str, entity: str | None, group: str, name: str,
                 job_type: str, tags: list[str], mode: str, directory: Path) -> None:
        import wandb

        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        directory.mkdir(parents=True, exist_ok=True)
        # wandb stages artifacts and caches under $HOME unless told otherwise; keep them beside the runs
        for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
            os.environ.setdefault(var, str(directory / sub))
        self.wandb = wandb
        self.run = wandb.init(project=project, entity=entity, group=group, name=name, job_type=job_type, tags=tags,
                              config=scrub(config), dir=str(directory), mode=mode, reinit="finish_previous",
                              settings=wandb.Settings(console="off", silent=True))
        self.run_dir = Path(self.run.dir).parent
        self.mode = mode
        self.logged: set[str] = set()
        log.info("W&B %s run %s (group %s) in %s", mode, self.run.id, group, self.run_dir)

    def log_stage(self, name: str, stats: dict[str, Any], seconds: float, cache_hit: bool, folder: str) -> None:
        numbers = {f"{name}/{k}": v for k, v in flatten(stats).items() if not k.startswith(("loss", "log_history"))}
        self.run.log({**numbers, f"{name}/wall_seconds": seconds, f"{name}/cache_hit": int(cache_hit)})
        self.run.summary[f"{name}/folder"] = folder

    def log_scores(self, name: str, scores: dict[str, Any]) -> None:
        values = {f"eval/{name}/{k}": v for k, v in flatten(scores).items()}
        self.run.log(values)
        for key, value in values.items():
            self.run.summary[key] = value

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        columns = list(dict.fromkeys(k for r in rows for k in r))
        data = [[_cell(r.get(c)) for c in columns] for r in rows]
        self.run.log({name: self.wandb.Table(columns=columns, data=data)})

    def log_images(self, name: str, paths: list[str]) -> None:
        images = {f"{name}/{Path(p).stem}": self.wandb.Image(p) for p in paths if Path(p).exists()}
        if images:
            self.run.log(images)

    def log_file(self, name: str, path: str) -> None:
        artifact = self.wandb.Artifact(name, type="report")
        artifact.add_file(path)
        self.run.log_artifact(artifact)

    def log_stage_artifact(self, step: str, folder: str, inputs: list[str], cache_hit: bool) -> None:
        """The folder as a W&B artifact named ``<stage>-<hash>`` (dataset, model or evaluation) that references its
        identity files (manifest, stats, scores, the model's config: checksummed, small) and names its input
        artifacts in its metadata. Online, an input made by an earlier run (a cache hit, a sweep's shared stage) is
        also declared with ``use_artifact``, which draws the lineage across runs in W&B's lineage view; offline
        runs cannot use artifacts (wandb refuses), so there the lineage is the metadata."""
        name = artifact_name(folder)
        kind = {"train": "model", "evaluate": "evaluation"}.get(Path(folder).parent.name, "dataset")
        artifact = self.wandb.Artifact(name, type=kind, metadata={"step": step, "folder": folder, "inputs": inputs,
                                                                    "cache_hit": cache_hit})
        for rel in ("manifest.json", "stats.json", "scores.json", "model/config.json"):
            if (Path(folder) / rel).is_file():
                artifact.add_reference((Path(folder) / rel).resolve().as_uri(), name=rel)
        if self.mode == "online":
            for upstream in inputs:
                if upstream not in self.logged:
                    try:
                        self.run.use_artifact(f"{upstream}:latest")
                    except Exception as exc:  # not logged by any run yet: the metadata still names it
                        log.info("W&B: input artifact %s not found (%s)", upstream, type(exc).__name__)
        self.run.log_artifact(artifact)
        self.logged.add(name)

    def summary(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self.run.summary[key] = value

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


def artifact_name(folder: str | Path) -> str:
    """``<stage>-<hash>`` of a stage folder (``.../stages/curate/689e7dbfd203`` -> ``curate-689e7dbfd203``); a
    model folder inside a train folder is named by that folder."""
    path = Path(folder)
    if path.name == "model":
        path = path.parent
    return f"{path.parent.name}-{path.name}"


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    import json

    return json.dumps(value, ensure_ascii=False, default=str)[:2000]


def build_tracker(cfg: Any, name: str, job_type: str, tags: list[str] | None = None) -> Tracker:
    """The tracker ``cfg.tracker`` names, for one pipeline run."""
    t = cfg.tracker
    if t.type == "none":
        return Tracker()
    from magpie_exp.config import as_plain

    directory = Path(t.dir or Path(cfg.paths.outputs) / "wandb")
    return WandbTracker(as_plain(cfg), project=t.project, entity=t.entity, group=t.group or cfg.experiment_name,
                        name=name, job_type=job_type, tags=[*t.tags, *(tags or [])], mode=t.mode, directory=directory)
