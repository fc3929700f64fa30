"""Sharded, resumable stage output: JSONL shards written atomically, indexed by a manifest with checksums.

A stage folder looks like::

    <stage dir>/
      manifest.json          # config hash, the config, one entry per finished shard (records, bytes, sha256)
      shards/shard-00000.jsonl
      ...

A shard is written to a temporary name, flushed to disk and renamed; only then is it added to the manifest,
which is itself replaced atomically. So a run killed at any instant leaves either a finished shard listed in the
manifest, or nothing that counts: a rerun redoes exactly the shards that are missing. A shard whose bytes no
longer match its checksum (truncated, edited, disk error) is reported by ``verify`` and redone.

One process writes a folder at a time: its writer holds an exclusive ``flock`` on the folder itself (no lock
file: the folder holds only its output) from the moment it opens an unfinished folder until it marks it
complete; another job that would write the same folder (a parallel sweep member with the same upstream config)
waits, then finds it complete. The OS drops the lock of a killed process. Readers never lock: a stage that reads
an unfinished folder asks ``writer_of`` and says which job is writing it.

A shard is an independent unit of work, which is what lets an executor fan shards out later.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Iterator

from magpie_exp.faults import failpoint
from magpie_exp.files import atomic_write_bytes, file_digest

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


_HELD: dict[str, int] = {}  # stage folder -> file descriptor of the writer lock this process holds
_UNLOCKABLE: set[str] = set()  # folders on a filesystem that refused flock (warned once)


def acquire_writer(root: Path) -> None:
    """Become the one writer of ``root`` (waiting for another job that is writing it); reentrant per process."""
    key = str(root.resolve())
    if key in _HELD:
        if os.fstat(_HELD[key]).st_ino == os.stat(root).st_ino:
            return
        os.close(_HELD.pop(key))  # the folder was deleted and made again: lock the new one
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.warning("%s is being written by another job (%s); waiting for it to finish", root, _holder(root))
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:  # a filesystem without flock (some NFS mounts): write unguarded, and say so once
        os.close(fd)
        if not _UNLOCKABLE:
            log.warning("cannot lock %s (%s): parallel jobs must not write the same stage folder here", root, exc)
        _UNLOCKABLE.add(key)
        return
    except BaseException:
        os.close(fd)
        raise
    _HELD[key] = fd


def release_writer(root: Path) -> None:
    fd = _HELD.pop(str(root.resolve()), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def wait_for_writer(root: Path) -> None:
    """Return once no other job is writing ``root`` (a parallel sweep member making the same stage folder), so
    the caller's cache check sees what that job made."""
    root = Path(root)
    if root.is_dir() and str(root.resolve()) not in _HELD and writer_of(root) is not None:
        acquire_writer(root)
        release_writer(root)


def _holder(root: Path) -> str:
    """'pid N' of the process holding ``root``'s lock, from /proc/locks (Linux, this host), or 'another job'."""
    try:
        inode = os.stat(root).st_ino
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
                return f"pid {fields[4]}"
    except OSError:
        pass
    return "another job"


