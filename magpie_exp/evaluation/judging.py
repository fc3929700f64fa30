"""LLM judges: prompts, verdict parsing, and a re-ask for replies without a verdict.

Two kinds of judgement:

- ``rating``: MT-Bench single-answer grading, 1-10, with FastChat's judge prompts (``single-v1``,
  ``single-math-v1`` with a reference answer, and their multi-turn variants). Verdict ``[[8]]`` (or ``[8]``).
- ``pairwise``: two answers to one prompt, verdict ``[[A>>B]]`` / ``[[A>B]]`` / ``[[A=B]]`` / ``[[B>A]]`` /
  ``[[B>>A]]`` (Arena-Hard's scale). Used for Arena-Hard-style and AlpacaEval-style scoring, each item judged in
  both answer orders. The prompt is ours (``PAIRWISE_VERSION``); its structure follows Arena-Hard's judge.

A reply with no verdict, or with two different verdicts, is never given a score. If ``evaluation.reask`` is on
it is asked once more, with its own reply in the conversation, for the verdict alone; engines that can
constrain decoding (vLLM in process or over ``/v1/completions``) decode that answer under the verdict's regex.
Whatever still fails is counted by reason and kept with its reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from magpie_exp.engines import SamplingSpec

RATING_PATTERNS = (re.compile(r"\[\[(\d+\.?\d*)\]\]"), re.compile(r"\[(\d+\.?\d*)\]"))
PAIR_PATTERNS = (re.compile(r"\[\[([AB<>=]+)\]\]"), re.compile(r"\[([AB<>=]+)\]"))
_CANONICAL = {"A>>B": "A>>B", "B<<A": "A>>B", "A>B": "A>B", "B<A": "A>B", "A=B": "A=B", "B=A": "A=B",
              "B>A": "B>A", "A<B": "B>A", "B>>A": "B>>A", "A<<B": "B>>A"}
VERDICTS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")

PAIRWISE_VERSION = "magpie-exp-pairwise-v1"
PAIRWISE_SYSTEM = (
    "You are an impartial judge. You will see a user prompt and the answers of two AI assistants, A and B. "
    "First write a brief answer of your own. Then compare both answers with yours: note mistakes and missing "
    "information, and whether each answer is helpful, relevant and concise. The order in which the answers are "
    "shown, their length and the assistants' names must not sway you. End with exactly one verdict label: "
    "[[A>>B]] if A is much better, [[A>B]] if A is slightly better, [[A=B]] for a tie, [[B>A]] if B is slightly "
    "better, [[B>>A]] if B is much better. For example: \"My final verdict is: [[A=B]]\"."
)
PAIRWISE_TEMPLATE = (
    "<|User Prompt|>\n{question}\n\n<|The Start of Assistant A's Answer|>\n{answer_a}\n<|The End of Assistant A's "
    "Answer|>\n\n<|The Start of Assistant B's Answer|>\n{answer_b}\n<|The End of Assistant B's Answer|>"
)
REASK = {
    "rating": ("Give only your final rating of the assistant's answer now, strictly in the format "
               "\"Rating: [[rating]]\" with a whole number from 1 to 10.", r"Rating: \[\[(10|[1-9])\]\]"),
    "pairwise": ("Give only your final verdict now, strictly as one of [[A>>B]], [[A>B]], [[A=B]], [[B>A]], "
                 "[[B>>A]], in the format \"My final verdict is: [[label]]\".",
                 r"My final verdict is: \[\[(A>>B|A>B|A=B|B>A|B>>A)\]\]"),
}
REASK_HISTORY_CHARS = 1500  # the judge's first reply is kept (its end) in the re-ask conversation


def parse_rating(text: str) -> float | None:
    """FastChat's rule: the first ``[[x]]`` (else the first ``[x]``); a rating outside 1-10 is no rating."""
    for pattern in RATING_PATTERNS:
        match = pattern.search(text)
        if match:
            try:
                value = float(match.group(1))
            except ValueError:
                return None
            return value if 1 <= value <= 10 else None
    return None


def parse_verdict(text: str) -> str | None:
    """Arena-Hard's rule: the distinct bracketed labels must agree (``[[..]]`` first, then ``[..]``)."""
    for pattern in PAIR_PATTERNS:
        found = {m for m in pattern.findall(text.replace("\\", "")) if m}
        if not found:
            continue
        labels = {_CANONICAL.get(m) for m in found}
        if len(labels) == 1 and None not in labels:
            return labels.pop()
        return None  # conflicting or malformed labels: not a verdict
    return None


def parse(kind: str, text: str) -> Any:
    return parse_rating(text) if kind == "rating" else parse_verdict(text)


