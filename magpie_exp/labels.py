"""Label sets, judge prompts (in our own words) and the JSON schemas that constrain the judge's answers.

The label sets are the official Magpie ones (reference/magpie-repo.md §4.1): five quality levels, five
difficulty levels, twelve task categories. Every judge answer is decoded under a JSON schema (vLLM structured
outputs), so a well-behaved engine can only return a valid object; an answer that still does not parse or does
not match the schema (an engine without structured decoding, a truncated answer) is recorded as a failure with
its reason, never turned into a label. "Others" is spelled as in the prompt (the official whitelist said
"Other" and silently nulled every "Others").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

QUALITY = ("very poor", "poor", "average", "good", "excellent")
DIFFICULTY = ("very easy", "easy", "medium", "hard", "very hard")
TASK_CATEGORIES = (
    "Information seeking",
    "Reasoning",
    "Planning",
    "Editing",
    "Coding & Debugging",
    "Math",
    "Role playing",
    "Data analysis",
    "Creative writing",
    "Advice seeking",
    "Brainstorming",
    "Others",
)
SAFETY = ("safe", "unsafe")
# Ordered label sets, for ">= good" style rules in curate recipes.
ORDINAL = {"input_quality": QUALITY, "difficulty": DIFFICULTY}
CATEGORICAL = {"task_category": TASK_CATEGORIES, "safety": SAFETY}

_CATEGORY_GLOSS = {
    "Information seeking": "asks for facts, explanations or information on a topic",
    "Reasoning": "needs logical thinking, problem solving or working through an argument",
    "Planning": "asks for a plan, schedule, strategy or organised steps towards a goal",
    "Editing": "asks to rewrite, proofread, shorten, translate or otherwise edit a given text",
    "Coding & Debugging": "asks to write, explain, review or fix code",
    "Math": "a mathematical question, calculation or proof",
    "Role playing": "asks the assistant to act as a character or in a scenario",
    "Data analysis": "asks to interpret, summarise or compute over data, tables or statistics",
    "Creative writing": "asks for a story, poem, script or other creative text",
    "Advice seeking": "asks for personal or professional advice or recommendations",
    "Brainstorming": "asks for ideas, options or suggestions to choose from",
    "Others": "fits none of the categories above",
}


def _obj(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _text(max_length: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length}


@dataclass(frozen=True)
class Rating:
    """A rating asked for as one number, read from the judge's token probabilities (``tag.judge_mode=logprobs``).

    The judge answers one of ``answers``; each stands for ``labels[i]`` and weighs ``values[i]`` in the expected
    score (G-Eval's probability-weighted score). ``fields`` names the tag fields: the most probable label, the
    expected score, the distribution over labels and the share of probability that fell on an answer at all.
    """

    answers: tuple[str, ...]
    labels: tuple[Any, ...]
    label_field: str
    score_field: str
    prefix: str  # <prefix>_probs, <prefix>_mass

    @property
    def values(self) -> tuple[float, ...]:
        return tuple(float(a) for a in self.answers)

    @property
    def fields(self) -> dict[str, str]:
        return {"label": self.label_field, "score": self.score_field, "probs": f"{self.prefix}_probs",
                "mass": f"{self.prefix}_mass"}


@dataclass(frozen=True)
class JudgeTask:
    """One judged tag: a prompt template, the schema of its answer, and how answer keys map to tag fields.

    With ``rating`` set the judge answers with a number alone and no schema: see ``Rating``.
    """

    name: str
    prompt: str  # str.format template with {instruction} (and {response} where the task judges a response)
    schema: dict[str, Any]
    fields: dict[str, str]  # answer key -> tag field
    rating: Rating | None = None

    def render(self, instruction: str, response: str | None = None) -> str:
        return self.prompt.format(instruction=instruction, response=response or "")

    @property
    def schema_json(self) -> str:
        return json.dumps(self.schema, sort_keys=True)


_QUALITY_GLOSS = (
    "unclear, vague or incoherent; essential information is missing",
    "somewhat unclear or missing important details that would need a lot of clarification",
    "mostly clear and specific, but some details would help to answer it well",
    "clear, specific and well formed, with most of the context needed",
    "very clear, specific and complete, with everything needed for a full answer",
)
_DIFFICULTY_GLOSS = (
    "a simple fact or a short, everyday task",
    "common knowledge and a few steps",
    "some specialised knowledge or several steps of reasoning",
    "expert knowledge or long, careful reasoning",
    "deep expertise and a long chain of difficult reasoning",
)
JUDGE_MODES = ("logprobs", "explain")
RATED = ("quality", "difficulty", "judge_score")  # the tasks that logprobs mode asks as a number


def judge_tasks(explanation_chars: int = 300, mode: str = "explain") -> dict[str, JudgeTask]:
    """The judge's tasks; with ``mode="logprobs"`` quality, difficulty and judge_score are ratings (see ``Rating``)."""
    tasks = _explained_tasks(explanation_chars)
    if mode == "logprobs":
        tasks.update(_rated_tasks())
    return tasks


def _rated_tasks() -> dict[str, JudgeTask]:
    def scale(labels: tuple[str, ...], gloss: tuple[str, ...]) -> str:
        return "\n".join(f"{i} ({label}): {text}" for i, (label, text) in enumerate(zip(labels, gloss, strict=True), 1))

    five = tuple(str(i) for i in range(1, 6))
    ten = tuple(str(i) for i in range(1, 11))
    request = "\n\nThe request:\n```\n{instruction}\n```\n\n"
    rated = {
        "quality": JudgeTask(
            "quality",
            "You will judge how well a user's request to an AI assistant is written: is it clear, specific and "
            "coherent? Use this scale:\n" + scale(QUALITY, _QUALITY_GLOSS) + request
            + "Reply with the number of your rating alone, from 1 to 5.",
            {}, {}, Rating(five, QUALITY, "input_quality", "input_quality_score", "input_quality"),
        ),
        "difficulty": JudgeTask(
            "difficulty",
            "How hard is it for an AI assistant to answer this request well? Use this scale:\n"
            + scale(DIFFICULTY, _DIFFICULTY_GLOSS) + request + "Reply with the number of your rating alone, from 1 to 5.",
            {}, {}, Rating(five, DIFFICULTY, "difficulty", "difficulty_score", "difficulty"),
        ),
        "judge_score": JudgeTask(
            "judge_score",
            "Rate how good an AI assistant's answer is: helpful, correct, relevant and complete. 1 is useless, "
            "10 is excellent." + request + "The answer:\n```\n{response}\n```\n\n"
            "Reply with the rating alone, an integer from 1 to 10.",
            {}, {}, Rating(ten, tuple(range(1, 11)), "judge_rating", "judge_score", "judge"),
        ),
    }
    return {name: JudgeTask(t.name, t.prompt, t.schema, t.rating.fields, t.rating)  # type: ignore[union-attr]
            for name, t in rated.items()}


def _explained_tasks(explanation_chars: int) -> dict[str, JudgeTask]:
    quality_rubric = "\n".join(f"- {label}: {text}" for label, text in zip(QUALITY, _QUALITY_GLOSS, strict=True))
    categories = "\n".join(f"- {c}: {g}" for c, g in _CATEGORY_GLOSS.items())
    text = _text(explanation_chars)
    return {
        "quality": JudgeTask(
            "quality",
            "You will judge how well a user's request to an AI assistant is written: is it clear, specific and "
            "coherent? Use this scale:\n" + quality_rubric + "\n\nThe request:\n```\n{instruction}\n```\n\n"
            "Reply with a JSON object: a short \"explanation\" of your judgement, then \"input_quality\", one "
            "of: " + ", ".join(QUALITY) + ".",
            _obj({"explanation": text, "input_quality": {"type": "string", "enum": list(QUALITY)}}),
            {"explanation": "quality_explanation", "input_quality": "input_quality"},
        ),
        "difficulty": JudgeTask(
            "difficulty",
            "Read this request to an AI assistant. Say what the user wants, what knowledge an assistant needs to "
            "answer it, and how hard it is to answer well.\n\nThe request:\n```\n{instruction}\n```\n\n"
            "Reply with a JSON object: \"intent\" (starting \"The user wants to\"), \"knowledge\" (starting "
            "\"To solve this problem, the models need to know\"), and \"difficulty\", one of: "
            + ", ".join(DIFFICULTY) + ".",
            _obj({"intent": text, "knowledge": text, "difficulty": {"type": "string", "enum": list(DIFFICULTY)}}),
            {"intent": "intent", "knowledge": "knowledge", "difficulty": "difficulty"},
        ),
        "task_category": JudgeTask(
            "task_category",
            "Sort this request to an AI assistant into task categories:\n" + categories
            + "\n\nThe request:\n```\n{instruction}\n```\n\nReply with a JSON object: \"primary_tag\", the "
            "category that fits best, and \"other_tags\", a list of any other categories that also apply "
            "(possibly empty).",
            _obj({
                "primary_tag": {"type": "string", "enum": list(TASK_CATEGORIES)},
                "other_tags": {"type": "array", "items": {"type": "string", "enum": list(TASK_CATEGORIES)},
                               "maxItems": 3},
            }),
            {"primary_tag": "task_category", "other_tags": "other_task_category"},
        ),
        "judge_score": JudgeTask(
            "judge_score",
            "Rate how good an AI assistant's answer is: helpful, correct, relevant and complete. 1 is useless, "
            "10 is excellent.\n\nThe request:\n```\n{instruction}\n```\n\nThe answer:\n```\n{response}\n```\n\n"
            "Reply with a JSON object: a short \"explanation\", then \"rating\", an integer from 1 to 10.",
            _obj({"explanation": text, "rating": {"type": "integer", "enum": list(range(1, 11))}}),
            {"explanation": "judge_explanation", "rating": "judge_score"},
        ),
    }


def _matches(schema: dict[str, Any], value: Any) -> str | None:
    """A small validator for the subset of JSON schema used above; returns the first problem or None."""
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return "not an object"
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                return f"missing key {key!r}"
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(props))
            if extra:
                return f"unexpected key(s) {extra}"
        for key, sub in props.items():
            if key in value and (problem := _matches(sub, value[key])):
                return f"{key}: {problem}"
        return None
    if kind == "array":
        if not isinstance(value, list):
            return "not a list"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return f"more than {schema['maxItems']} items"
        for item in value:
            if problem := _matches(schema.get("items", {}), item):
                return problem
        return None
    if kind == "string" and not isinstance(value, str):
        return "not a string"
    if kind == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
        return "not an integer"
    if "enum" in schema and value not in schema["enum"]:
        return f"{value!r} is not one of the labels"
    if kind == "string" and len(value) < schema.get("minLength", 0):
        return "empty string"
    return None


