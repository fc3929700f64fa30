"""Evaluation sets: where their files come from, how they load, and how a quick run takes a subset.

Each file is looked up, in order, in ``evaluation.data_dir`` (when set; a file missing there is an error), in the
copies shipped with the project (``evals/``: IFEval, MT-Bench and Arena-Hard v0.1, all Apache-2.0, see
``evals/NOTICE.md``), in ``<paths.cache_dir>/evals`` and finally downloaded from its public source at a pinned
commit, checked against its SHA-256. AlpacaEval's data is CC BY-NC 4.0, so it is downloaded, never shipped.
``evaluation.data_dir`` uses the same layout as the shipped folder: ``<dir>/<benchmark>/<file>``.

Every loader returns items with an ``id`` and the user ``turns``; benchmark-specific fields ride along.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magpie_exp.config import ConfigError
from magpie_exp.files import file_digest

log = logging.getLogger(__name__)
Item = dict[str, Any]


@dataclass(frozen=True)
class DataFile:
    benchmark: str  # folder under the data dir
    name: str
    url: str
    sha256: str
    licence: str


_GR = "https://raw.githubusercontent.com/google-research/google-research/19638399cc9e03623c5b9087a1d6fa8813974ce9"
_FC = "https://raw.githubusercontent.com/lm-sys/FastChat/0e6d3e4beaab66f4d3f93db72541a4abab8af28d/fastchat/llm_judge/data"
_AH = "https://raw.githubusercontent.com/lmarena/arena-hard-auto/196f6b826783b3da7310e361a805fa36f0be83f3/data/arena-hard-v0.1"
_AE = "https://raw.githubusercontent.com/tatsu-lab/alpaca_eval/cd543a149df89434d8a54582c0151c0b945c3d20/results"

FILES = {
    "ifeval": DataFile("ifeval", "input_data.jsonl", f"{_GR}/instruction_following_eval/data/input_data.jsonl",
                       "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49", "Apache-2.0"),
    "mt_bench_questions": DataFile("mt_bench", "question.jsonl", f"{_FC}/mt_bench/question.jsonl",
                                   "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7", "Apache-2.0"),
    "mt_bench_reference": DataFile("mt_bench", "reference_answer_gpt-4.jsonl", f"{_FC}/mt_bench/reference_answer/gpt-4.jsonl",
                                   "f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f", "Apache-2.0"),
    "mt_bench_judge_prompts": DataFile("mt_bench", "judge_prompts.jsonl", f"{_FC}/judge_prompts.jsonl",
                                       "fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6", "Apache-2.0"),
    "arena_hard_questions": DataFile("arena_hard_v0.1", "question.jsonl", f"{_AH}/question.jsonl",
                                     "2650242d2883f22b2abd498f273b6a7e02253cce533f5c91a858e1d44aa3002f", "Apache-2.0"),
    "arena_hard_baseline": DataFile("arena_hard_v0.1", "gpt-4-0314.jsonl", f"{_AH}/model_answer/gpt-4-0314.jsonl",
                                    "0f6abc84de4600fde987d9db70f838f4ecdbd27a2f1f4058c12aa322a6f791b2", "Apache-2.0"),
    "alpaca_eval_reference": DataFile("alpaca_eval", "gpt4_turbo_reference.json", f"{_AE}/gpt4_1106_preview/model_outputs.json",
                                      "83db546b872ddebee8965fd05fa48461ee3c32bc695c62fb57f2d214ff741ec4", "CC BY-NC 4.0"),
}

# MT-Bench: categories graded against GPT-4 reference answers, and FastChat's answer temperatures per category.
MT_BENCH_REF_CATEGORIES = ("math", "reasoning", "coding")
MT_BENCH_TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                        "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}


def shipped_dir() -> Path:
    """``evals/`` inside the wheel, or the repository's top-level ``evals/`` in an editable install."""
    package = Path(__file__).resolve().parents[1]  # magpie_exp/
    packaged = package / "evals"
    return packaged if packaged.is_dir() else package.parent / "evals"


def _download(spec: DataFile, target: Path) -> None:
    import httpx

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    with httpx.stream("GET", spec.url, timeout=60, follow_redirects=True) as response:
        response.raise_for_status()
        with partial.open("wb") as handle:
            for chunk in response.iter_bytes():
                handle.write(chunk)
    got = file_digest(partial)
    if got != spec.sha256:
        partial.unlink()
        raise ValueError(f"checksum mismatch (got {got[:12]}, expected {spec.sha256[:12]})")
    partial.replace(target)


def local_path(key: str, data_dir: str | None, cache_dir: Path) -> Path | None:
    """The local copy of eval file ``key`` (``evaluation.data_dir``, shipped, cached), or None; never downloads."""
    spec = FILES[key]
    places = ([Path(data_dir).expanduser() / spec.benchmark / spec.name] if data_dir
              else [shipped_dir() / spec.benchmark / spec.name, cache_dir / "evals" / spec.benchmark / spec.name])
    return next((path for path in places if path.exists()), None)


