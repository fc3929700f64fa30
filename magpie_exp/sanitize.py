"""Instruction sanitizer: the official Magpie clean-up rules, with the official bugs fixed.

The official ``str_utils.instruction_post_process`` (reference/magpie-repo.md section 3) cuts a sampled
instruction down to the user's request: it strips enumerators and labels ("Question 3:", "**Task**"), cuts at
leaked answers ("The answer is ...") and keeps up to the first question mark or line. It records which rule
fired. Bugs fixed here, each covered by a test in ``tests/test_sanitize.py``:

* its marker regex appended ``s?:`` to markers that already end in ':' so "Answer:", "Explanation:" and
  "Solution:" only matched "Answer::"; here every marker matches as written;
* its ``<b>`` branch computed a result and threw it away; here the bold tags are removed;
* a marker at position 0 cut the whole instruction to nothing; here only a marker after some text cuts.

The sanitizer never drops a record itself: an instruction that ends up empty is dropped by the generate stage
with the reason ``empty_after_sanitize``. Run by ``magpie_exp.stages.generate`` when ``generator.sanitize`` is set.
"""

from __future__ import annotations

import re

FAMILIES = ("llama3", "gemma2")

_LABELS = [
    "Original Prompt", "The Problem", "The scenario", "The senario", "The situation", "Instructions",
    "Instruction", "Descriptions", "Description", "Task", "Prompt", "Question", "Problem", "Scenario",
    "Situation", "Context", "Challenge", "Query", "Request",
]  # fmt: skip
_LABEL_ALT = "|".join(re.escape(label) for label in _LABELS)
_ENUMERATOR = re.compile(r"^\s*(?:\d+|[a-zA-Z])[.)]\s+")
_LABEL = re.compile(
    rf"^\s*(?:"
    rf"(?:{_LABEL_ALT})\s*:"  # Task:
    rf"|\*\*(?:{_LABEL_ALT})\s*:?\s*\*\*\s*:?"  # **Task** / **Task:** / **Task**:
    rf"|#+\s*(?:{_LABEL_ALT})\s*:?"  # ## Task:
    rf"|Question\s*\d+\s*[:.]"  # Question 3: / Question 3.
    rf"|Part\s*\d+\s*:"  # Part 2:
    rf"|Q\d+\s*[:.]"  # Q1. / Q1:
    rf")\s*",
    re.IGNORECASE,
)
# Markers that mean the model went on to answer its own question. Markers written with a colon need it;
# the others match as phrases (the official regex made the colon ones unreachable).
_ASSISTANT_MARKERS = [
    "Answer:", "Answers:", "Explanation:", "Solution Approach:", "Solution:",
    "The answer is", "Correct answer", "The correct answer", "Answer is", "Here are some",
]  # fmt: skip
_ASSISTANT = re.compile("|".join(re.escape(m) for m in _ASSISTANT_MARKERS), re.IGNORECASE)
_STEP = re.compile(r"#{1,3}\s*Step\s*1\b", re.IGNORECASE)


def remove_prefix(text: str) -> str:
    """Strip one leading enumerator and then one leading label."""
    text = _ENUMERATOR.sub("", text, count=1)
    return _LABEL.sub("", text, count=1).strip()


def _up_to_question(text: str) -> str:
    return text[: text.index("?") + 1]


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0]


def _cut_before(text: str, pattern: re.Pattern[str]) -> str | None:
    match = next((m for m in pattern.finditer(text) if m.start() > 0), None)
    return None if match is None else text[: match.start()]


def sanitize_instruction(raw: str, family: str) -> tuple[str, str]:
    """Return ``(clean_instruction, rule)`` for one sampled instruction; ``rule`` names the rule that fired.

    ``family`` is ``llama3`` or ``gemma2``: the official code has one cascade per family, differing in the
    step-marker rule (Llama only) and in the rule numbers.
    """
    if family not in FAMILIES:
        raise ValueError(f"generator.sanitize must be one of {', '.join(FAMILIES)} or null; got {family!r}")
    llama = family == "llama3"
    text = remove_prefix(raw.strip())
    if text.startswith("*") and "?" in text:
        text, rule = _up_to_question(text).replace("*", "").strip(), "1"
    elif text.startswith('"'):
        text, rule = (_up_to_question(text), "2.1") if "?" in text else (_first_line(text), "2.2")
    elif text.lower().startswith("<b>"):
        text, rule = re.sub(r"</?b>", "", text, flags=re.IGNORECASE).strip(), "3"
    elif (cut := _cut_before(text, _ASSISTANT)) is not None:
        text, rule = cut, "4"
    elif llama and (cut := _cut_before(text, _STEP)) is not None:
        text, rule = cut, "5"
    elif _first_line(text).endswith(":"):
        base = "6" if llama else "5"
        if "#" in text:
            text, rule = text[: text.index("#")], f"{base}.1"
        elif "?" in text:
            text, rule = _up_to_question(text), f"{base}.2"
        else:
            text, rule = _first_line(text), f"{base}.3"
    else:
        base = "99" if llama else "6"
        text, rule = (_up_to_question(text), f"{base}.1") if "?" in text else (_first_line(text), f"{base}.2")
    return remove_prefix(text), rule