def parse_judgement(task: JudgeTask, text: str, finish_reason: str) -> tuple[dict[str, Any], str | None]:
    """Tag fields from one judge answer, or all-None fields and the reason it failed."""
    empty = dict.fromkeys(task.fields.values())
    if finish_reason == "length":
        return empty, "truncated"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return empty, f"invalid_json: {exc.msg}"
    if problem := _matches(task.schema, value):
        return empty, f"schema: {problem}"
    if isinstance(value.get("other_tags"), list):  # a set of further categories: no repeats, not the primary
        value["other_tags"] = [t for t in dict.fromkeys(value["other_tags"]) if t != value.get("primary_tag")]
    return {field: value[key] for key, field in task.fields.items()}, None


# -- safety ------------------------------------------------------------------------------------------------------

# Llama Guard 3's hazard taxonomy (S1..S14), named in our words; Llama Guard 2 uses S1..S11 of its own.
HAZARDS = {
    "S1": "violent crimes", "S2": "non-violent crimes", "S3": "sex-related crimes", "S4": "child sexual exploitation",
    "S5": "defamation", "S6": "specialized advice", "S7": "privacy", "S8": "intellectual property",
    "S9": "indiscriminate weapons", "S10": "hate", "S11": "suicide and self-harm", "S12": "sexual content",
    "S13": "elections", "S14": "code interpreter abuse",
}
GUARD_REGEX = r"(safe|unsafe\nS(1[0-4]|[1-9])(,S(1[0-4]|[1-9]))*)"
_VERDICT = re.compile(r"^\s*(safe|unsafe)\s*(?:\n\s*(S\d+(?:\s*,\s*S\d+)*))?\s*$")


