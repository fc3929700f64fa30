"""A generator model ready to use: tokenizer, template renderer, derived Magpie templates, stops and ban ids.

``load_side`` resolves ``generator.model`` (embedded, local or hub), loads the tokenizer, derives the templates
from its chat template (or ``generator.chat_template``) and checks every generator key that can be checked
without an engine, so bad input fails before anything is written or started. Used by ``magpie_exp.stages.generate``,
the pair stage and ``stage=inspect``.

Rules that decide what the model sees and where it stops:

* **Stops come from the template's structure**, not from tokens' ``special`` flags. An instruction stops where
  the user turn ends: the markers of the post-query text (end of turn, the assistant header). A response stops
  where the assistant turn ends: the markers written after an assistant message (end of turn, the next turn's
  header), less those a reasoning format writes inside an assistant message (think tags, harmony's channel
  headers and ``<|end|>``). A marker that is one token of the tokenizer (added token, special or not: DeepSeek's
  ``<｜User｜>`` is not special) is a stop id; one that is not is a stop string. eos ids stop both.
* **BOS is what the template renders**: prompts are tokenized without the tokenizer's own special tokens, as
  vLLM's chat path and ``apply_chat_template(tokenize=True)`` do, so BOS is never doubled, and a model whose
  template writes none (Phi-3.5) gets none, as it does when it is served.
* **The template's date is pinned**: ``strftime_now`` returns ``generator.template_date``, so templates that
  print today's date (Llama-3.2, granite-3.3, Mistral-Small-3.2, gpt-oss, ...) render the same prompt every day.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magpie_exp import reasoning
from magpie_exp.config import ConfigError, GeneratorConfig
from magpie_exp.engines import Completion, Engine
from magpie_exp.models import resolve_model
from magpie_exp.templates import (ChatTemplates, Render, TemplateError, derive_templates, derive_with_tools,
                                  tokenizer_render)

log = logging.getLogger(__name__)


def load_chat_template(value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if value.endswith(".jinja"):
        if not path.exists():
            raise ConfigError(f"generator.chat_template: file '{value}' does not exist; give a .jinja path or the template text")
        return path.read_text()
    return value


@dataclass(frozen=True)
class Stops:
    """Where one kind of turn ends: token ids (markers that are one token) and strings (markers that are not)."""

    token_ids: tuple[int, ...]
    strings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"token_ids": list(self.token_ids), "strings": list(self.strings)}


@dataclass
class Side:
    """One generator ready to use: tokenizer, template renderer, derived templates, stops and ban ids."""

    key: str  # "generator" or "response_generator", for error messages
    cfg: GeneratorConfig
    model_path: str
    tokenizer: Any
    render: Render
    templates: ChatTemplates
    instruction_stops: Stops
    response_stops: Stops
    ban_first_token_ids: tuple[int, ...]
    bos_id: int | None  # the BOS id the template renders at the start of a prompt, if it renders one
    reasoning_format: str = "none"  # magpie_exp.reasoning: none | think | harmony | gemma4
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # what the template was rendered with
    engine: Engine | None = None
    _prefixes: dict[str | None, tuple[str, list[int]]] = field(default_factory=dict)

    def encode(self, text: str) -> list[int]:
        """Token ids of rendered template text, without the tokenizer's own special tokens (BOS is the template's)."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def assistant_message(self, completion: Completion, prompt: str) -> tuple[dict[str, str], bool]:
        """The assistant message of a response: the answer in ``content``, a trace in ``reasoning_content``;
        and whether a trace it opened was closed (False: cut inside it, not an answer)."""
        parsed = reasoning.parse(self.reasoning_format, completion.text, prompt[-256:])
        message = {"role": "assistant", "content": parsed.content}
        if parsed.reasoning is not None:
            message["reasoning_content"] = parsed.reasoning
        return message, parsed.closed

    def prefix(self, system_prompt: str | None) -> tuple[str, list[int]]:
        """The pre-query template (text and ids) with a control-task system prompt, or the default."""
        if system_prompt not in self._prefixes:
            if system_prompt is None:
                templates = self.templates
            else:
                try:
                    templates = derive_templates(self.render, system_prompt=system_prompt)
                except TemplateError as exc:
                    raise ConfigError(f"generate.system_prompts: {self.cfg.name}: {exc}") from exc
            self._prefixes[system_prompt] = (templates.pre_query, self.encode(templates.pre_query))
        return self._prefixes[system_prompt]

    def supports_system(self) -> bool:
        try:
            derive_templates(self.render, system_prompt="You are a helpful assistant.")
            return True
        except TemplateError:
            return False


