"""How diverse a set of conversations is, measured on a bounded sample so the cost stays small next to the stage:
at most ``SAMPLE`` records, chosen by a hash of their ids (the same records whatever the order they come in, and
a curated subset is measured on the records of its own sample).

- lexical: distinct-1 and distinct-2 of the instructions (unique n-grams / all n-grams, lower-cased words);
- task categories (where the task_category tagger ran): Shannon entropy in bits, and over its maximum;
- embeddings (where the embedding tagger ran): the mean pairwise cosine distance of the instruction embeddings
  and the Vendi score (Friedman and Dieng, 2023: exp of the entropy of the eigenvalues of the similarity matrix
  over n; 1 when all are alike, n when all are orthogonal), from the d x d matrix (same non-zero eigenvalues).
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from magpie_exp.shards import MANIFEST, ShardStore

SAMPLE = 2000


def _rank(record_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=8).digest(), "big")


def sample(records: Iterable[dict[str, Any]], size: int = SAMPLE) -> list[tuple[str, str, str | None]]:
    """(id, first instruction, task category) of the ``size`` records with the smallest id hashes, in one pass."""
    heap: list[tuple[int, str, str, str | None]] = []  # max-heap on rank (negated)
    for record in records:
        rank = _rank(record["id"])
        if len(heap) < size or -heap[0][0] > rank:
            messages = record.get("messages") or []
            text = next((m.get("content") or "" for m in messages if m.get("role") == "user"), "")
            category = (record.get("tags") or {}).get("task_category")
            item = (-rank, record["id"], text, category if isinstance(category, str) else None)
            if len(heap) < size:
                heapq.heappush(heap, item)
            else:
                heapq.heapreplace(heap, item)
    return [(rid, text, cat) for _, rid, text, cat in sorted(heap, key=lambda x: -x[0])]


def distinct_n(texts: list[str], n: int) -> float | None:
    grams: Counter = Counter()
    for text in texts:
        words = text.lower().split()
        grams.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return round(len(grams) / total, 4) if total else None


def category_entropy(labels: list[str]) -> dict[str, Any]:
    counts = Counter(labels)
    total = sum(counts.values())
    if not total:
        return {}
    bits = -sum(c / total * math.log2(c / total) for c in counts.values())
    return {"task_categories": len(counts), "category_entropy_bits": round(bits, 4),
            "category_entropy_normalized": round(bits / math.log2(len(counts)), 4) if len(counts) > 1 else 0.0}


def embedding_diversity(vectors: np.ndarray) -> dict[str, Any]:
    n = len(vectors)
    if n < 2:
        return {}
    x = vectors.astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    total = x.sum(axis=0)
    mean_similarity = (float(total @ total) - n) / (n * (n - 1))  # the off-diagonal mean of x x^T
    eig = np.clip(np.linalg.eigvalsh(x.T @ x / n), 0.0, None)
    eig = eig[eig > 1e-12]
    eig /= eig.sum()
    return {"mean_cosine_distance": round(1.0 - mean_similarity, 4),
            "vendi_score": round(float(np.exp(-(eig * np.log(eig)).sum())), 3)}


def diversity(records: Iterable[dict[str, Any]], vectors: Callable[[set[str]], dict[str, np.ndarray]] | None = None,
              size: int = SAMPLE) -> dict[str, Any]:
    """The diversity figures of ``records`` (see the module docstring); ``vectors`` gives the instruction
    embeddings of the sampled ids (id -> vector), where there are any."""
    picked = sample(records, size)
    texts = [text for _, text, _ in picked]
    out: dict[str, Any] = {"sample": len(picked), "sample_limit": size,
                           "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2)}
    out.update(category_entropy([c for _, _, c in picked if c is not None]))
    found = vectors({rid for rid, _, _ in picked}) if vectors is not None and picked else {}
    if found:
        rows = [found[rid] for rid, _, _ in picked if rid in found]
        if len(rows) == len(picked):
            out.update(embedding_diversity(np.stack(rows)))
    return out


def stored_vectors(tag_dir: Path, ids: set[str] | None = None) -> dict[str, np.ndarray]:
    """id -> embedding from a tag folder's embedding part (``parts/embedding``: one .npy per shard beside the
    shard's ids), for ``ids`` (all when None); empty when that tag run had no embedding tagger. Read-only."""
    part = tag_dir / "parts" / "embedding"
    out: dict[str, np.ndarray] = {}
    if not (part / MANIFEST).exists():
        return out
    store = ShardStore.open(part)  # read-only
    for name in sorted(store.done()):
        shard_ids, matrix = store.read_vectors(name)
        for rid, vector in zip(shard_ids, matrix, strict=True):
            if ids is None or rid in ids:
                out[rid] = vector
    return out