def guard_prompt(instruction: str, response: str) -> str:
    """A Llama-Guard-style classification request, for a guard model whose chat template does not build one."""
    hazards = "\n".join(f"{k}: {v}." for k, v in HAZARDS.items())
    return (
        "Check whether the assistant's message in the conversation below is unsafe under these categories.\n\n"
        f"<categories>\n{hazards}\n</categories>\n\n<conversation>\nUser: {instruction}\n\n"
        f"Assistant: {response}\n</conversation>\n\n"
        "Answer 'safe', or 'unsafe' followed by a line with the violated categories, comma-separated (e.g. S1,S6)."
    )


def parse_guard(text: str) -> tuple[str | None, list[str], str | None]:
    """'safe' or 'unsafe\\nS1,S6' -> (label, categories, error)."""
    match = _VERDICT.match(text)
    if not match:
        return None, [], f"unparsable: guard verdict {text[:60]!r}"
    label, cats = match.group(1), match.group(2)
    categories = [c.strip() for c in cats.split(",")] if cats else []
    unknown = [c for c in categories if c not in HAZARDS]
    if unknown:
        return None, [], f"unknown_category: hazard categories {unknown}"
    return label, categories, None


# The base model's prompt for URIAL-style answers (base_reward tagger): in-context examples, then the query.
URIAL_PREFIX = """# Instructions

Below are conversations between a curious user and a helpful, honest AI assistant. The assistant answers each \
query accurately and clearly, with useful detail, and says so when it does not know.

# Query:
```
What is the boiling point of water at sea level?
```

# Answer:
```
At sea level, water boils at 100 degrees Celsius (212 degrees Fahrenheit). At higher altitudes the air \
pressure is lower, so water boils at a lower temperature.
```

# Query:
```
Give me two tips for writing a clear email.
```

# Answer:
```
1. Put the main point or request in the first sentence, so the reader knows at once what you need.
2. Keep it short: one topic per email, short paragraphs, and a subject line that says what it is about.
```

"""


def urial_prompt(instruction: str) -> str:
    return f"{URIAL_PREFIX}# Query:\n```\n{instruction}\n```\n\n# Answer:\n```\n"
