"""Minimum-neighbour distance, repeat counts and near-duplicate clusters over normalised embeddings (FAISS).

Distance semantics (the official ones, written down): embeddings are unit vectors, and the distance between
two texts is the **squared L2 distance** ``d = |a - b|^2 = 2 - 2 cos(a, b)``, from 0 (same direction) to 4
(opposite). ``min_neighbor_distance`` is ``d`` to the nearest *other* record. ``repeat_count`` is how many
other records lie at ``d < threshold`` (official threshold 0.05, i.e. cosine > 0.975). The official script
caps the count at 499 (a top-500 search); with the exact index it is not capped here.

Method: an inner-product index (exact ``IndexFlatIP`` up to ``exact_max`` vectors, IVF or HNSW above, FAISS GPU
by config) is searched with k=2 for the nearest neighbour of every vector; only the few vectors whose nearest
neighbour is closer than the threshold are then range-searched for all their near-duplicates. Near-duplicate
pairs form clusters by connected components (so a chain a~b~c is one cluster, whatever the order of the
input); each cluster keeps one member, the best by a configurable key (reward, then quality, then id), which
makes the choice independent of file order, unlike the official "first occurrence wins".
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class NeighbourStats:
    min_distance: np.ndarray  # (n,) float32, squared L2 to the nearest other vector (inf when n == 1)
    repeat_count: np.ndarray  # (n,) int64, other vectors at distance < threshold
    pairs: list[tuple[int, int]]  # near-duplicate pairs (i < j)
    index: str  # the FAISS index used


def _faiss():
    import faiss

    return faiss


@dataclass(frozen=True)
class IndexParams:
    """The approximate indexes' settings (``tag.dedup``): IVF's cells (``nlist``; None = sqrt(n)) and cells searched
    per query (``nprobe``); HNSW's links per node (``hnsw_m``) and search breadth (``ef_search``)."""

    nlist: int | None = None
    nprobe: int = 4
    hnsw_m: int = 32
    ef_search: int = 64


def build_index(vectors: np.ndarray, kind: str = "auto", exact_max: int = 200_000, device: str = "cpu",
                params: IndexParams = IndexParams()):  # noqa: ANN201, B008 - a faiss.Index; the default is frozen
    """An inner-product index over ``vectors``: flat (exact) up to ``exact_max``, else IVF; HNSW by request. IVF's
    k-means is trained on at most 256 vectors per cell (FAISS's own sample), not on all of them."""
    faiss = _faiss()
    n, dim = vectors.shape
    if kind == "auto":
        kind = "flat" if n <= exact_max else "ivf"
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        nlist = max(1, min(params.nlist or int(math.sqrt(n)), n // 39 or 1))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(params.nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = params.ef_search
    else:
        raise ValueError(f"dedup.index must be auto, flat, ivf or hnsw; got {kind!r}")
    if device == "cuda":  # same index on every visible GPU (faiss-gpu)
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(vectors)
    return index, kind


def neighbour_stats(vectors: np.ndarray, threshold: float = 0.05, kind: str = "auto", exact_max: int = 200_000,
                    device: str = "cpu", batch_size: int = 16_384, approx_k: int = 64,
                    params: IndexParams = IndexParams()) -> NeighbourStats:  # noqa: B008 - frozen
    """Min-neighbour distance, repeat count and near-duplicate pairs of unit ``vectors`` (n, dim)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    if n == 0:
        return NeighbourStats(np.zeros(0, np.float32), np.zeros(0, np.int64), [], "none")
    if n == 1:
        return NeighbourStats(np.full(1, np.inf, np.float32), np.zeros(1, np.int64), [], "none")
    index, kind = build_index(vectors, kind, exact_max, device, params)
    min_sim = 1.0 - threshold / 2.0  # d < threshold  <=>  cos > 1 - threshold / 2
    nearest = np.empty(n, np.float32)
    candidates: list[np.ndarray] = []
    for start in range(0, n, batch_size):
        sims, ids = index.search(vectors[start:start + batch_size], 2)
        rows = np.arange(start, start + len(sims))
        # Hit 0 is usually the vector itself; with exact duplicates it may be a twin (same similarity).
        other = np.where(ids[:, 0] == rows, sims[:, 1], sims[:, 0])
        nearest[start:start + len(sims)] = other
        candidates.append(rows[other > min_sim])
    min_distance = np.maximum(2.0 - 2.0 * nearest, 0.0).astype(np.float32)
    repeat = np.zeros(n, np.int64)
    pairs: set[tuple[int, int]] = set()
    todo = np.concatenate(candidates) if candidates else np.zeros(0, np.int64)
    for start in range(0, len(todo), batch_size):
        rows = todo[start:start + batch_size]
        for row, hits in zip(rows, _near(index, vectors[rows], min_sim, kind, approx_k), strict=True):
            hits = hits[hits != row]
            repeat[row] = len(hits)
            pairs.update((min(row, h), max(row, h)) for h in hits.tolist())
    return NeighbourStats(min_distance, repeat, sorted(pairs), kind)


def _near(index: Any, queries: np.ndarray, min_sim: float, kind: str, approx_k: int) -> list[np.ndarray]:
    """Ids of every indexed vector with inner product > ``min_sim`` for each query."""
    if kind in ("flat", "ivf"):
        lims, sims, ids = index.range_search(queries, min_sim)
        return [ids[lims[i]:lims[i + 1]][sims[lims[i]:lims[i + 1]] > min_sim] for i in range(len(queries))]
    sims, ids = index.search(queries, approx_k)  # HNSW has no range search: a top-k, capped like the official
    return [row_ids[(row_sims > min_sim) & (row_ids >= 0)] for row_sims, row_ids in zip(sims, ids, strict=True)]


def clusters(n: int, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Connected components of the near-duplicate graph: cluster label = smallest member index."""
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)])


def choose_keepers(labels: np.ndarray, rank_key: Callable[[int], Any]) -> np.ndarray:
    """True for the one member of each cluster with the smallest ``rank_key`` (a total order: ends with the id)."""
    best: dict[int, int] = {}
    for i, label in enumerate(labels.tolist()):
        if label not in best or rank_key(i) < rank_key(best[label]):
            best[label] = i
    keep = np.zeros(len(labels), bool)
    keep[list(best.values())] = True
    return keep


def official_method(vectors: np.ndarray, threshold: float = 0.05, k: int = 500, batch_size: int = 1024
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The official ``gen_dis.py`` search, for the benchmark: exact L2 flat index, top-``k`` in query batches.

    ``min_neighbor_distance`` = the second hit's squared L2 score, ``repeat_count`` = hits after the first with
    distance < ``threshold`` (so capped at ``k - 1``).
    """
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlat(vectors.shape[1])
    index.add(vectors)
    k = min(k, len(vectors))
    dist = np.empty(len(vectors), np.float32)
    repeat = np.empty(len(vectors), np.int64)
    for start in range(0, len(vectors), batch_size):
        scores, _ = index.search(vectors[start:start + batch_size], k)
        dist[start:start + len(scores)] = scores[:, 1]
        repeat[start:start + len(scores)] = (scores[:, 1:] < threshold).sum(axis=1)
    return dist, repeat
