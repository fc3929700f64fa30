"""Ratings from one forward pass: the judge's probability of each answer, instead of a sampled explanation.

G-Eval style (and AlpacaEval's weighted annotators): the judge is asked for a number alone, and the engine
returns the top-k log-probabilities of its first token. The probability of each answer ("1" .. "10") is read off
them, normalised over the answers, and gives the most probable label, the expected score and the distribution.

Answers of several tokens ("10" is "1" + "0" for SmolLM2, Gemma and Qwen) are walked as a tree of token
prefixes: the root is asked for every record, a deeper prefix ("1") only where it holds at least ``EXPAND`` of
the probability, so a 1-10 rating costs one request per record plus one where "1" is likely. P("1") is then
P("1") x (1 - P("0" after "1")), P("10") is P("1") x P("0" after "1"). A token outside the top k counts as 0.
Below ``EXPAND`` the deeper prefix is not asked and its whole probability stays with the shorter answer.

What can go wrong is said on the record: no log-probabilities from the engine, or no answer among the top k
(``off_label``), or less than ``min_mass`` of the probability on the answers at all (``off_label`` too).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from magpie_exp.engines import Completion, Request, SamplingSpec
from magpie_exp.labels import Rating

EXPAND = 1e-3  # ask a deeper prefix only where it holds at least this much probability
Prefix = tuple[int, ...]


def answer_ids(rating: Rating, encode: Callable[[str], list[int]]) -> list[Prefix]:
    """Each answer's token ids (as the judge would write it at the start of its turn); distinct, non-empty."""
    seqs = [tuple(encode(a)) for a in rating.answers]
    if any(not s for s in seqs) or len(set(seqs)) != len(seqs):
        raise ValueError(f"the judge's tokenizer does not give distinct token ids to the answers {rating.answers}")
    return seqs


def rate(rating: Rating, prompts: Sequence[list[int]], seqs: Sequence[Prefix],
         generate: Callable[[list[Request]], list[Completion]], top_k: int, seed: int,
         min_mass: float = 0.0) -> list[tuple[dict[str, Any], str | None]]:
    """One (fields, error) per prompt: ``rating.fields`` filled from the judge's token probabilities."""
    spec = SamplingSpec(temperature=0.0, max_tokens=1, logprobs=top_k, seed=seed)
    nodes = {s[:i] for s in seqs for i in range(len(s))}  # the prefixes to ask about (the root included)
    # per record: prefix -> {token id: probability} of the next token, for the prefixes asked
    asked: list[dict[Prefix, dict[int, float]]] = [{} for _ in prompts]
    reach: list[dict[Prefix, float]] = [{(): 1.0} for _ in prompts]
    failed: list[str | None] = [None] * len(prompts)
    for depth in range(max(len(s) for s in seqs)):
        level = sorted(n for n in nodes if len(n) == depth)
        todo = [(r, n) for r in range(len(prompts)) for n in level
                if failed[r] is None and reach[r].get(n, 0.0) >= (EXPAND if depth else 0.0)]
        if not todo:
            break
        outs = generate([Request([*prompts[r], *n], spec) for r, n in todo])
        for (r, node), out in zip(todo, outs, strict=True):
            if not out.top_logprobs:
                failed[r] = "no_logprobs: the judge's engine returned no log-probabilities"
                continue
            nxt = {t: math.exp(lp) for t, lp in out.top_logprobs[0].items()}
            asked[r][node] = nxt
            for token, p in nxt.items():
                if node + (token,) in nodes:
                    reach[r][node + (token,)] = reach[r][node] * p
    return [(_empty(rating), failed[r]) if failed[r] else _fields(rating, seqs, asked[r], min_mass)
            for r in range(len(prompts))]


def _empty(rating: Rating) -> dict[str, Any]:
    return dict.fromkeys(rating.fields.values())


def _fields(rating: Rating, seqs: Sequence[Prefix], asked: dict[Prefix, dict[int, float]],
            min_mass: float) -> tuple[dict[str, Any], str | None]:
    probs = []
    for seq in seqs:
        p = 1.0
        for i, token in enumerate(seq):
            step = asked.get(seq[:i])
            p *= 0.0 if step is None else step.get(token, 0.0)
        if seq in asked:  # a prefix of a longer answer: the answer ends here unless a longer one goes on
            p *= max(0.0, 1.0 - sum(q for t, q in asked[seq].items() if _continues(seq + (t,), seqs)))
        probs.append(p)
    mass = sum(probs)
    shown = ", ".join(rating.answers)
    if mass <= 0.0 or mass < min_mass:
        return _empty(rating), (f"off_label: {mass:.3f} of the judge's probability on the answers {shown} "
                                f"(tag.judge_min_mass={min_mass})")
    norm = [p / mass for p in probs]
    best = max(range(len(norm)), key=lambda i: (norm[i], -i))  # the first of equals
    names = rating.fields
    return {names["label"]: rating.labels[best],
            names["score"]: round(sum(p * v for p, v in zip(norm, rating.values, strict=True)), 4),
            names["probs"]: {str(label): round(p, 4) for label, p in zip(rating.labels, norm, strict=True)},
            names["mass"]: round(mass, 4)}, None


def _continues(prefix: Prefix, seqs: Sequence[Prefix]) -> bool:
    return any(len(s) >= len(prefix) and s[:len(prefix)] == prefix for s in seqs)
