"""What every stage shares: writable and free-space checks, the result type, completion, and reading a stage's
input.

Every stage folder, whatever it holds (shards, a model, scores), has a ``manifest.json`` (its config hash and
payload) and is finished the same way: ``finish`` writes its stats file, then marks the manifest complete, as
its last write; ``finished`` is the one cache-hit test (manifest complete, every shard matching its checksum,
the stats file and every export present). A folder killed at any point before that last write is resumed,
never reused.

A stage's folder is named in ``keys`` (its payload, code version and the key of its input). An input is either
a finished stage folder (its shards, in order) or a JSONL file of records in any of the common layouts: our
records (``messages``), ShareGPT (``conversations`` with ``from``/``value``) or ``instruction``/``response``
pairs, read in chunks so memory stays flat. Reading an input never changes it.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

from magpie_exp.config import ConfigError, MagpieConfig
from magpie_exp.files import atomic_write_bytes, file_digest
from magpie_exp.records import Record, record_id
from magpie_exp.shards import ShardStore, writer_of
from magpie_exp.stages.keys import CHAIN, folder
from magpie_exp.taggers import TagContext

log = logging.getLogger(__name__)

_SHAREGPT_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def tag_context(cfg: MagpieConfig) -> TagContext:
    """What the taggers (and the pair stage's scorer) read of the config: its ``tag`` section and four facts."""
    ev = cfg.evaluation
    return TagContext(cfg.tag, cfg.generator, Path(cfg.paths.cache_dir), cfg.seed, ev.data_dir, dict(ev.lm_eval.local_data))


def check_writable(folder: Path, key: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{time.time_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot write to '{folder}' ({exc.strerror or exc}); point {key} at a writable folder") from exc


def check_free_space(folder: Path, need: int, key: str, what: str, fix: str) -> None:
    """Refuse to start a step that cannot finish: ``need`` bytes must be free under ``folder``."""
    import shutil

    free = shutil.disk_usage(folder).free
    if free < need:
        raise ConfigError(f"{key}: '{folder}' has {free / 1e9:.1f} GB free but {what} needs about {need / 1e9:.1f} GB; "
                          f"free some space, point {key} at a bigger disk, or {fix}")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk; libraries re-raise ENOSPC as their own errors."""
    import errno

    seen = 0
    while exc is not None and seen < 10:
        if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


@dataclass
class StageResult:
    stage_dir: Path
    stats: dict[str, Any]
    exports: dict[str, str]
    cache_hit: bool


def finished(store: ShardStore, exports: dict[str, Path], stats_file: str = "stats.json") -> StageResult | None:
    """The result of ``store``'s folder if it is finished, else None: the one completion test of every stage.

    Finished means: the manifest says complete, every shard matches its checksum (a writable store drops the bad
    ones and so is unfinished again), and ``stats_file`` and every export exist."""
    root = store.root
    if store.verify() or not store.complete or not (root / stats_file).exists():
        return None
    if not all(Path(p).exists() for p in exports.values()):
        return None
    log.info("cache hit: %s stage %s is complete (%d records)", store.stage, root,
             store.manifest.get("records", store.record_count()))
    return StageResult(root, json.loads((root / stats_file).read_text()), {k: str(v) for k, v in exports.items()}, True)


def finish(store: ShardStore, stats: dict[str, Any], exports: dict[str, Any], stats_file: str = "stats.json",
           **manifest: Any) -> StageResult:
    """Mark ``store``'s folder finished, the last write of every stage: its stats (atomically), then the manifest's
    completion flag (with ``manifest`` facts, e.g. its record count)."""
    atomic_write_bytes(store.root / stats_file, json.dumps(stats, indent=1).encode())
    store.mark_complete(**manifest)
    return StageResult(store.root, stats, {k: str(v) for k, v in exports.items()}, False)


@dataclass
class StageInput:
    """The records a stage reads, shard by shard."""

    key: str  # upstream config hash or file checksum: part of the reading stage's hash
    path: Path
    shard_names: list[str]
    read: Callable[[str], Iterator[Record]]
    manifest: dict[str, Any]
    line_of: Callable[[str, int], int] | None = None  # (shard, record index) -> line of a JSONL input file

    def records(self) -> Iterator[Record]:
        for name in self.shard_names:
            yield from self.read(name)

    def where(self, shard: str, index: int) -> str:
        """Where the ``index``-th record (0-based) of ``shard`` is, for an error message."""
        if self.line_of is not None:
            return f"{self.path} line {self.line_of(shard, index)}"
        return f"{self.path} shard {shard} record {index + 1}"


def normalize_row(row: dict[str, Any], line: int, source: str) -> Record:
    """One input row in any supported layout -> a record; raises ConfigError naming the line."""
    if not isinstance(row, dict):
        raise ConfigError(f"input: {source} line {line} is a JSON {type(row).__name__}, not an object; "
                          "give one record object per line")
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
    for key in ("tags", "gen"):
        if not isinstance(row.get(key) or {}, dict):
            raise ConfigError(f"input: {source} line {line}: '{key}' must be an object; got {type(row[key]).__name__}")
    messages = [{**m, "content": _valid_text(m["content"])} for m in messages]
    first_user = next(m["content"] for m in messages if m["role"] == "user")
    rid = row.get("id") or row.get("uuid") or record_id("input", first_user)
    return {"id": str(rid), "messages": messages, "gen": row.get("gen") or {}, "tags": dict(row.get("tags") or {})}


def _valid_text(text: str) -> str:
    """Text with lone surrogates (JSON escapes of half a UTF-16 pair, from garbled data) replaced by U+FFFD;
    tokenizers refuse them."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def _parse_line(line: str, number: int, path: Path) -> Record:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError) as exc:  # bad JSON, nesting too deep, an integer too long
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)[:80]
        raise ConfigError(f"input: {path} line {number} is not JSON ({reason}); fix or remove the line") from exc
    return normalize_row(row, number, str(path))


def _jsonl_input(path: Path, chunk: int) -> StageInput:
    with path.open("rb") as handle:
        head = handle.read(2)
    if head == b"\x1f\x8b":
        raise ConfigError(f"input: '{path}' is gzip-compressed; decompress it first (gunzip -k {path.name}) and give "
                          "the .jsonl file")
    count = filled = 0
    with path.open("rb") as handle:
        for count, raw in enumerate(handle, 1):  # noqa: B007 (the count is the point)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"input: {path} line {count} is not UTF-8 ({exc.reason} at byte {exc.start}); "
                                  "re-encode the file as UTF-8") from exc
            if text.strip():
                if filled == 0 and text.lstrip().startswith("[") and not text.rstrip().endswith("]"):
                    raise ConfigError(f"input: '{path}' looks like a JSON array, not JSON Lines; write one record "
                                      f"object per line (e.g. jq -c '.[]' {path.name} > records.jsonl)")
                _parse_line(text, count, path)  # every line is checked before any model loads (seconds, not hours)
                filled += 1
    if count == 0:
        raise ConfigError(f"input: '{path}' is empty; give a JSONL file with at least one record")
    if filled == 0:
        raise ConfigError(f"input: '{path}' holds only blank lines ({count}); give a JSONL file with at least one record")
    names = [f"in-{i:05d}" for i in range((count + chunk - 1) // chunk)]

    def line_of(name: str, index: int) -> int:
        start = int(name.split("-")[1]) * chunk
        seen = -1
        with path.open("rb") as handle:
            for number, raw in enumerate(itertools.islice(handle, start, start + chunk), start + 1):
                seen += bool(raw.strip())
                if seen == index:
                    return number
        return start + index + 1

    def read(name: str) -> Iterator[Record]:
        start = int(name.split("-")[1]) * chunk
        with path.open("rb") as handle:  # lines split on b"\n" only, as counted above
            for number, raw in enumerate(itertools.islice(handle, start, start + chunk), start + 1):
                line = raw.decode("utf-8")
                if line.strip():
                    yield _parse_line(line, number, path)

    return StageInput(f"file:{file_digest(path, 16)}", path, names, read, {"stage": "file", "records": filled}, line_of)


def open_input(cfg: MagpieConfig, step: str, upstream: str | None = None, chunk: int = 1000) -> StageInput:
    """The input of ``step`` (tag, curate, pair or sft): ``upstream`` (what the pipeline hands it), else
    ``cfg.input`` if set, else this config's upstream stage folder (``keys.folder``), which must be complete."""
    before = CHAIN[step][1]
    given = upstream or cfg.input
    path = Path(given).expanduser() if given else folder(cfg, before)
    hint = f"run `magpie-exp stage={before}` with the same config first, or set input=<stage folder or JSONL file>"
    if not path.exists():
        raise ConfigError(f"input: '{path}' does not exist; {hint}")
    if path.is_file():
        return _jsonl_input(path, chunk)
    if not (path / "manifest.json").exists():
        raise ConfigError(f"input: '{path}' is not a stage folder (no manifest.json); {hint}")
    try:
        store = ShardStore.open(path)  # read-only: reading an input never changes it
    except (OSError, ValueError, KeyError, TypeError) as exc:
        remake = f"magpie-exp stage={path.parent.name}" if path.parent.name in {s for s, _ in CHAIN.values()} else "the stage"
        raise ConfigError(f"input: {path / 'manifest.json'} is damaged ({type(exc).__name__}: {str(exc)[:80]}); "
                          f"delete {path} and run {remake} with the config that made it") from exc
    if not store.complete:
        writer = writer_of(path)
        if writer is not None:
            raise ConfigError(f"input: stage folder '{path}' is being written by another job ({writer}); run this "
                              "again when it has finished")
        raise ConfigError(f"input: stage folder '{path}' is not complete; rerun its stage to finish it, or {hint}")
    bad = store.verify()
    if bad:
        raise ConfigError(f"input: shards {bad} of '{path}' fail their checksums; rerun the {store.stage} stage to redo them")
    names = sorted(store.manifest["shards"])
    if store.record_count() == 0:
        raise ConfigError(f"input: stage folder '{path}' holds no records; nothing to {step}")
    return StageInput(f"{store.stage}:{store.config_hash}", path, names, store.read_shard, store.manifest)
