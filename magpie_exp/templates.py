"""Magpie templates derived from a model's own chat template.

Magpie feeds an aligned model only the part of its chat template that comes before a user message (the
*pre-query template*); the model then writes a user query by itself. Rather than keep a hand-written table
keyed by repository id (the official ``configs/model_configs.json``), we render a conversation around sentinel
messages with the model's own template and cut at the sentinels. The same trick gives

* ``post_query``: the text between the end of a user message and the start of the assistant reply,
* ``end_of_turn``: what the template writes after an assistant message,
* ``mt_append``: the text between an assistant message and the next user message (multi-turn follow-ups).

Per-family overrides (``generator.pre_query_template``) cover the cases where the official table deliberately
differs from the rendered template (Gemma-2's double newline, Llama-3.1 without its dated system preamble).

Used by ``magpie_exp.stages.generate``; tested over every file in ``shared/data/chat_templates`` by
``pytest tests/test_templates.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Sequence

Message = dict[str, str]
# (messages, add_generation_prompt) -> rendered text
Render = Callable[[list[Message], bool], str]

# Sentinels are single "words" so that templates which `trim` or `strip` message content keep them intact.
USER_SENTINEL = "MAGPIEUSERSENTINEL7f3a"
ASSISTANT_SENTINEL = "MAGPIEASSISTANTSENTINEL9c1e"
USER_SENTINEL_2 = "MAGPIEFOLLOWUPSENTINEL42d0"


class TemplateError(ValueError):
    """A chat template that cannot give Magpie templates; the message says which key to set instead."""


@dataclass(frozen=True)
class ChatTemplates:
    """The pieces of one model's chat template that Magpie needs (all plain text, special tokens included)."""

    pre_query: str
    post_query: str
    end_of_turn: str | None
    mt_append: str | None
    system_prompt: str | None
    pre_query_source: str  # "derived" or "override"


def _with_system(messages: list[Message], system_prompt: str | None) -> list[Message]:
    if system_prompt is None:
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def _render(render: Render, messages: list[Message], add_generation_prompt: bool, what: str) -> str:
    try:
        return render(messages, add_generation_prompt)
    except Exception as exc:  # jinja raise_exception, TemplateError, KeyError inside user templates
        raise TemplateError(f"the chat template fails to render {what}: {type(exc).__name__}: {exc}") from exc


def _cut_once(text: str, sentinel: str, what: str) -> tuple[str, str]:
    count = text.count(sentinel)
    if count != 1:
        problem = "drops or rewrites" if count == 0 else f"repeats ({count}x)"
        raise TemplateError(
            f"the chat template {problem} the {what}, so it cannot be cut at the user turn; "
            "set generator.pre_query_template by hand"
        )
    head, tail = text.split(sentinel)
    return head, tail