@dataclass
class Judgement:
    verdict: Any  # float rating, verdict label, or None
    reply: str
    reasked: bool = False
    error: str | None = None  # why there is no verdict

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reply": self.reply, "reasked": self.reasked, "error": self.error}


class Judge:
    """Runs judge prompts through a ``ChatModel`` (any engine) and parses the verdicts, re-asking once."""

    def __init__(self, chat: Any, max_tokens: int, reask: bool, seed: int) -> None:
        self.chat, self.max_tokens, self.reask, self.seed = chat, max_tokens, reask, seed
        self.counts: dict[str, int] = {}

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def run(self, kind: str, conversations: list[list[dict[str, str]]]) -> list[Judgement]:
        # greedy, with the judge config's repetition penalty (small judges loop without one)
        spec = SamplingSpec(temperature=0.0, max_tokens=self.max_tokens, seed=self.seed,
                            repetition_penalty=self.chat.gen.response.repetition_penalty)
        results: list[Judgement | None] = [None] * len(conversations)
        requests, where = [], []
        for i, messages in enumerate(conversations):
            request = self.chat.chat_request(messages, spec)
            if request is None:
                results[i] = Judgement(None, "", error="prompt longer than the judge's context")
                self._count("error:too_long")
            else:
                requests.append(request)
                where.append(i)
        for i, completion in zip(where, self.chat.generate(requests) if requests else [], strict=True):
            verdict = parse(kind, completion.text)
            error = None if verdict is not None else ("truncated, no verdict" if completion.finish_reason == "length"
                                                      else "no parsable verdict")
            results[i] = Judgement(verdict, completion.text, error=error)
            self._count("parsed" if error is None else f"unparsed:{error}")
        if self.reask:
            self._reask(kind, conversations, results)
        for r in results:
            if r is not None and r.error is not None:
                self._count(f"error:{r.error}")
        return [r for r in results if r is not None]

    def _reask(self, kind: str, conversations: list[list[dict[str, str]]], results: list[Judgement | None]) -> None:
        text, regex = REASK[kind]
        spec = SamplingSpec(temperature=0.0, max_tokens=24, seed=self.seed, regex=regex if self.chat.constrains else None)
        requests, where = [], []
        for i, result in enumerate(results):
            if result is None or result.verdict is not None or result.error == "prompt longer than the judge's context":
                continue
            history = result.reply[-REASK_HISTORY_CHARS:] or "(no answer)"
            messages = [*conversations[i], {"role": "assistant", "content": history}, {"role": "user", "content": text}]
            request = self.chat.chat_request(messages, spec)
            if request is not None:
                requests.append(request)
                where.append(i)
        if not requests:
            return
        for i, completion in zip(where, self.chat.generate(requests), strict=True):
            result = results[i]
            verdict = parse(kind, completion.text)
            self._count("reasked")
            if verdict is not None:
                result.verdict, result.error = verdict, None
                self._count("parsed_on_reask")
            result.reasked = True
            result.reply = f"{result.reply}\n\n[re-asked for the verdict]\n{completion.text}"


def pairwise_messages(question: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": PAIRWISE_SYSTEM},
            {"role": "user", "content": PAIRWISE_TEMPLATE.format(question=question, answer_a=answer_a, answer_b=answer_b)}]


def model_preference(verdict: str | None, model_is: str) -> float | None:
    """P(model better) from one game's verdict: 1 for a win (either strength), 0.5 for a tie, 0 for a loss."""
    if verdict is None:
        return None
    if verdict == "A=B":
        return 0.5
    winner = verdict[0]
    return 1.0 if winner == model_is else 0.0


def mt_bench_messages(prompts: dict[str, dict[str, Any]], item: dict[str, Any], answers: list[str],
                      turn: int) -> tuple[str, list[dict[str, str]]]:
    """FastChat's single-answer grading prompt for ``turn`` (1 or 2) of an MT-Bench item: (prompt name, messages)."""
    ref = item.get("reference")
    name = ("single-math-v1" if ref else "single-v1") + ("-multi-turn" if turn == 2 else "")
    prompt = prompts[name]
    q = item["turns"]
    if turn == 1:
        fields = {"question": q[0], "answer": answers[0]}
        if ref:
            fields["ref_answer_1"] = ref[0]
    else:
        fields = {"question_1": q[0], "question_2": q[1], "answer_1": answers[0], "answer_2": answers[1]}
        if ref:
            fields.update(ref_answer_1=ref[0], ref_answer_2=ref[1])
    return name, [{"role": "system", "content": prompt["system_prompt"]},
                  {"role": "user", "content": prompt["prompt_template"].format(**fields)}]
