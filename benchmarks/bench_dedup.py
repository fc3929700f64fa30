"""Benchmark: near-duplicate search (the tag stage's dedup) with the exact flat index against IVF and HNSW, on
synthetic sentence-like embeddings whose near-duplicates straddle the threshold.

    .venv/bin/python benchmarks/bench_dedup.py --n 100000           # exact search run in full
    .venv/bin/python benchmarks/bench_dedup.py --n 1000000          # exact search timed on a sample (see below)

The vectors: topics (random centres) with members spread around them (nearest other member at a squared L2
distance of about 0.3-0.8, as related sentences are under MiniLM), and planted near-copies whose distance to
their source is drawn uniformly from [0.5, 1.5] x the threshold (0.05), so about half fall on each side of it,
some in chains of three. Each index goes through ``dedup.neighbour_stats`` exactly as the tag stage calls it.
Printed per index: build and search seconds, peak memory, the recall of the nearest neighbour (its distance
found to 1e-4), and the share of records whose keep/drop decision (clusters of near-duplicates, one keeper
each) differs from the exact one.

Exact at 1,000,000 vectors takes about an hour on 2 cores, so there the exact search is run for a random sample
of queries (``--exact-sample``, default 20,000) and its time scaled by n / sample (a flat search costs the same
per query). The exact answer for every record is known by construction there: the planted pairs are the only
pairs within 2x the threshold (checked on the sample: its nearest background neighbour is printed), so the
exact decisions are computed from them; at 100,000 the full exact search checks that construction too.
This is a script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

THRESHOLD = 0.05


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_vectors(n: int, dim: int, seed: int, copy_share: float) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """n unit vectors; returns them and the planted (source, copy) pairs."""
    rng = np.random.default_rng(seed)
    topics = max(1, n // 200)
    centres = _unit(rng.normal(size=(topics, dim)).astype(np.float32))
    member_of = rng.integers(0, topics, n)
    x = _unit(centres[member_of] + 0.55 * _unit(rng.normal(size=(n, dim)).astype(np.float32)))
    copies = int(n * copy_share)
    targets = rng.choice(n, copies, replace=False)
    pairs = []
    free = np.setdiff1d(np.arange(n), targets)
    sources = rng.choice(free, copies)
    for k, (src, dst) in enumerate(zip(sources.tolist(), targets.tolist(), strict=True)):
        if k % 10 == 9 and k > 0:  # every tenth copies the previous copy: a chain of three
            src = int(targets[k - 1])
        d = rng.uniform(0.5, 1.5) * THRESHOLD
        cos = 1.0 - d / 2.0
        u = rng.normal(size=dim).astype(np.float32)
        u -= u.dot(x[src]) * x[src]
        u /= np.linalg.norm(u)
        x[dst] = cos * x[src] + np.sqrt(1.0 - cos * cos) * u
        pairs.append((src, dst))
    return np.ascontiguousarray(x, dtype=np.float32), pairs


def decisions(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    from magpie_exp.dedup import choose_keepers, clusters

    labels = clusters(n, pairs)
    return choose_keepers(labels, lambda i: i)


def truth_from_construction(x: np.ndarray, planted: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Near-duplicate pairs among the planted ones (and pairs they make between themselves in chains)."""
    near = set()
    members: dict[int, set[int]] = {}
    for a, b in planted:
        members.setdefault(a, set()).add(b)
        members.setdefault(b, set()).add(a)
    for a, linked in members.items():
        group = [a, *linked]
        for i in group:
            for j in group:
                if i < j and 2.0 - 2.0 * float(x[i].dot(x[j])) < THRESHOLD:
                    near.add((i, j))
    return sorted(near)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--copy-share", type=float, default=0.02, help="share of records that are planted copies")
    parser.add_argument("--exact-sample", type=int, default=20_000, help="queries timed for exact when n > 200,000")
    parser.add_argument("--indexes", default="ivf,hnsw", help="approximate indexes to compare (ivf, hnsw)")
    parser.add_argument("--nprobe", default="2,4", help="IVF cells searched per query, comma-separated to compare")
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default: the shipped sqrt(n))")
    parser.add_argument("--ef-search", default="64", help="HNSW search breadth, comma-separated to compare")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import faiss

    from magpie_exp.dedup import IndexParams, neighbour_stats

    faiss.omp_set_num_threads(faiss.omp_get_max_threads())
    t = time.perf_counter()
    x, planted = make_vectors(args.n, args.dim, args.seed, args.copy_share)
    print(f"{args.n:,} unit vectors x {args.dim} in {args.n // 200:,} topics, {len(planted):,} planted copies at "
          f"0.5-1.5 x the threshold {THRESHOLD} (made in {time.perf_counter() - t:.0f} s); {faiss.omp_get_max_threads()} threads")
    truth_pairs = truth_from_construction(x, planted)
    rows = []
    if args.n <= 200_000:
        t = time.perf_counter()
        exact = neighbour_stats(x, THRESHOLD, kind="flat")
        exact_s = time.perf_counter() - t
        assert exact.pairs == truth_pairs, "the construction's pairs are not the exact ones"
        exact_min = exact.min_distance
        print(f"exact (flat, full): {exact_s:.1f} s; its near-duplicate pairs are the construction's ({len(truth_pairs):,})")
    else:
        rng = np.random.default_rng(args.seed + 1)
        sample = np.sort(rng.choice(args.n, args.exact_sample, replace=False))
        index = faiss.IndexFlatIP(args.dim)
        index.add(x)
        t = time.perf_counter()
        sims, ids = index.search(x[sample], 2)
        sample_s = time.perf_counter() - t
        exact_s = sample_s * args.n / args.exact_sample
        other = np.where(ids[:, 0] == sample, sims[:, 1], sims[:, 0])
        exact_min = np.full(args.n, np.nan, np.float32)
        exact_min[sample] = np.maximum(2.0 - 2.0 * other, 0.0)
        involved = {i for p in planted for i in p}
        background = [i for i in sample.tolist() if i not in involved]
        if float(np.nanmin(exact_min[background])) < 2 * THRESHOLD:
            raise SystemExit("background vectors come within 2x the threshold: the exact answer is not known by "
                             "construction; use a smaller --n or more topic spread")
        print(f"exact (flat): {sample_s:.1f} s for {args.exact_sample:,} queries -> {exact_s:.0f} s for all "
              f"{args.n:,} (scaled); nearest background neighbour in the sample: d = "
              f"{float(np.nanmin(exact_min[background])):.3f} (> 2 x the threshold, so the planted pairs are all)")
        del index
    truth = decisions(args.n, truth_pairs)
    rows.append(("flat (exact)", exact_s, 0.0, 1.0, 0.0))
    variants = [(f"ivf nprobe={p}", "ivf", IndexParams(nlist=args.nlist, nprobe=int(p)))
                for p in args.nprobe.split(",") if "ivf" in args.indexes.split(",")]
    variants += [(f"hnsw ef={e}", "hnsw", IndexParams(ef_search=int(e)))
                 for e in args.ef_search.split(",") if "hnsw" in args.indexes.split(",")]
    for name, kind, params in variants:
        t = time.perf_counter()
        got = neighbour_stats(x, THRESHOLD, kind=kind, params=params)
        seconds = time.perf_counter() - t
        known = ~np.isnan(exact_min)
        recall = float(np.mean(np.abs(got.min_distance[known] - exact_min[known]) < 1e-4))
        differ = float(np.mean(decisions(args.n, got.pairs) != truth))
        rows.append((name, seconds, peak_mb(), recall, differ))
        print(f"{name}: {seconds:.1f} s", flush=True)
    nlist = args.nlist or int(np.sqrt(args.n))
    print(f"\n(IVF: {nlist:,} cells; HNSW: M=32)")
    print(f"{'index':16s} {'seconds':>9s} {'x exact':>8s} {'peak MB':>8s} {'NN recall':>10s} {'decisions differ':>17s}")
    for name, seconds, mb, recall, differ in rows:
        print(f"{name:16s} {seconds:9.1f} {exact_s / seconds:8.1f} {mb or peak_mb():8.0f} {recall:10.4f} {differ:16.4%}")
    print("(peak MB is the process's high-water mark so far: the vectors themselves are "
          f"{x.nbytes / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
