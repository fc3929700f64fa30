"""Min-neighbour distance, repeat counts and near-duplicate clusters: known answers, order independence,
agreement with the official search, and the approximate indexes."""

from __future__ import annotations

import numpy as np
import pytest

from magpie_exp.dedup import choose_keepers, clusters, neighbour_stats, official_method


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted(seed: int = 0, n: int = 400, dim: int = 32) -> tuple[np.ndarray, list[set[int]]]:
    """Random unit vectors plus planted near-duplicate groups (a chain, a pair, a triple of exact copies)."""
    rng = np.random.default_rng(seed)
    base = unit(rng.normal(size=(n, dim)))
    groups = [{0, 1, 2}, {10, 11}, {20, 21, 22}]
    base[1] = unit(base[0:1] + 0.05 * unit(rng.normal(size=(1, dim))))[0]
    base[2] = unit(base[1:2] + 0.05 * unit(rng.normal(size=(1, dim))))[0]  # a chain 0 ~ 1 ~ 2
    base[11] = unit(base[10:11] + 0.1 * unit(rng.normal(size=(1, dim))))[0]
    base[21] = base[20]
    base[22] = base[20]
    return base, groups


def as_sets(labels: np.ndarray) -> list[set[int]]:
    found: dict[int, set[int]] = {}
    for i, label in enumerate(labels.tolist()):
        found.setdefault(label, set()).add(i)
    return sorted((s for s in found.values() if len(s) > 1), key=min)


def test_distance_semantics_on_a_hand_built_set() -> None:
    a = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    stats = neighbour_stats(a, threshold=0.05)
    # squared L2 of unit vectors = 2 - 2 cos: twins 0, orthogonal 2, opposite 4
    assert stats.min_distance.tolist() == pytest.approx([0.0, 0.0, 2.0, 2.0], abs=1e-6)
    assert stats.repeat_count.tolist() == [1, 1, 0, 0]
    assert stats.pairs == [(0, 1)]


def test_planted_clusters_are_found_whatever_the_input_order() -> None:
    vectors, groups = planted()
    reward = np.random.default_rng(1).normal(size=len(vectors))
    ids = [f"id{i:04d}" for i in range(len(vectors))]
    stats = neighbour_stats(vectors)
    labels = clusters(len(vectors), stats.pairs)
    assert as_sets(labels) == groups
    keep = choose_keepers(labels, lambda i: (-reward[i], ids[i]))
    kept = {ids[i] for i in np.flatnonzero(keep)}
    for seed in range(3):
        perm = np.random.default_rng(seed + 10).permutation(len(vectors))
        p_stats = neighbour_stats(vectors[perm])
        p_labels = clusters(len(vectors), p_stats.pairs)
        assert sorted(sorted(perm[list(s)].tolist()) for s in as_sets(p_labels)) == sorted(sorted(s) for s in groups)
        p_keep = choose_keepers(p_labels, lambda i, perm=perm: (-reward[perm[i]], ids[perm[i]]))
        assert {ids[perm[i]] for i in np.flatnonzero(p_keep)} == kept
        assert np.allclose(p_stats.min_distance, stats.min_distance[perm], atol=1e-5)
        assert (p_stats.repeat_count == stats.repeat_count[perm]).all()
    # each cluster keeps its best-reward member
    for group in groups:
        best = min(group, key=lambda i: (-reward[i], ids[i]))
        assert keep[best] and sum(keep[list(group)]) == 1


def test_agrees_with_the_official_flat_l2_search() -> None:
    vectors, _ = planted(seed=3, n=3000, dim=48)
    ours = neighbour_stats(vectors)
    dist, repeat = official_method(vectors)
    assert np.allclose(ours.min_distance, dist, atol=1e-5)
    assert (ours.repeat_count == repeat).all()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_the_planted_duplicates(kind: str) -> None:
    vectors, groups = planted(seed=5, n=2000, dim=32)
    stats = neighbour_stats(vectors, kind=kind)
    assert stats.index == kind
    assert as_sets(clusters(len(vectors), stats.pairs)) == groups
    exact = neighbour_stats(vectors)
    # an approximate search may miss the true nearest neighbour, never invent a closer one
    assert (stats.min_distance >= exact.min_distance - 1e-5).all()


def test_degenerate_sizes() -> None:
    assert len(neighbour_stats(np.zeros((0, 4), np.float32)).min_distance) == 0
    one = neighbour_stats(unit(np.ones((1, 4))))
    assert np.isinf(one.min_distance[0]) and one.repeat_count[0] == 0