def eos_ids(tokenizer: Any, model_path: str) -> list[int]:
    """The tokenizer's eos id and the generation config's eos ids (a chat-tuned model's end-of-turn token)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        ids.extend([eos] if isinstance(eos, int) else list(eos or []))
    except (OSError, ValueError):
        pass
    return ids


def _markers(tokenizer: Any, text: str) -> tuple[list[int], list[str]]:
    """The structural markers in a piece of template text: ids of the added tokens it contains (special or not),
    and, when its first marker is not one token (Llama-2's ``[/INST]``, a plain ``ASSISTANT:``), that text."""
    added = set(getattr(tokenizer, "added_tokens_decoder", {})) | set(tokenizer.all_special_ids)
    ids = [i for i in tokenizer.encode(text, add_special_tokens=False) if i in added]
    strings: list[str] = []
    head = text.strip().split(maxsplit=1)
    first = tokenizer.encode(head[0], add_special_tokens=False)[:1] if head else []
    if head and not (first and first[0] in added):
        strings.append(head[0])
    return ids, strings


def structural_stops(tokenizer: Any, model_path: str, templates: ChatTemplates, fmt: str) -> tuple[Stops, Stops]:
    """(instruction stops, response stops) from the template's turn boundaries; see the module docstring."""
    eos = eos_ids(tokenizer, model_path)
    ins_ids, ins_strings = _markers(tokenizer, templates.post_query)
    res_ids: list[int] = []
    res_strings: list[str] = []
    for text in (templates.end_of_turn or "", templates.mt_append or ""):
        ids, strings = _markers(tokenizer, text)
        res_ids += ids
        res_strings += strings
    internal_ids = set()
    for marker in reasoning.internal_markers(fmt):
        ids = tokenizer.encode(marker, add_special_tokens=False)
        if len(ids) == 1:
            internal_ids.add(ids[0])
    res_ids = [i for i in res_ids if i not in internal_ids]
    res_strings = [t for t in res_strings if not any(m in t for m in reasoning.internal_markers(fmt))]
    unique = lambda xs: tuple(dict.fromkeys(xs))  # noqa: E731
    return (Stops(unique(eos + ins_ids), unique(ins_strings)), Stops(unique(eos + res_ids), unique(res_strings)))


def template_kwargs(gen: GeneratorConfig) -> dict[str, Any]:
    """What the chat template is rendered with: the pinned date, the reasoning switch, then the config's own kwargs
    (which win)."""
    try:
        pinned = datetime.datetime.strptime(gen.template_date, "%Y-%m-%d")
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"generator.template_date must be a date like 2026-01-01; got {gen.template_date!r}") from exc

    def strftime_now(fmt: str) -> str:
        return pinned.strftime(fmt)

    kwargs: dict[str, Any] = {"strftime_now": strftime_now}
    if gen.reasoning in ("on", "off"):  # the switches the families read: Qwen3/3.5, SmolLM3, gemma-4, DeepSeek-V3.1
        kwargs.update(enable_thinking=gen.reasoning == "on", thinking=gen.reasoning == "on")
    return {**kwargs, **gen.chat_template_kwargs}


def _derive(tokenizer: Any, chat_template: str | None, kwargs: dict[str, Any], gen: GeneratorConfig, key: str
            ) -> tuple[Render, ChatTemplates, dict[str, Any]]:
    """Derive the templates; a tool-use template that cannot render without a tools list gets an empty one."""
    if "tools" in kwargs:  # the config gives the tools: render with exactly those
        render = tokenizer_render(tokenizer, chat_template, **kwargs)
        return render, derive_templates(render, pre_query_override=gen.pre_query_template), kwargs
    source = chat_template or getattr(tokenizer, "chat_template", "") or ""
    render, templates, needed = derive_with_tools(lambda extra: tokenizer_render(tokenizer, chat_template, **kwargs, **extra),
                                                  source, pre_query_override=gen.pre_query_template, key=key)
    if needed:
        log.info("%s: the chat template needs a tools list; rendered with an empty one (tools=[])", key)
        kwargs = {**kwargs, "tools": []}
    return render, templates, kwargs


def load_side(key: str, gen: GeneratorConfig, cache_dir: Path, tokenizer_only: bool = False) -> Side:
    """Resolve the model and derive its templates; fails fast (before any engine starts) on bad input."""
    from transformers import AutoTokenizer

    model_path = resolve_model(gen.model, cache_dir, key=f"{key}.model", tokenizer_only=tokenizer_only)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=gen.trust_remote_code)
    except OSError as exc:
        raise ConfigError(f"{key}.model: cannot load a tokenizer from '{gen.model}' ({exc.__class__.__name__}); "
                          "check the name, or download the model first") from exc
    chat_template = load_chat_template(gen.chat_template)
    try:
        render, templates, kwargs = _derive(tokenizer, chat_template, template_kwargs(gen), gen, key)
    except TemplateError as exc:
        raise ConfigError(f"{key}: {gen.name}: {exc}") from exc
    source = chat_template or tokenizer.chat_template or ""
    fmt = reasoning.detect(source) if gen.reasoning_format == "auto" else gen.reasoning_format
    if gen.reasoning == "on" and fmt == "none":
        raise ConfigError(f"{key}.reasoning=on but {gen.name}'s chat template writes no reasoning format; use "
                          f"{key}.reasoning=default, or name the format ({key}.reasoning_format=think|harmony|gemma4)")
    ins_stops, res_stops = structural_stops(tokenizer, model_path, templates, fmt)
    if gen.stop_token_ids is not None:
        ins_stops = Stops(tuple(gen.stop_token_ids), ins_stops.strings)
        res_stops = Stops(tuple(gen.stop_token_ids), res_stops.strings)
    ban = []
    for token in gen.ban_first_tokens:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ConfigError(f"{key}.ban_first_tokens: {token!r} is {len(ids)} tokens for this tokenizer; list single tokens only")
        ban.append(ids[0])
    first = tokenizer.encode(templates.pre_query, add_special_tokens=False)[:1]
    bos = first[0] if first and tokenizer.bos_token_id is not None and first[0] == tokenizer.bos_token_id else None
    if bos is None and tokenizer.bos_token_id is not None and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]:
        log.info("%s: %s's template renders no BOS although its tokenizer adds one; prompts follow the template "
                 "(as vLLM's chat path does)", key, gen.name)
    return Side(key, gen, model_path, tokenizer, render, templates, ins_stops, res_stops, tuple(ban), bos, fmt,
                {k: v for k, v in kwargs.items() if k != "strftime_now"})
