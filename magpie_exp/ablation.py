"""The ablation picture of a sweep (``index.html``): each score against the swept setting, one line per value of
the other swept settings, with a 95% interval where the benchmark gives one (Arena-Hard's bootstrap) or a seeded
bootstrap over the evaluated items can make one (IFEval prompt-level strict accuracy, MT-Bench ratings), and the
data-side numbers of each job beside them (kept records, distinct-2, Vendi score, contaminated records).

A swept setting is an override whose value differs between the sweep's jobs; the first one (in the order the
command gave them) is the x axis: numeric where every value is a number, else one position per value.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magpie_exp.evaluation.tables import HEADLINE
from magpie_exp.files import read_json

BOOTSTRAP_ROUNDS = 1000


@dataclass
class Point:
    settings: dict[str, str]
    values: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)


def bootstrap_interval(values: list[float], seed: int = 0, rounds: int = BOOTSTRAP_ROUNDS) -> tuple[float, float] | None:
    """The 2.5th and 97.5th percentiles of the mean of ``values`` resampled with replacement (seeded)."""
    if len(values) < 2:
        return None
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(rounds))
    return means[int(0.025 * rounds)], means[min(rounds - 1, int(0.975 * rounds))]


def _item_values(folder: Path, bench: str) -> list[float]:
    """Per-item values whose mean is the benchmark's headline score (IFEval, MT-Bench), from its items.jsonl."""
    path = folder / bench / "items.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if bench == "ifeval":
        return [100.0 * bool(r.get("prompt_level_strict_acc")) for r in rows]
    if bench == "mt_bench":
        return [float(t["verdict"]) for r in rows for t in (r.get("judgments") or {}).values()
                if isinstance(t, dict) and isinstance(t.get("verdict"), (int, float))]
    return []


def job_point(overrides: list[str], pipeline: dict[str, Any], seed: int = 0) -> Point:
    """One job's swept-able settings, scores (``<model> <benchmark title>``) and data-side numbers."""
    settings = dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)
    point = Point(settings)
    steps = {s["step"]: Path(s["folder"]) for s in pipeline.get("steps", [])}
    for label, benches in (pipeline.get("scores") or {}).items():
        for bench, scores in benches.items():
            if bench not in HEADLINE or not isinstance(scores, dict):
                continue
            key, title = HEADLINE[bench][0]
            value = scores.get(key)
            if not isinstance(value, (int, float)):
                continue
            name = f"{label}: {title}"
            point.values[name] = float(value)
            if bench == "arena_hard" and scores.get("ci95"):
                point.intervals[name] = tuple(scores["ci95"])  # type: ignore[assignment]
            elif f"evaluate:{label}" in steps:
                interval = bootstrap_interval(_item_values(steps[f"evaluate:{label}"], bench), seed)
                if interval:
                    point.intervals[name] = interval
    curated = read_json(steps["curate"] / "stats.json") if "curate" in steps else {}
    tagged = read_json(steps["tag"] / "stats.json") if "tag" in steps else {}
    div = curated.get("diversity") or tagged.get("diversity") or {}
    for name, value in (("data: kept records", curated.get("kept")), ("data: distinct-2", div.get("distinct_2")),
                        ("data: Vendi score", div.get("vendi_score")),
                        ("data: contaminated", (tagged.get("decontam") or {}).get("contaminated"))):
        if isinstance(value, (int, float)):
            point.values[name] = float(value)
    return point


def swept_keys(points: list[Point]) -> list[str]:
    keys: list[str] = []
    for p in points:
        keys += [k for k in p.settings if k not in keys]
    return [k for k in keys if len({p.settings.get(k) for p in points}) > 1]


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def ablation_plot(points: list[Point], out: Path) -> Path | None:
    """One panel per metric against the first swept setting (one line per value of the others); None when
    nothing was swept or nothing was measured."""
    swept = swept_keys(points)
    metrics = sorted({m for p in points for m in p.values}, key=lambda m: (m.startswith("data:"), m))
    if not swept or not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key, others = swept[0], swept[1:]
    raw = [p.settings.get(x_key) for p in points]
    numeric = all(_number(v) is not None for v in raw)
    order = sorted(set(raw), key=lambda v: (_number(v) if numeric else 0, str(v)))
    position = {v: (_number(v) if numeric else i) for i, v in enumerate(order)}
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.1 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        lines: dict[tuple[str | None, ...], list[Point]] = {}
        for p in points:
            if metric in p.values:
                lines.setdefault(tuple(p.settings.get(k) for k in others), []).append(p)
        for group, members in sorted(lines.items(), key=lambda kv: str(kv[0])):
            members.sort(key=lambda p: position[p.settings.get(x_key)])
            xs = [position[p.settings.get(x_key)] for p in members]
            ys = [p.values[metric] for p in members]
            label = ", ".join(f"{k}={v}" for k, v in zip(others, group, strict=True)) or None
            low = [y - p.intervals[metric][0] if metric in p.intervals else 0.0 for p, y in zip(members, ys, strict=True)]
            high = [p.intervals[metric][1] - y if metric in p.intervals else 0.0 for p, y in zip(members, ys, strict=True)]
            ax.errorbar(xs, ys, yerr=[low, high], marker="o", ms=4, capsize=3, label=label)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel(x_key, fontsize=8)
        if not numeric:
            ax.set_xticks(list(position.values()), [str(v) for v in order], fontsize=7, rotation=20)
        ax.grid(alpha=0.3)
        if others and lines:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
