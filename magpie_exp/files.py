"""File helpers every layer shares (no project imports): one file digest, atomic writes, reading a stage's JSON
facts, and stable seeds."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any


def read_json(path: Path) -> dict[str, Any]:
    """A stage folder's JSON facts (stats, scores, manifest) for a page or a card: {} when the file is absent (a
    step that did not run), {} with a warning naming the file when it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logging.getLogger(__name__).warning("cannot read %s (%s); left out", path, exc)
        return {}


def file_digest(path: Path, length: int | None = None, limit_bytes: int | None = None, with_size: bool = False) -> str:
    """sha256 of a file's bytes (the first ``limit_bytes`` of them when given, after its size when ``with_size``),
    as hex, cut to ``length`` characters when given."""
    digest = hashlib.sha256(str(path.stat().st_size).encode()) if with_size else hashlib.sha256()
    remaining = limit_bytes
    with Path(path).open("rb") as handle:
        while remaining is None or remaining > 0:
            block = handle.read(1 << 20 if remaining is None else min(1 << 20, remaining))
            if not block:
                break
            digest.update(block)
            if remaining is not None:
                remaining -= len(block)
    return digest.hexdigest()[:length] if length else digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path``, flush it to disk, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def stable_seed(*parts: Any) -> int:
    """A 32-bit seed from JSON-able parts: the same on every machine and in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(json.dumps(parts).encode()).digest()[:4], "big")
