"""The evaluation results table: one row per evaluated model, one column per headline metric (Markdown), read by
the evaluate stage, the run report and the sweep page alike."""

from __future__ import annotations

from typing import Any

HEADLINE = {
    "ifeval": [("prompt_level_strict_acc", "IFEval prompt strict"), ("prompt_level_loose_acc", "IFEval prompt loose"),
               ("inst_level_strict_acc", "IFEval inst strict"), ("inst_level_loose_acc", "IFEval inst loose")],
    "mt_bench": [("score", "MT-Bench (1-10)"), ("turn_1", "MT-Bench turn 1"), ("turn_2", "MT-Bench turn 2")],
    "alpaca_eval": [("lc_win_rate", "AlpacaEval-style LC WR"), ("win_rate", "AlpacaEval-style WR")],
    "arena_hard": [("score", "Arena-Hard-style")],
}


def _columns(result: dict[str, Any]) -> list[tuple[str, str]]:
    cols = []
    for bench, scores in result["benchmarks"].items():
        if bench == "lm_eval":
            cols += [(f"lm_eval:{task}:{metric}", f"{task} {metric}") for task, metrics in scores.get("tasks", {}).items()
                     for metric in metrics]
        else:
            cols += [(f"{bench}:{key}", title) for key, title in HEADLINE[bench]]
    return cols


def _value(result: dict[str, Any], column: str) -> str:
    parts = column.split(":")
    node: Any = result["benchmarks"].get(parts[0], {})
    for p in (["tasks", parts[1], parts[2]] if parts[0] == "lm_eval" else parts[1:]):
        node = node.get(p) if isinstance(node, dict) else None
    if node is None:
        return "-"
    if parts[0] == "arena_hard":
        ci = result["benchmarks"]["arena_hard"]["ci95"]
        return f"{node:.1f} ({ci[0]:.1f}, {ci[1]:.1f})"
    return f"{node:.3g}" if isinstance(node, float) else str(node)


def results_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per evaluated model, one column per headline metric; judges listed below."""
    columns: list[tuple[str, str]] = []
    for r in results:
        columns += [c for c in _columns(r) if c not in columns]
    lines = ["| model | " + " | ".join(title for _, title in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for r in results:
        lines.append(f"| {r['model']} | " + " | ".join(_value(r, key) for key, _ in columns) + " |")
    notes = sorted({f"{b}: n={s.get('n')}, judge {s['judge']} ({s['judge_model']}), prompt {s['prompt_version']}"
                    for r in results for b, s in r["benchmarks"].items() if isinstance(s, dict) and "judge" in s})
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"