def derive_templates(
    render: Render,
    *,
    system_prompt: str | None = None,
    pre_query_override: str | None = None,
) -> ChatTemplates:
    """Derive Magpie templates by rendering sentinel conversations with ``render``.

    ``system_prompt`` (a control task) is placed as a system turn; ``None`` keeps the template's own default,
    which is what Qwen2.5 and SmolLM2 need (their templates inject a default system turn, and the bare user
    header gives mostly junk). ``pre_query_override`` replaces the derived pre-query text verbatim when no
    system prompt is in use.
    """
    what = "a user turn" if system_prompt is None else "a system turn followed by a user turn"
    full = _render(render, _with_system([{"role": "user", "content": USER_SENTINEL}], system_prompt), True, what)
    pre_query, post_query = _cut_once(full, USER_SENTINEL, "user message")
    if not post_query:
        raise TemplateError(
            "the chat template writes nothing after the user message (no assistant header with "
            "add_generation_prompt=True); set generator.chat_template to a template with a generation prompt"
        )
    if system_prompt is not None and system_prompt not in pre_query:
        raise TemplateError(
            "the chat template does not place the system prompt before the user message; "
            "this model cannot take control tasks through generate.system_prompts"
        )

    end_of_turn: str | None
    mt_append: str | None
    try:
        two = _render(
            render,
            _with_system(
                [{"role": "user", "content": USER_SENTINEL}, {"role": "assistant", "content": ASSISTANT_SENTINEL}],
                system_prompt,
            ),
            False,
            "a finished exchange",
        )
        end_of_turn = _cut_once(two, ASSISTANT_SENTINEL, "assistant message")[1]
    except TemplateError:
        end_of_turn = None
    try:
        three = _render(
            render,
            _with_system(
                [
                    {"role": "user", "content": USER_SENTINEL},
                    {"role": "assistant", "content": ASSISTANT_SENTINEL},
                    {"role": "user", "content": USER_SENTINEL_2},
                ],
                system_prompt,
            ),
            True,
            "a follow-up turn",
        )
        after_assistant = _cut_once(three, ASSISTANT_SENTINEL, "assistant message")[1]
        mt_append = _cut_once(after_assistant, USER_SENTINEL_2, "follow-up user message")[0]
    except TemplateError:
        mt_append = None

    ignores_agp = full == _render(render, _with_system([{"role": "user", "content": USER_SENTINEL}], system_prompt),
                                  False, what)
    if ignores_agp and end_of_turn is not None and mt_append is not None and not mt_append.startswith(end_of_turn):
        # A template that writes the next assistant header even with add_generation_prompt=False (Command-R7B's
        # tool-use template) leaves that header after every finished exchange: the end of the turn is only what
        # a finished exchange and a follow-up share, cut back to a marker boundary.
        shared = os.path.commonprefix([end_of_turn, mt_append])
        cut = max(shared.rfind(c) + 1 for c in (">", "]", "\n"))
        end_of_turn = shared[:cut] or None
    source = "derived"
    if pre_query_override is not None and system_prompt is None:
        pre_query, source = pre_query_override, "override"
    if not pre_query:
        raise TemplateError(
            "the chat template writes nothing before the user message, so there is no pre-query template; "
            "set generator.pre_query_template by hand"
        )
    return ChatTemplates(pre_query, post_query, end_of_turn, mt_append, system_prompt, source)


def derive_with_tools(make_render: Callable[[dict[str, Any]], Render], source: str, *,
                      pre_query_override: str | None = None, key: str = "generator"
                      ) -> tuple[Render, ChatTemplates, bool]:
    """``derive_templates`` on ``make_render({})``; a tool-use template (one that mentions ``tools``) that cannot
    render without a tools list is rendered with an empty one (``make_render({"tools": []})``). Returns the render
    used, the templates and whether the empty tools list was needed."""
    render = make_render({})
    try:
        return render, derive_templates(render, pre_query_override=pre_query_override), False
    except TemplateError as exc:
        if "tools" not in source:
            raise
        first = exc
    render = make_render({"tools": []})
    try:
        return render, derive_templates(render, pre_query_override=pre_query_override), True
    except TemplateError:
        raise TemplateError(f"{first}; it is a tool-use template that renders neither with nor without an empty "
                            f"tools list: use the model's plain chat template ({key}.chat_template) or give "
                            f"{key}.chat_template_kwargs.tools") from first


def next_user_prefix(render: Render, history: Sequence[Message]) -> str:
    """The text a model sees just before it would write the next user message after ``history``.

    Rendering the history plus a sentinel user turn and cutting there works for every family, including
    templates whose output depends on position (Llama-3.1's system preamble, Mistral's system-in-last-user).
    """
    full = _render(render, [*history, {"role": "user", "content": USER_SENTINEL}], True, "a follow-up turn")
    return _cut_once(full, USER_SENTINEL, "follow-up user message")[0]


def response_prompt(render: Render, history: Sequence[Message]) -> str:
    """The full prompt for the assistant's reply to the last user message of ``history``."""
    return _render(render, list(history), True, "a conversation ending in a user turn")


def jinja_render(template: str, special_tokens: dict[str, str] | None = None) -> Render:
    """A ``Render`` over a raw Jinja chat template, rendered exactly as transformers renders it."""
    from transformers.utils.chat_template_utils import render_jinja_template

    extra = dict(special_tokens or {})

    def render(messages: list[Message], add_generation_prompt: bool) -> str:
        rendered, _ = render_jinja_template(
            conversations=[messages],
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            **extra,
        )
        return rendered[0]

    return render


def tokenizer_render(tokenizer: Any, chat_template: str | None = None, **template_kwargs: Any) -> Render:
    """A ``Render`` over a Hugging Face tokenizer's chat template (or an explicit template string)."""
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise TemplateError(
            f"the tokenizer of '{getattr(tokenizer, 'name_or_path', '?')}' has no chat template; "
            "set generator.chat_template to a Jinja template string or a .jinja file"
        )

    def render(messages: list[Message], add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            chat_template=chat_template,
            **template_kwargs,
        )

    return render
