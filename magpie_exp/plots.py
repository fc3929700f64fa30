"""Dataset statistics as pictures: what a tagged (or curated) dataset looks like at a glance.

Saved as PNG under ``<stage>/plots/``: instruction and response length histograms, task-category bars, quality
and difficulty bars, the min-neighbour-distance histogram, reward histogram, and a 2-D coverage map of the
instruction embeddings (PCA) coloured by task category. Returns name -> path (for the tracker and the report).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

import numpy as np

from magpie_exp.labels import DIFFICULTY, QUALITY, TASK_CATEGORIES

log = logging.getLogger(__name__)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return str(path)


def _bars(plt: Any, title: str, labels: list[str], counts: Counter, path: Path, horizontal: bool = False) -> str:
    fig, ax = plt.subplots(figsize=(7, 4))
    values = [counts.get(label, 0) for label in labels]
    if horizontal:
        ax.barh(labels[::-1], values[::-1], color="#4c72b0")
        ax.set_xlabel("records")
    else:
        ax.bar(labels, values, color="#4c72b0")
        ax.set_ylabel("records")
    failed = counts.get("None", 0)
    ax.set_title(title + (f"  ({failed} not tagged)" if failed else ""))
    return _save(fig, path)


def _hist(plt: Any, title: str, series: dict[str, list[float]], xlabel: str, path: Path, log_x: bool = False) -> str:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in series.items():
        data = np.asarray(values, dtype=float)
        if log_x:
            data = np.log10(np.maximum(data, 1))
        ax.hist(data, bins=40, alpha=0.6, label=f"{name} (n={len(values)}, median {np.median(values):.3g})")
    ax.set_title(title)
    ax.set_xlabel(("log10 " if log_x else "") + xlabel)
    ax.set_ylabel("records")
    ax.legend()
    return _save(fig, path)


def coverage_map(vectors: np.ndarray, categories: list[str | None]) -> np.ndarray:
    """2-D PCA projection of the embeddings (centred; top two principal directions)."""
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def dataset_plots(records: Callable[[], Iterator[dict[str, Any]]], out_dir: Path,
                  vectors: tuple[list[str], np.ndarray] | None = None) -> dict[str, str]:
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    lengths: dict[str, list[float]] = {"instruction": [], "response": []}
    counts = {k: Counter() for k in ("task_category", "input_quality", "difficulty")}
    dist: list[float] = []
    reward: dict[str, list[float]] = {"reward": [], "base_reward": []}
    category_by_id: dict[str, str | None] = {}
    for record in records():
        tags = record.get("tags", {})
        for side in ("instruction", "response"):
            if isinstance(tags.get(f"{side}_length"), int):
                lengths[side].append(tags[f"{side}_length"])
        for key, counter in counts.items():
            if key in tags:
                counter[str(tags[key])] += 1
        if isinstance(tags.get("min_neighbor_distance"), (int, float)):
            dist.append(tags["min_neighbor_distance"])
        for key, values in reward.items():
            if isinstance(tags.get(key), (int, float)):
                values.append(tags[key])
        category_by_id[record["id"]] = tags.get("task_category")
    plots: dict[str, str] = {}
    if lengths["instruction"]:
        plots["lengths"] = _hist(plt, "Length (characters)", {k: v for k, v in lengths.items() if v}, "characters",
                                 out_dir / "lengths.png", log_x=True)
    if counts["task_category"]:
        plots["task_category"] = _bars(plt, "Task category", [*TASK_CATEGORIES, "None"], counts["task_category"],
                                       out_dir / "task_category.png", horizontal=True)
    if counts["input_quality"]:
        plots["quality"] = _bars(plt, "Input quality", [*QUALITY, "None"], counts["input_quality"], out_dir / "quality.png")
    if counts["difficulty"]:
        plots["difficulty"] = _bars(plt, "Difficulty", [*DIFFICULTY, "None"], counts["difficulty"], out_dir / "difficulty.png")
    if dist:
        plots["min_neighbor_distance"] = _hist(plt, "Min-neighbour distance (squared L2, unit vectors)",
                                               {"instruction": dist}, "distance", out_dir / "min_neighbor_distance.png")
    if reward["reward"]:
        plots["reward"] = _hist(plt, "Reward", {k: v for k, v in reward.items() if v}, "reward", out_dir / "reward.png")
    if vectors is not None and len(vectors[0]) >= 3:
        ids, matrix = vectors
        xy = coverage_map(matrix, [category_by_id.get(i) for i in ids])
        fig, ax = plt.subplots(figsize=(6.5, 5.5))
        cats = [category_by_id.get(i) or "untagged" for i in ids]
        for cat in sorted(set(cats)):
            mask = np.array([c == cat for c in cats])
            ax.scatter(xy[mask, 0], xy[mask, 1], s=8, alpha=0.7, label=f"{cat} ({mask.sum()})")
        ax.set_title("Coverage map: instruction embeddings, PCA")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=2, loc="best")
        plots["coverage"] = _save(fig, out_dir / "coverage.png")
    log.info("plots: %s", ", ".join(sorted(plots)))
    return plots
