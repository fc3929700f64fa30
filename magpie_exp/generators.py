"""A generator model ready to use: tokenizer, template renderer, derived Magpie templates, stop and ban ids.

``load_side`` resolves ``generator.model`` (embedded, local or hub), loads the tokenizer, derives the templates
from its chat template (or ``generator.chat_template``) and checks every generator key that can be checked
without an engine, so bad input fails before anything is written or started. Used by ``magpie_exp.generate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magpie_exp.config import ConfigError, GeneratorConfig
from magpie_exp.engines import Engine
from magpie_exp.models import resolve_model
from magpie_exp.templates import ChatTemplates, Render, TemplateError, derive_templates, tokenizer_render


def _load_chat_template(value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if value.endswith(".jinja"):
        if not path.exists():
            raise ConfigError(f"generator.chat_template: file '{value}' does not exist; give a .jinja path or the template text")
        return path.read_text()
    return value


@dataclass
class Side:
    """One generator ready to use: tokenizer, template renderer, derived templates, stop and ban ids."""

    key: str  # "generator" or "response_generator", for error messages
    cfg: GeneratorConfig
    model_path: str
    tokenizer: Any
    render: Render
    templates: ChatTemplates
    stop_token_ids: tuple[int, ...]
    ban_first_token_ids: tuple[int, ...]
    bos_id: int | None
    engine: Engine | None = None
    _prefixes: dict[str | None, tuple[str, list[int]]] = field(default_factory=dict)

    def encode(self, text: str) -> list[int]:
        """Token ids of rendered template text; BOS is added only if the tokenizer wants it and it is absent."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id, *ids]
        return ids

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


def _stop_ids(tokenizer: Any, model_path: str, templates: ChatTemplates) -> tuple[int, ...]:
    """eos ids plus every special token on the turn boundaries (end of turn, next turn's header)."""
    special = set(tokenizer.all_special_ids)
    special |= {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(tok, "special", False)}
    ids = eos_ids(tokenizer, model_path)
    for text in (templates.post_query, templates.end_of_turn or "", templates.mt_append or ""):
        ids.extend(i for i in tokenizer.encode(text, add_special_tokens=False) if i in special)
    return tuple(dict.fromkeys(ids))


def load_side(key: str, gen: GeneratorConfig, cache_dir: Path) -> Side:
    """Resolve the model and derive its templates; fails fast (before any engine starts) on bad input."""
    from transformers import AutoTokenizer

    model_path = resolve_model(gen.model, cache_dir, key=f"{key}.model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=gen.trust_remote_code)
    except OSError as exc:
        raise ConfigError(f"{key}.model: cannot load a tokenizer from '{gen.model}' ({exc.__class__.__name__}); "
                          "check the name, or download the model first") from exc
    chat_template = _load_chat_template(gen.chat_template)
    try:
        render = tokenizer_render(tokenizer, chat_template, **gen.chat_template_kwargs)
        templates = derive_templates(render, pre_query_override=gen.pre_query_template)
    except TemplateError as exc:
        raise ConfigError(f"{key}: {gen.name}: {exc}") from exc
    stop_ids = tuple(gen.stop_token_ids) if gen.stop_token_ids is not None else _stop_ids(tokenizer, model_path, templates)
    ban = []
    for token in gen.ban_first_tokens:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ConfigError(f"{key}.ban_first_tokens: {token!r} is {len(ids)} tokens for this tokenizer; list single tokens only")
        ban.append(ids[0])
    probe = tokenizer("x").input_ids
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id] else None
    return Side(key, gen, model_path, tokenizer, render, templates, stop_ids, tuple(ban), bos)
