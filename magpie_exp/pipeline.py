"""The whole loop from one command: generate, tag, curate, pair, SFT, DPO, evaluate.

    magpie-exp                                            # every stage on the embedded models
    magpie-exp pipeline.stages=[generate,tag,curate]      # part of the loop
    magpie-exp -m curate=pro-filter3,english-safe         # a sweep: generates and tags once, trains twice

Each stage reads the folder the previous stage wrote (passed on explicitly, so a pipeline started from
``input=<file>`` stays on that data) and is cached by its own config hash, which covers its settings, the key
of its input and its code version (``stages/keys.py``). A later run, or another member of
a sweep, with the same upstream settings therefore reuses those folders: every stage logs "cache hit" and
``pipeline.json`` records it. ``force=[tag,...]`` deletes those stages' folders first and runs them again.

The run folder (Hydra's) gets ``pipeline.json`` (stage -> folder, cache hit, seconds), ``report.html`` and
the W&B run (``tracker``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from magpie_exp.config import ConfigError, MagpieConfig
from magpie_exp.engines import Engine
from magpie_exp.engines.pool import EnginePool
from magpie_exp.runner import run_step
from magpie_exp.stages import STEPS
from magpie_exp.stages.common import StageResult
from magpie_exp.tracking import Tracker, artifact_name

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StepRecord:
    step: str  # generate, tag, curate, pair, sft, dpo, evaluate:<model>
    folder: str
    cache_hit: bool
    seconds: float
    stats: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "folder": self.folder, "cache_hit": self.cache_hit, "seconds": round(self.seconds, 1)}


def _remove(folder: Path, step: str) -> None:
    if folder.exists():
        log.warning("force: removing %s output %s to run it again", step, folder)
        shutil.rmtree(folder)


def _forced_folders(step: str, cfg: MagpieConfig, args: dict[str, Any]) -> list[Path]:
    """The folders a forced step writes (computed exactly as the step computes them)."""
    try:
        return STEPS[step].folders(cfg, **args)
    except ConfigError:
        return []  # its input does not exist yet: nothing cached to remove


class Pipeline:
    def __init__(self, cfg: MagpieConfig, tracker: Tracker, run_dir: Path, engines: dict[str, Engine] | None = None) -> None:
        self.cfg, self.tracker, self.run_dir = cfg, tracker, run_dir
        self.records: list[StepRecord] = []
        self.scores: dict[str, dict[str, Any]] = {}
        import torch

        # on CPU an idle engine costs only memory; on a GPU node training needs the GPUs (a Ray cluster joined by
        # address may hold GPUs too; one started here is this machine)
        keep = not torch.cuda.is_available() and not (cfg.executor.type == "ray" and cfg.executor.address)
        self.pool = EnginePool(cfg, engines, pipeline=True, keep=keep)

    def _run(self, step: str, name: str | None = None, **args: Any) -> StageResult:
        """Run ``step`` on this run's config with its arguments (``stages.Step``: what it reads, DPO's starting
        model, the model evaluated), recorded as ``name``."""
        name = name or step
        if step in self.cfg.force:
            for folder in _forced_folders(step, self.cfg, args):
                _remove(folder, name)
        if STEPS[step].stage == "train":
            self.pool.close()  # training needs the memory (on a GPU node, the GPUs) the engines hold
        start = time.perf_counter()
        result = run_step(step, self.cfg, self.pool, **args)
        seconds = time.perf_counter() - start
        record = StepRecord(name, str(result.stage_dir), result.cache_hit, seconds, result.stats)
        self.records.append(record)
        log.info("pipeline: %s %s in %.1f s: %s", name, "cache hit" if result.cache_hit else "ran", seconds, result.stage_dir)
        self.tracker.log_stage(name.replace(":", "/"), result.stats, seconds, result.cache_hit, str(result.stage_dir))
        stages = Path(self.cfg.paths.outputs).resolve() / "stages"
        inputs = [artifact_name(p) for p in (args.get("upstream"), args.get("init"), args.get("model"))
                  if isinstance(p, str) and Path(p).resolve().is_relative_to(stages)]  # stage folders, not files
        self.tracker.log_stage_artifact(name, str(result.stage_dir), inputs, result.cache_hit)
        self._write()
        return result

    def _write(self) -> None:
        payload = {"experiment": self.cfg.experiment_name, "steps": [r.as_dict() for r in self.records], "scores": self.scores}
        tmp = self.run_dir / "pipeline.json.tmp"
        tmp.write_text(json.dumps(payload, indent=1))
        tmp.replace(self.run_dir / "pipeline.json")

    def run(self) -> dict[str, Any]:
        try:
            return self._run_all()
        finally:
            self.pool.close()

    def _run_all(self) -> dict[str, Any]:
        cfg, stages = self.cfg, self.cfg.pipeline.stages
        from magpie_exp.training.precision import precision

        for key in ("sft", "dpo"):  # hardware the recipe cannot use: say so before hours of generation
            if key in stages:
                precision(getattr(cfg, key), key)
        if "tag" in stages and "curate" in stages:  # a recipe on a field no tagger writes: say so before generating
            from magpie_exp.rules import check_tagged_fields

            check_tagged_fields(cfg.curate, list(cfg.tag.taggers))
        previous: StageResult | None = None
        results: dict[str, StageResult] = {}

        def made(step: str) -> str | None:  # the folder ``step`` made in this run, else ``input``
            return str(results[step].stage_dir) if step in results else cfg.input

        for step in stages:
            if step == "generate":
                previous = results[step] = self._run(step)
            elif step in ("tag", "curate"):  # each reads the folder made just before it
                previous = results[step] = self._run(step, upstream=cfg.input if previous is None else str(previous.stage_dir))
            elif step == "pair":  # pairs come from the curated set, whatever ran just before
                previous = results[step] = self._run(step, upstream=made("curate"))
            elif step == "sft":
                results["sft"] = self._run("sft", upstream=made("curate"))
            elif step == "dpo":
                init = results["sft"].exports["model"] if "sft" in results else None  # else dpo.init_from
                results["dpo"] = self._run("dpo", upstream=made("pair"), init=init)
            elif step == "evaluate":
                self._evaluate(results)
        self._write()
        return {"steps": [r.as_dict() for r in self.records], "scores": self.scores}

    def _evaluate(self, results: dict[str, StageResult]) -> None:
        cfg, ev = self.cfg, self.cfg.evaluation
        targets: list[tuple[str, str | None]] = []
        if ev.model is not None:  # an explicit model: evaluate that one
            targets.append((ev.label or "model", ev.model))
        else:
            for name in self.cfg.pipeline.evaluate_models:
                if name == "generator":
                    targets.append(("generator", "generator"))
                elif name in results:
                    targets.append((name, results[name].exports["model"]))
                else:
                    from magpie_exp.stages.keys import trained_model

                    folder = trained_model(cfg, name)  # trained by an earlier run
                    targets.append((name, str(folder)))
        for label, model in targets:
            result = self._run("evaluate", f"evaluate:{label}", model=model, label=label)
            self.scores[label] = result.stats["benchmarks"]
            self.tracker.log_scores(label, result.stats["benchmarks"])
            rows = []
            for bench in result.stats["benchmarks"]:
                items = Path(result.stage_dir) / bench / "items.jsonl"
                if items.exists():
                    with items.open() as handle:
                        for _, line in zip(range(self.cfg.tracker.sample_rows), handle, strict=False):
                            rows.append({"benchmark": bench, **json.loads(line)})
            self.tracker.log_table(f"eval/{label}/items", rows)


def _outcome(step: str, stats: dict[str, Any]) -> str:
    """One step's result in a few words, from its stats."""
    def reasons(dropped: dict[str, int]) -> str:
        top = sorted(dropped.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{k} {v}" for k, v in top[:4]) + (", ..." if len(top) > 4 else "")

    if step in ("generate", "tag"):
        dropped = stats.get("dropped") or {}
        failures = stats.get("failures") or {}
        text = f"{stats.get('records', 0)} records"
        if dropped:
            text += f"; dropped {sum(dropped.values())} ({reasons(dropped)})"
        if failures:
            text += f"; tagger failures {sum(failures.values())} ({reasons(failures)})"
        return text
    if step == "curate":
        dropped = stats.get("dropped") or {}
        return (f"kept {stats.get('kept', 0)} of {stats.get('input_records', 0)}"
                + (f"; dropped {reasons(dropped)}" if dropped else ""))
    if step == "pair":
        dropped = stats.get("dropped") or {}
        return (f"{stats.get('pairs', 0)} pairs from {stats.get('input_records', 0)} records"
                + (f"; dropped {reasons(dropped)}" if dropped else ""))
    if step in ("sft", "dpo"):
        loss = stats.get("final_loss")
        return f"{stats.get('steps', 0)} steps on {stats.get('rows', 0)} rows" + (f", final loss {loss:.3g}" if loss is not None else "")
    if step.startswith("evaluate"):
        from magpie_exp.evaluation.tables import HEADLINE

        parts = []
        for bench, scores in (stats.get("benchmarks") or {}).items():
            key, title = (HEADLINE.get(bench) or [(None, bench)])[0]
            value = scores.get(key) if key and isinstance(scores, dict) else None
            parts.append(f"{title} {value:.3g}" if isinstance(value, (int, float)) else bench)
        return ", ".join(parts)
    return ""


def summary(records: list[StepRecord], seconds: float, report: Path | None) -> str:
    """The closing lines of a pipeline run: each step's time and result (made, kept, dropped by reason, scores),
    the total time and where the report is."""
    from magpie_exp.console import duration

    width = max([len(r.step) for r in records] + [4])
    lines = [f"done in {duration(seconds)}" + (f"; report: {report}" if report else "")]
    for r in records:
        when = "cached" if r.cache_hit else duration(r.seconds)
        lines.append(f"  {r.step:<{width}}  {when:>7}  {_outcome(r.step, r.stats)}")
    return "\n".join(lines)


def objective(scores: dict[str, Any], path: str | None) -> float | None:
    """``pipeline.objective`` (model/benchmark/metric, e.g. dpo/mt_bench/score) looked up in the scores."""
    if path is None:
        return None
    node: Any = scores
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"pipeline.objective: '{path}' is not in this run's scores (top level: {sorted(scores)}); "
                              "use <model>/<benchmark>/<metric>, e.g. dpo/mt_bench/score")
        node = node[part]
    if not isinstance(node, (int, float)):
        raise ConfigError(f"pipeline.objective: '{path}' is {node!r}, not a number")
    return float(node)
