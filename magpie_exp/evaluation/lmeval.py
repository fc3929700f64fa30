"""lm-eval pass-through: any task or group lm-eval knows, run in process on the evaluated model folder.

    magpie-exp stage=evaluate 'evaluation.benchmarks=[lm_eval]' 'evaluation.lm_eval.tasks=[gsm8k]' \\
        +evaluation.lm_eval.local_data.gsm8k=/data/evals/gsm8k/test.jsonl evaluation.limit=50

Where the hub is unreachable, ``evaluation.lm_eval.local_data`` maps a task to a local file: a task YAML is
written that includes lm-eval's own definition (prompt, filters, metrics unchanged) and reads its test split from
that file (``.jsonl``/``.json``, ``.csv`` or ``.parquet``, with the hub dataset's columns). The MMLU-Redux
GitHub layout (a folder of ``mmlu_<subject>.csv`` whose ``choices`` are Python-list strings) is recognised for the
task name ``mmlu_redux_local``: its rows labelled ``ok`` (the ``-ok`` hub set lm-eval uses) are converted once into
one JSONL and scored with lm-eval's generative MMLU-Redux prompt and metric, micro-averaged.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
from pathlib import Path
from typing import Any

from magpie_exp.config import ConfigError, EvaluationConfig
from magpie_exp.models import resolve_model

log = logging.getLogger(__name__)

_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
MMLU_REDUX_LOCAL = "mmlu_redux_local"
_MMLU_REDUX_TEMPLATE_TASK = "mmlu_redux_abstract_algebra_generative"


def _mmlu_redux_jsonl(folder: Path, target: Path) -> Path:
    files = sorted(folder.glob("mmlu_*.csv"))
    if not files:
        raise ConfigError(f"evaluation.lm_eval.local_data.{MMLU_REDUX_LOCAL}: '{folder}' has no mmlu_<subject>.csv files; "
                          "point it at the mmlu_redux folder of github.com/aryopg/mmlu-redux")
    rows = []
    for path in files:
        # one file has a Mac-Roman byte; latin-1 reads every byte and leaves the ASCII text as it is
        with path.open(encoding="latin-1", newline="") as handle:
            header = handle.readline()
            handle.seek(0)
            delimiter = ";" if header.count(";") > header.count(",") else ","  # nine of the files use ';'
            for row in csv.DictReader(handle, delimiter=delimiter):
                if row.get("error_type", "ok").strip().lower() != "ok":  # spelt ok, OK and Ok
                    continue
                rows.append({"question": row["question"], "choices": ast.literal_eval(row["choices"]),
                             "answer": int(row["answer"]), "subject": path.stem.removeprefix("mmlu_")})
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(target)
    return target


def local_task_yamls(local_data: dict[str, str], manager: Any, folder: Path) -> dict[str, str]:
    """Write one task YAML per local-data entry into ``folder``; returns task -> name of the local task."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for task, source in local_data.items():
        path = Path(source).expanduser().resolve()
        if not path.exists():
            raise ConfigError(f"evaluation.lm_eval.local_data.{task}: '{source}' does not exist; give the task's data file")
        if task == MMLU_REDUX_LOCAL:
            data = _mmlu_redux_jsonl(path, folder / "mmlu_redux_ok.jsonl") if path.is_dir() else path
            base, extra = _MMLU_REDUX_TEMPLATE_TASK, {"description": "", "task_alias": "mmlu_redux (local, generative)"}
        else:
            data, base, extra = path, task, {}
        entry = manager.task_index.get(base)
        if entry is None or entry.kind.name != "TASK":
            raise ConfigError(f"evaluation.lm_eval.local_data.{task}: lm-eval has no single task {base!r} to take the "
                              "prompt and metric from; local data works for single tasks (not groups) and for "
                              f"{MMLU_REDUX_LOCAL}")
        if data.suffix not in _FORMATS:
            raise ConfigError(f"evaluation.lm_eval.local_data.{task}: '{data}' must be one of {sorted(_FORMATS)}")
        name = task if task == MMLU_REDUX_LOCAL else f"{task}_local"
        spec = {"include": str(entry.yaml_path), "task": name, "dataset_path": _FORMATS[data.suffix], "dataset_name": None,
                "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test", "training_split": None,
                "validation_split": None, "tag": [], **extra}
        if entry.cfg.get("fewshot_split") or entry.cfg.get("num_fewshot"):
            spec["fewshot_split"] = "test"  # lm-eval leaves the scored item out of its own few-shot context
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        names[task] = name
    return names


_MANAGERS: dict[str | None, Any] = {}


def _task_manager(include_path: str | None) -> Any:
    from lm_eval.tasks import TaskManager

    if include_path not in _MANAGERS:
        _MANAGERS[include_path] = TaskManager(include_path=include_path) if include_path else TaskManager()
    return _MANAGERS[include_path]


def run_lm_eval(ev: EvaluationConfig, cache_dir: Path, seed: int, candidate: Any, out: Path) -> dict[str, Any]:
    """Run ``evaluation.lm_eval.tasks`` on the candidate model; results and per-sample logs go to ``out``."""
    import lm_eval

    spec = ev.lm_eval
    limit = spec.limit if spec.limit is not None else (ev.limit or ev.sample)
    done = out / "results.json"
    if done.exists():
        return json.loads(done.read_text())
    model_path = resolve_model(candidate.spec, cache_dir, key="evaluation.model")
    manager = _task_manager(None)  # indexing lm-eval's tasks takes ~15 s: done once per process
    names = local_task_yamls(spec.local_data, manager, out / "tasks") if spec.local_data else {}
    if names:
        manager = _task_manager(str(out / "tasks"))
    tasks = [names.get(t, t) for t in spec.tasks]
    unknown = [t for t in tasks if t not in manager.task_index]
    if unknown:
        raise ConfigError(f"evaluation.lm_eval.tasks: lm-eval knows no task {unknown}; list them with `lm_eval ls tasks`"
                          + (f", or give local data for {MMLU_REDUX_LOCAL}" if MMLU_REDUX_LOCAL in unknown else ""))
    model_args: dict[str, Any] = {"pretrained": model_path, **spec.model_args}
    if spec.model == "hf":
        import torch

        model_args.setdefault("dtype", "bfloat16" if torch.cuda.is_available() else "float32")
        model_args.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
    log.info("lm-eval %s on %s (limit %s)", tasks, model_path, limit)
    results = lm_eval.simple_evaluate(model=spec.model, model_args=model_args, tasks=tasks, num_fewshot=spec.num_fewshot,
                                      batch_size=spec.batch_size, limit=limit, apply_chat_template=spec.apply_chat_template,
                                      log_samples=True, task_manager=manager, random_seed=seed, bootstrap_iters=0)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "samples.jsonl").open("w") as handle:
        for task, samples in (results.get("samples") or {}).items():
            for s in samples:
                handle.write(json.dumps({"task": task, "doc_id": s.get("doc_id"), "target": s.get("target"),
                                         "response": s.get("filtered_resps"), **{m: s.get(m) for m in s.get("metrics", [])}},
                                        default=str) + "\n")
    scores = {"tasks": {}, "n": {}, "local_data": {t: str(Path(p).expanduser()) for t, p in spec.local_data.items()},
              "limit": limit, "lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None}
    back = {v: k for k, v in names.items()}
    for task, metrics in results["results"].items():
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and "stderr" not in k and k != "alias"}
        scores["tasks"][back.get(task, task)] = clean
        scores["n"][back.get(task, task)] = results.get("n-samples", {}).get(task, {}).get("effective")
    done.write_text(json.dumps(scores, indent=1))
    return scores