def writer_of(root: Path) -> str | None:
    """Who is writing ``root`` now ("pid N"), or None; never creates or changes a file."""
    root = Path(root)
    if str(root.resolve()) in _HELD:
        return f"pid {os.getpid()} (this process)"
    try:
        fd = os.open(root, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _holder(root)
    except OSError:  # no flock on this filesystem: nobody can be seen writing
        return None
    finally:
        os.close(fd)


class ShardStore:
    """One stage's output folder: finished shards, their manifest, and the stage's completion flag."""

    def __init__(self, root: Path, stage: str, config_hash: str, config: dict[str, Any] | None = None,
                 read_only: bool = False) -> None:
        self.root = Path(root)
        self.stage = stage
        self.config_hash = config_hash
        self.shard_dir = self.root / "shards"
        self.read_only = read_only
        if not read_only:  # the writer of this folder: it alone makes, cleans and changes it
            self.root.mkdir(parents=True, exist_ok=True)  # shards/ comes with the first shard (a model folder has none)
            if not self._finished_on_disk():
                acquire_writer(self.root)  # waits while another job writes it
                self._clean_temporaries()
        self.manifest = self._load_manifest(config)
        if not read_only and self.complete:  # finished (perhaps by the job it waited for): nothing to write
            release_writer(self.root)

    @classmethod
    def open(cls, root: Path) -> ShardStore:
        """An existing stage folder, whatever its config hash, to read another stage's output: read-only (its
        temporary files, which may be another job's shard in flight, and its manifest are left as they are)."""
        manifest = json.loads((Path(root) / MANIFEST).read_text())  # a damaged one: the caller says so
        return cls(Path(root), manifest.get("stage", "?"), manifest["config_hash"], read_only=True)

    # -- manifest ---------------------------------------------------------------------------------------------
    def _load_manifest(self, config: dict[str, Any] | None) -> dict[str, Any]:
        path = self.root / MANIFEST
        if path.exists():
            manifest = json.loads(path.read_text())
            if manifest.get("config_hash") != self.config_hash:
                raise ValueError(
                    f"{path} belongs to config hash {manifest.get('config_hash')}, not {self.config_hash}; "
                    "use another output folder or delete it to start over"
                )
            return manifest
        manifest = {
            "stage": self.stage,
            "config_hash": self.config_hash,
            "config": config or {},
            "shards": {},
            "complete": False,
            "created_unix": time.time(),
        }
        self._save(manifest)
        return manifest

    def pin(self, key: str, value: Any) -> Any:
        """Record ``value`` under ``key`` in the manifest the first time; return what is recorded (a resumed run
        compares it with what it would record now)."""
        if key not in self.manifest:
            self.manifest[key] = value
            self._save(self.manifest)
        return self.manifest[key]

    def _finished_on_disk(self) -> bool:
        try:
            return bool(json.loads((self.root / MANIFEST).read_text()).get("complete"))
        except (OSError, ValueError, AttributeError):
            return False

    def _save(self, manifest: dict[str, Any]) -> None:
        if self.read_only:
            raise RuntimeError(f"{self.root} was opened read-only (as another stage's input)")
        acquire_writer(self.root)  # a finished folder opened for a cache hit takes the lock only to change it
        atomic_write_bytes(self.root / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode())

    def _clean_temporaries(self) -> None:
        for tmp in list(self.shard_dir.glob(".*.tmp-*")) + list(self.root.glob(".*.tmp-*")):
            log.info("removing unfinished temporary file %s", tmp)
            tmp.unlink(missing_ok=True)

    # -- shards -----------------------------------------------------------------------------------------------
    def shard_path(self, name: str) -> Path:
        return self.shard_dir / f"{name}.jsonl"

    def done(self) -> set[str]:
        return set(self.manifest["shards"])

    def verify(self) -> list[str]:
        """Drop from the manifest every shard whose file is missing or does not match its checksum."""
        bad = []
        for name, info in sorted(self.manifest["shards"].items()):
            path = self.shard_path(name)
            if not path.exists() or path.stat().st_size != info["bytes"] or file_digest(path) != info["sha256"]:
                bad.append(name)
        if bad and self.read_only:  # a reader reports; the folder's writer redoes them
            return bad
        if bad:
            log.warning("%d shard(s) failed their manifest checksum and will be redone: %s", len(bad), bad)
            for name in bad:
                del self.manifest["shards"][name]
            self.manifest["complete"] = False
            self._save(self.manifest)
        return bad

    def write_shard(self, name: str, records: Iterable[dict[str, Any]], meta: dict[str, Any] | None = None) -> int:
        """Write one finished shard atomically and record it in the manifest; returns its record count."""
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
        # a lone surrogate (half of a broken UTF-16 pair, from garbled input) is written as its JSON escape: valid
        # UTF-8 on disk, and the same string when read back
        data = "".join(lines).encode("utf-8", errors="backslashreplace")
        path = self.shard_path(name)
        self.shard_dir.mkdir(exist_ok=True)
        atomic_write_bytes(path, data)
        failpoint("shard.renamed")
        self.manifest["shards"][name] = {
            "records": len(lines),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            **(meta or {}),
        }
        self._save(self.manifest)
        failpoint("shard.written")
        return len(lines)

    def write_vectors(self, name: str, vectors: Any) -> None:
        """Store a float32 matrix (one row per record) beside shard ``name``; written before the shard, so a listed
        shard always has its vectors (the tag stage's embeddings)."""
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, np.asarray(vectors, dtype=np.float32))
        self.shard_dir.mkdir(exist_ok=True)
        atomic_write_bytes(self.shard_dir / f"{name}.npy", buffer.getvalue())

    def read_vectors(self, name: str) -> tuple[list[str], Any]:
        """The ids of shard ``name`` and the matrix stored beside it, row for row (an error if they disagree)."""
        import numpy as np

        ids = [row["id"] for row in self.read_shard(name)]
        vectors = np.load(self.shard_dir / f"{name}.npy")
        if len(ids) != len(vectors):
            raise RuntimeError(f"{self.root}: {name} has {len(ids)} ids but {len(vectors)} vectors")
        return ids, vectors

    def read_shard(self, name: str) -> Iterator[dict[str, Any]]:
        with self.shard_path(name).open(encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)

    def records(self) -> Iterator[dict[str, Any]]:
        """Stream every record of every finished shard, in shard-name order."""
        for name in sorted(self.manifest["shards"]):
            yield from self.read_shard(name)

    def record_count(self) -> int:
        return sum(info["records"] for info in self.manifest["shards"].values())

    # -- completion -------------------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def mark_complete(self, **extra: Any) -> None:
        self.manifest.update(extra)
        self.manifest["complete"] = True
        self.manifest["completed_unix"] = time.time()
        self._save(self.manifest)
        release_writer(self.root)
