"""Reasoning formats: how a reasoning model's trace is marked in its output, and how to split it from the answer.

A reasoning model writes its trace before its answer, and each family marks it its own way:

* ``think``: ``<think> ... </think>`` (Qwen3, Qwen3.5, QwQ, DeepSeek-R1 and V3.1/V3.2, SmolLM3, MiniMax-M2,
  Nemotron, StepFun), or ``[THINK] ... [/THINK]`` (Mistral's reasoning models);
* ``harmony``: gpt-oss's channels, ``<|channel|>analysis<|message|> ... <|end|>`` then
  ``<|start|>assistant<|channel|>final<|message|> ...``;
* ``gemma4``: ``<|channel>thought ... <channel|>`` (gemma-4);
* ``none``: no trace.

The format is read off the chat template (``detect``) unless ``generator.reasoning.format`` names it. The generate
stage stores a trace in the assistant message's ``reasoning_content`` field (the name DeepSeek's API, vLLM's
reasoning parsers before 0.10 and the Qwen3 / gemma-4 / MiniMax templates use) and the answer alone in
``content``. A trace that never closed (the answer hit max_tokens inside it) gives ``closed=False``: the caller
drops that response as ``reasoning_not_closed`` rather than pass a trace off as an answer.

The markers a format writes *inside* an assistant message (think tags, channel headers, ``<|message|>``,
harmony's ``<|end|>`` between its channels) are never response stops (``internal_markers``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_TAGS = (("<think>", "</think>"), ("[THINK]", "[/THINK]"))
HARMONY_INTERNAL = ("<|channel|>", "<|message|>", "<|end|>", "<|start|>", "<|constrain|>")
GEMMA4_OPEN, GEMMA4_CLOSE = "<|channel>thought", "<channel|>"
FORMATS = ("auto", "none", "think", "harmony", "gemma4")


@dataclass(frozen=True)
class Parsed:
    content: str
    reasoning: str | None  # None: the response had no trace
    closed: bool = True  # False: a trace was opened and never closed (cut at max_tokens)


def detect(template: str) -> str:
    """The reasoning format a chat template writes, from the markers in its text."""
    if "<|channel|>" in template and "<|message|>" in template:
        return "harmony"
    if GEMMA4_OPEN in template:
        return "gemma4"
    if any(open_ in template for open_, _ in THINK_TAGS):
        return "think"
    return "none"


def internal_markers(fmt: str) -> tuple[str, ...]:
    if fmt == "think":
        return tuple(t for pair in THINK_TAGS for t in pair)
    if fmt == "harmony":
        return HARMONY_INTERNAL
    if fmt == "gemma4":
        return GEMMA4_OPEN, GEMMA4_CLOSE, "<|channel>"
    return ()


def _open_block(prompt_tail: str, open_: str, close: str) -> bool:
    """Whether the prompt ends inside an opened, unclosed block (the template opened the trace for the model)."""
    at = prompt_tail.rfind(open_)
    return at >= 0 and close not in prompt_tail[at:]


def parse(fmt: str, text: str, prompt_tail: str = "") -> Parsed:
    """Split one assistant response into trace and answer. ``prompt_tail`` is the end of the prompt the response
    continues: templates that open the trace themselves (``<think>\\n``) make the response start inside it."""
    if fmt == "think":
        return _parse_tags(text, prompt_tail)
    if fmt == "harmony":
        return _parse_harmony(text)
    if fmt == "gemma4":
        return _parse_pair(text, prompt_tail, GEMMA4_OPEN, GEMMA4_CLOSE)
    return Parsed(text.strip(), None)


def _parse_tags(text: str, prompt_tail: str) -> Parsed:
    for open_, close in THINK_TAGS:
        if open_ in text or close in text or _open_block(prompt_tail, open_, close):
            return _parse_pair(text, prompt_tail, open_, close)
    return Parsed(text.strip(), None)


def _parse_pair(text: str, prompt_tail: str, open_: str, close: str) -> Parsed:
    inside = _open_block(prompt_tail, open_, close)
    head, sep, rest = text.partition(open_) if not inside else ("", open_, text)
    if not sep:  # no trace opened: a closed empty block in the prompt, or a model that skipped it
        return Parsed(text.strip(), None)
    trace, closed, answer = rest.partition(close)
    if not closed:
        return Parsed("", trace.strip(), closed=False)
    return Parsed((head + answer).strip(), trace.strip())


# one harmony message: its channel name, any header (a recipient, <|constrain|>json), then its body
_HARMONY_MESSAGE = re.compile(r"<\|channel\|>\s*(\w+)(?:(?!<\|message\|>).)*<\|message\|>"
                              r"(.*?)(?=<\|end\|>|<\|start\|>|<\|return\|>|<\|call\|>|$)", re.S)


def _parse_harmony(text: str) -> Parsed:
    """gpt-oss: ``analysis`` (and ``commentary``) messages are the trace, the ``final`` message the answer."""
    messages = _HARMONY_MESSAGE.findall(text)
    if not messages:
        return Parsed(text.strip(), None)
    trace = "\n\n".join(body.strip() for channel, body in messages if channel != "final").strip() or None
    finals = [body.strip() for channel, body in messages if channel == "final"]
    if not finals:
        return Parsed("", trace or "", closed=False)
    return Parsed(finals[-1], trace)


def has_markers(fmt: str, text: str) -> bool:
    """Whether ``text`` (a user instruction) carries any of the format's markers: not plain user text."""
    return any(marker in text for marker in internal_markers(fmt))