def locate(key: str, data_dir: str | None, cache_dir: Path) -> Path:
    """The local path of eval file ``key`` (see FILES), downloading it into the cache if nothing local has it."""
    spec = FILES[key]
    found = local_path(key, data_dir, cache_dir)
    if found is not None:
        return found
    if data_dir:
        path = Path(data_dir).expanduser() / spec.benchmark / spec.name
        raise ConfigError(f"evaluation.data_dir: '{path}' does not exist; put {spec.name} from {spec.url} there, "
                          "or set evaluation.data_dir=null to use the shipped or downloaded copy")
    target = cache_dir / "evals" / spec.benchmark / spec.name
    log.info("downloading %s (%s) to %s", spec.url, spec.licence, target)
    try:
        _download(spec, target)
    except Exception as exc:  # no network, proxy, checksum: all end the same way for the user
        raise ConfigError(f"evaluation.data_dir: {spec.benchmark}/{spec.name} is not available locally and the download "
                          f"failed ({exc.__class__.__name__}: {str(exc)[:120]}); download {spec.url} to '{target}' "
                          "or set evaluation.data_dir=<folder with <benchmark>/<file>>") from exc
    return target


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"evaluation.data_dir: {path} line {number} is not JSON ({exc.msg}); "
                                      "replace the file with the original") from exc
    return rows


def _need(rows: list[dict[str, Any]], fields: tuple[str, ...], path: Path) -> None:
    for number, row in enumerate(rows, 1):
        missing = [f for f in fields if f not in row]
        if missing:
            raise ConfigError(f"evaluation.data_dir: {path} row {number} lacks {missing}; replace the file with the original")


def load_ifeval(data_dir: str | None, cache_dir: Path) -> list[Item]:
    path = locate("ifeval", data_dir, cache_dir)
    rows = _jsonl(path)
    _need(rows, ("key", "prompt", "instruction_id_list", "kwargs"), path)
    return [{"id": str(r["key"]), "turns": [r["prompt"]], "doc": r} for r in rows]


def load_mt_bench(data_dir: str | None, cache_dir: Path) -> list[Item]:
    qpath = locate("mt_bench_questions", data_dir, cache_dir)
    rpath = locate("mt_bench_reference", data_dir, cache_dir)
    questions, references = _jsonl(qpath), _jsonl(rpath)
    _need(questions, ("question_id", "category", "turns"), qpath)
    refs = {r["question_id"]: r["choices"][0]["turns"] for r in references}
    items = []
    for q in questions:
        ref = refs.get(q["question_id"]) if q["category"] in MT_BENCH_REF_CATEGORIES else None
        if q["category"] in MT_BENCH_REF_CATEGORIES and ref is None:
            raise ConfigError(f"evaluation.data_dir: {rpath} has no reference answer for MT-Bench question "
                              f"{q['question_id']} ({q['category']}); replace the file with the original")
        items.append({"id": str(q["question_id"]), "category": q["category"], "turns": q["turns"], "reference": ref})
    return items


def mt_bench_judge_prompts(data_dir: str | None, cache_dir: Path) -> dict[str, dict[str, Any]]:
    path = locate("mt_bench_judge_prompts", data_dir, cache_dir)
    return {row["name"]: row for row in _jsonl(path)}


def load_alpaca_eval(data_dir: str | None, cache_dir: Path) -> list[Item]:
    path = locate("alpaca_eval_reference", data_dir, cache_dir)
    rows = json.loads(path.read_text(encoding="utf-8"))
    instructions = [r["instruction"] for r in rows]
    if len(set(instructions)) != len(instructions):
        raise ConfigError(f"evaluation.data_dir: {path} repeats instructions; the length-controlled win rate needs "
                          "each of the 805 once (alpaca_eval #453); replace the file with the original")
    return [{"id": str(i), "turns": [r["instruction"]], "baseline": r["output"], "dataset": r.get("dataset"),
             "baseline_model": r.get("generator", "gpt4_turbo")} for i, r in enumerate(rows)]


def load_arena_hard(data_dir: str | None, cache_dir: Path) -> list[Item]:
    qpath = locate("arena_hard_questions", data_dir, cache_dir)
    bpath = locate("arena_hard_baseline", data_dir, cache_dir)
    questions, answers = _jsonl(qpath), _jsonl(bpath)
    _need(questions, ("uid", "prompt"), qpath)
    baseline = {}
    for a in answers:
        content = a["messages"][-1]["content"]
        baseline[a["uid"]] = content["answer"] if isinstance(content, dict) else content
    missing = [q["uid"] for q in questions if q["uid"] not in baseline]
    if missing:
        raise ConfigError(f"evaluation.data_dir: {bpath} has no baseline answer for {len(missing)} question(s) "
                          f"(first {missing[0]}); replace the file with the original")
    return [{"id": q["uid"], "turns": [q["prompt"]], "baseline": baseline[q["uid"]], "category": q.get("category"),
             "cluster": q.get("cluster"), "baseline_model": "gpt-4-0314"} for q in questions]


LOADERS = {"ifeval": load_ifeval, "mt_bench": load_mt_bench, "alpaca_eval": load_alpaca_eval, "arena_hard": load_arena_hard}


def subset(items: list[Item], limit: int | None, sample: int | None, seed: int) -> list[Item]:
    """The first ``limit`` items, then a seeded sample of ``sample`` of those, kept in their original order."""
    if limit is not None:
        items = items[:limit]
    if sample is not None and sample < len(items):
        keep = sorted(random.Random(seed).sample(range(len(items)), sample))
        items = [items[i] for i in keep]
    return items
