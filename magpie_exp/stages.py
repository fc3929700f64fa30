"""What every stage shares: config hashing, stage folders, writable checks, and reading a stage's input.

A stage's folder is ``<paths.outputs>/stages/<stage>/<hash>``, where the hash covers the stage's own config,
its code version and the key of its input (the upstream stage's config hash, or a file's checksum). So the
same command resumes or reuses a stage, and a changed upstream gives a new folder.

An input is either a finished stage folder (its shards, in order) or a JSONL file of records in any of the
common layouts: our records (``messages``), ShareGPT (``conversations`` with ``from``/``value``) or
``instruction``/``response`` pairs, read in chunks so memory stays flat.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

from magpie_exp.config import ConfigError, MagpieConfig
from magpie_exp.records import Record, record_id
from magpie_exp.shards import ShardStore

_SHAREGPT_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
UPSTREAM = {"tag": "generate", "curate": "tag", "pair": "curate", "train": "curate"}


def config_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def stage_folder(cfg: MagpieConfig, stage: str, payload: dict[str, Any]) -> Path:
    return Path(cfg.paths.outputs) / "stages" / stage / config_hash(payload)


def check_writable(folder: Path, key: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{time.time_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot write to '{folder}' ({exc.strerror or exc}); point {key} at a writable folder") from exc


@dataclass
class StageResult:
    stage_dir: Path
    stats: dict[str, Any]
    exports: dict[str, str]
    cache_hit: bool


@dataclass
class StageInput:
    """The records a stage reads, shard by shard."""

    key: str  # upstream config hash or file checksum: part of the reading stage's hash
    path: Path
    shard_names: list[str]
    read: Callable[[str], Iterator[Record]]
    manifest: dict[str, Any]

    def records(self) -> Iterator[Record]:
        for name in self.shard_names:
            yield from self.read(name)


def normalize_row(row: dict[str, Any], line: int, source: str) -> Record:
    """One input row in any supported layout -> a record; raises ConfigError naming the line."""
    if "messages" in row:
        messages = row["messages"]
    elif "conversations" in row:
        try:
            messages = [{"role": _SHAREGPT_ROLE[t["from"]], "content": t["value"]} for t in row["conversations"]]
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"input: {source} line {line}: a ShareGPT turn lacks from/value or has an unknown role ({exc})") from exc
    elif "instruction" in row and "response" in row:
        messages = [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["response"]}]
    else:
        raise ConfigError(f"input: {source} line {line} has none of messages, conversations or instruction/response; "
                          "give records in one of those layouts")
    ok = isinstance(messages, list) and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in ("system", "user", "assistant")
        for m in messages)
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"] if ok else []
    if not ok or not users:
        raise ConfigError(f"input: {source} line {line}: messages must be a list of {{role, content}} with a user turn")
    rid = row.get("id") or row.get("uuid") or record_id("input", users[0]["content"])
    return {"id": str(rid), "messages": messages, "gen": row.get("gen", {}), "tags": dict(row.get("tags") or {})}


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _jsonl_input(path: Path, chunk: int) -> StageInput:
    with path.open(encoding="utf-8") as handle:
        count = sum(1 for _ in handle)
    if count == 0:
        raise ConfigError(f"input: '{path}' is empty; give a JSONL file with at least one record")
    names = [f"in-{i:05d}" for i in range((count + chunk - 1) // chunk)]

    def read(name: str) -> Iterator[Record]:
        start = int(name.split("-")[1]) * chunk
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(itertools.islice(handle, start, start + chunk), start + 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"input: {path} line {number} is not JSON ({exc.msg}); fix or remove the line") from exc
                yield normalize_row(row, number, str(path))

    return StageInput(f"file:{_file_digest(path)}", path, names, read, {"stage": "file", "records": count})


def open_input(cfg: MagpieConfig, stage: str, upstream_dir: Callable[[], Path], chunk: int = 1000) -> StageInput:
    """The input of ``stage``: ``cfg.input`` if set, else this config's upstream stage folder (must be complete)."""
    path = Path(cfg.input).expanduser() if cfg.input else upstream_dir()
    hint = f"run `magpie-exp stage={UPSTREAM[stage]}` with the same config first, or set input=<stage folder or JSONL file>"
    if not path.exists():
        raise ConfigError(f"input: '{path}' does not exist; {hint}")
    if path.is_file():
        return _jsonl_input(path, chunk)
    if not (path / "manifest.json").exists():
        raise ConfigError(f"input: '{path}' is not a stage folder (no manifest.json); {hint}")
    store = ShardStore.open(path)
    if not store.complete:
        raise ConfigError(f"input: stage folder '{path}' is not complete; rerun its stage to finish it, or {hint}")
    bad = store.verify()
    if bad:
        raise ConfigError(f"input: shards {bad} of '{path}' fail their checksums; rerun the {store.stage} stage to redo them")
    names = sorted(store.manifest["shards"])
    if store.record_count() == 0:
        raise ConfigError(f"input: stage folder '{path}' holds no records; nothing to {stage}")
    return StageInput(f"{store.stage}:{store.config_hash}", path, names, store.read_shard, store.manifest)
