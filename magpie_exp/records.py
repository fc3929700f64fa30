"""The one record type that flows through every stage, and its export formats.

A record is a plain dict (JSON-serialisable, one line of a shard file)::

    {"id": "<uuid5>",                      # content-derived: same generator + same first instruction = same id
     "messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...],
     "gen": {...},                         # provenance: models, engine + version, templates, sampling, seeds,
                                           # finish_reason and token counts per turn, control task
     "tags": {...}}                        # filled by the tag stage

The system turn (when one steered generation) is stored in ``messages`` but left out of exported training
conversations unless ``include_system`` is asked for. Exports: messages JSONL, ShareGPT JSONL, and a Hugging
Face dataset (``save_to_disk`` and Parquet), all streamed.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Iterator

Record = dict[str, Any]

# Fixed namespace so ids are stable across machines and versions.
ID_NAMESPACE = uuid.UUID("6f1d2a4e-6b0c-5d1e-9a57-4d6167706965")
# Export format -> file or folder name inside a stage's export/ folder.
EXPORT_FILES = {"records": "records.jsonl", "messages": "messages.jsonl", "sharegpt": "sharegpt.jsonl", "hf": "hf",
                "parquet": "data/train-00000-of-00001.parquet"}  # the Hub's layout (the dataset card points at data/)
EXPORT_FORMATS = tuple(EXPORT_FILES)
_SHAREGPT_ROLE = {"system": "system", "user": "human", "assistant": "gpt"}


def record_id(generator: str, instruction: str) -> str:
    """Stable content-derived id: a version-5 UUID over the generator name and the first instruction."""
    return str(uuid.uuid5(ID_NAMESPACE, json.dumps([generator, instruction], ensure_ascii=False)))


def training_messages(record: Record, include_system: bool = False, include_reasoning: bool = False
                      ) -> list[dict[str, str]]:
    """The conversation to train on: the stored messages, without the steering system turn by default, and the
    answers alone: a reasoning trace (``reasoning_content``) goes into the text only with ``include_reasoning``,
    as ``<think>\n{trace}\n</think>\n\n{answer}`` (Magpie-Reasoning-style data with traces)."""
    def text(m: dict[str, str]) -> str:
        trace = m.get("reasoning_content") if include_reasoning else None
        return f"<think>\n{trace}\n</think>\n\n{m['content']}" if trace else m["content"]

    return [{"role": m["role"], "content": text(m)} for m in record["messages"] if include_system or m["role"] != "system"]


def to_sharegpt(record: Record, include_system: bool = False) -> dict[str, Any]:
    """ShareGPT layout: ``conversations`` with ``from``/``value``, as the released Magpie datasets use."""
    return {
        "id": record["id"],
        "conversations": [
            {"from": _SHAREGPT_ROLE[m["role"]], "value": m["content"]}
            for m in training_messages(record, include_system)
        ],
    }


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically (temp name, then rename); return how many were written."""
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(path)
    return count


def _hf_rows(records: Iterable[Record], include_system: bool) -> Iterator[dict[str, Any]]:
    for record in records:
        yield {
            "id": record["id"],
            "messages": training_messages(record, include_system),
            # Nested provenance and tags vary by stage; JSON strings keep one Arrow schema for all.
            "gen": json.dumps(record.get("gen", {}), ensure_ascii=False),
            "tags": json.dumps(record.get("tags", {}), ensure_ascii=False),
        }


def export_records(
    records_factory: Callable[[], Iterator[Record]], out_dir: Path, formats: Iterable[str], include_system: bool = False
) -> dict[str, str]:
    """Export a record stream to each of ``formats`` under ``out_dir``; returns format -> path.

    ``records_factory`` is a zero-argument callable returning a fresh iterator, so each format streams the
    records again instead of holding them all in memory.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    formats = list(formats)
    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown:
        raise ValueError(f"generate.export has unknown format(s) {unknown}; choose from {list(EXPORT_FORMATS)}")
    if "records" in formats:  # full records: messages, provenance and tags
        path = out_dir / "records.jsonl"
        write_jsonl(path, records_factory())
        written["records"] = str(path)
    if "messages" in formats:
        path = out_dir / "messages.jsonl"
        write_jsonl(path, ({"id": r["id"], "messages": training_messages(r, include_system)} for r in records_factory()))
        written["messages"] = str(path)
    if "sharegpt" in formats:
        path = out_dir / "sharegpt.jsonl"
        write_jsonl(path, (to_sharegpt(r, include_system) for r in records_factory()))
        written["sharegpt"] = str(path)
    if "hf" in formats or "parquet" in formats:
        import datasets

        if next(iter(records_factory()), None) is None:  # an empty stream (a recipe that kept nothing)
            message = datasets.Features({"role": datasets.Value("string"), "content": datasets.Value("string")})
            features = datasets.Features({"id": datasets.Value("string"), "messages": datasets.List(message),
                                          "gen": datasets.Value("string"), "tags": datasets.Value("string")})
            dataset = datasets.Dataset.from_dict({k: [] for k in features}, features=features)
        else:
            dataset = datasets.Dataset.from_generator(
                _hf_rows,
                gen_kwargs={"records": _Replay(records_factory), "include_system": include_system},
                cache_dir=str(out_dir / ".hf-cache"),
            )
        if "hf" in formats:
            target = out_dir / "hf"
            tmp = out_dir / ".hf.tmp"
            dataset.save_to_disk(str(tmp))
            _replace_dir(tmp, target)
            written["hf"] = str(target)
        if "parquet" in formats:
            target = out_dir / EXPORT_FILES["parquet"]
            target.parent.mkdir(exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            dataset.to_parquet(str(tmp))
            tmp.replace(target)
            written["parquet"] = str(target)
        del dataset
        _remove_tree(out_dir / ".hf-cache")
    return written


class _Replay:
    """Iterable that re-runs a factory each time it is iterated (datasets may iterate more than once)."""

    def __init__(self, factory: Callable[[], Iterator[Record]]) -> None:
        self.factory = factory

    def __iter__(self) -> Iterator[Record]:
        return iter(self.factory())


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _replace_dir(tmp: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old")
    _remove_tree(old)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    _remove_tree(old)


def first_exchange(record: Record) -> tuple[str, str]:
    """The first user message and the assistant message that answers it ('' when unanswered)."""
    messages = record["messages"]
    for i, m in enumerate(messages):
        if m["role"] == "user":
            answer = messages[i + 1]["content"] if i + 1 < len(messages) and messages[i + 1]["role"] == "assistant" else ""
            return m["content"], answer
    return "", ""
