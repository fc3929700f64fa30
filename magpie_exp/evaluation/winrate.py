"""Win rates against a baseline: AlpacaEval's length-controlled win rate and Arena-Hard's score with a bootstrap CI.

Length control (AlpacaEval 2, Dubois et al. 2024; reference/peers.md Part 2). The judge's preference for the model
over the baseline, ``p`` in [0, 1], is fit by a logistic GLM on ``tanh(std_delta_len)`` (the baseline's length
minus the model's, in characters, divided by its standard deviation over the set) plus a model bias, with soft
labels (each row counts as a win with weight p and a loss with weight 1-p). The LC win rate is the model's
predicted win probability with the length difference set to zero. The published method also has a
per-instruction difficulty term estimated from many models and a regularization towards gamed baselines; its
maintainers note the LC behaviour comes from the length term, so a local judge uses the length term and bias only.

Arena-Hard (Li et al. 2024). Each question is judged twice with the answers swapped; a "much better" verdict
(``>>``) counts as three battles, as in ``show_result.py``. With one model against the baseline, the
Bradley-Terry fit of that script reduces to the weighted share of battles won (ties count half), which is what
``arena_score`` reports, with a percentile bootstrap over questions for the 95% interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def lc_win_rate(preference: Sequence[float], len_model: Sequence[int], len_baseline: Sequence[int]) -> dict[str, Any]:
    """Raw and length-controlled win rate (in %) of a model over a baseline from per-item preferences in [0, 1]."""
    from sklearn.linear_model import LogisticRegression

    p = np.asarray(preference, dtype=float)
    if p.size == 0:
        raise ValueError("no judged items")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("preferences must lie in [0, 1]")
    delta = np.asarray(len_baseline, dtype=float) - np.asarray(len_model, dtype=float)
    std = delta.std()
    x = np.tanh(delta / std) if std > 0 else np.zeros_like(delta)
    features = np.column_stack([x, np.ones_like(x)])
    rows = np.vstack([features, features])
    labels = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    weights = np.concatenate([p, 1 - p])
    keep = weights > 0
    raw = float(100 * p.mean())
    discrete = float(100 * np.mean(np.where(p > 0.5, 1.0, np.where(p < 0.5, 0.0, 0.5))))
    if len(set(labels[keep])) < 2:  # the model always wins (or always loses): nothing to control for
        lc, length_coef, bias = raw, 0.0, float("inf") if raw == 100 else float("-inf")
    else:
        glm = LogisticRegression(fit_intercept=False, C=1e4, max_iter=1000)
        glm.fit(rows[keep], labels[keep], sample_weight=weights[keep])
        length_coef, bias = (float(c) for c in glm.coef_[0])
        lc = float(100 / (1 + np.exp(-bias)))
    return {"win_rate": round(raw, 3), "discrete_win_rate": round(discrete, 3), "lc_win_rate": round(lc, 3),
            "length_coef": round(length_coef, 4), "bias": round(bias, 4) if np.isfinite(bias) else bias,
            "n": int(p.size), "avg_length": round(float(np.mean(len_model)), 1),
            "baseline_avg_length": round(float(np.mean(len_baseline)), 1)}


_BATTLES = {">>": (3.0, 0.0), ">": (1.0, 0.0), "=": (0.5, 0.5), "<": (0.0, 1.0), "<<": (0.0, 3.0)}


def model_outcome(verdict: str | None, model_is: str) -> str | None:
    """A pairwise verdict from the model's side: '>>', '>', '=', '<', '<<' (None when unparsed)."""
    if verdict is None:
        return None
    if verdict == "A=B":
        return "="
    strength = ">>" if ">>" in verdict else ">"
    return strength if verdict[0] == model_is else strength.replace(">", "<")


def _score(outcomes: list[list[str]]) -> float:
    won = total = 0.0
    for games in outcomes:
        for o in games:
            win, loss = _BATTLES[o]
            won += win
            total += win + loss
    return 100 * won / total if total else float("nan")


def arena_score(outcomes: Sequence[Sequence[str | None]], rounds: int = 100, seed: int = 0) -> dict[str, Any]:
    """Weighted win rate (%) against the baseline with a bootstrap 95% interval; ``outcomes``: per question, per game."""
    kept = [[o for o in games if o is not None] for games in outcomes]
    kept = [g for g in kept if g]
    if not kept:
        raise ValueError("no judged games")
    score = _score(kept)
    rng = np.random.default_rng(seed)
    boot = [_score([kept[i] for i in rng.integers(0, len(kept), len(kept))]) for _ in range(rounds)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    counts = {k: sum(o == k for g in kept for o in g) for k in _BATTLES}
    return {"score": round(score, 3), "ci95": [round(float(lo), 3), round(float(hi), 3)], "questions": len(kept),
            "games": sum(len(g) for g in kept), "outcomes": counts, "bootstrap_rounds": rounds}
