"""Chat templates for training base models, with ``{% generation %}`` markers so the loss covers assistant turns
only (TRL's assistant-only loss); the end-of-turn token of each becomes the saved model's stop token."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from magpie_exp.config import ConfigError, DPOSpec, SFTSpec

log = logging.getLogger(__name__)

CHAT_TEMPLATES: dict[str, tuple[str, str]] = {  # name -> (template, end-of-turn token)
    "llama3": (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] | trim }}<|eot_id|>{% endgeneration %}"
        "{% else %}{{ m['content'] | trim }}<|eot_id|>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
        "<|eot_id|>",
    ),
    "gemma": (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}<start_of_turn>model\n"
        "{% generation %}{{ m['content'] | trim }}<end_of_turn>\n{% endgeneration %}"
        "{% else %}<start_of_turn>user\n{{ m['content'] | trim }}<end_of_turn>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
        "<end_of_turn>",
    ),
    "chatml": (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n"
        "{% generation %}{{ m['content'] }}<|im_end|>\n{% endgeneration %}"
        "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "<|im_end|>",
    ),
}


def prepare_tokenizer(model_path: str, spec: SFTSpec | DPOSpec, key: str) -> tuple[Any, str | None]:
    """The tokenizer with a training chat template and a pad token; returns it and the end-of-turn token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    eot = None
    name = getattr(spec, "chat_template", None)
    if name is not None:
        if name in CHAT_TEMPLATES:
            tok.chat_template, eot = CHAT_TEMPLATES[name]
        elif name.endswith(".jinja") and Path(name).exists():
            tok.chat_template = Path(name).read_text()
        else:
            raise ConfigError(f"{key}.chat_template: '{name}' is neither a built-in ({', '.join(CHAT_TEMPLATES)}) "
                              "nor an existing .jinja file")
    if not tok.chat_template:
        raise ConfigError(f"{key}: '{model_path}' has no chat template; set {key}.chat_template to one of "
                          f"{', '.join(CHAT_TEMPLATES)} or a .jinja file")
    if tok.pad_token is None:  # batches need padding; eos is a safe pad when labels mask padding
        log.warning("%s: the tokenizer has no pad token; using its eos token %r for padding", key, tok.eos_token)
        tok.pad_token = tok.eos_token
    return tok, eot


def check_eot(tok: Any, eot: str | None, key: str) -> None:
    if eot is not None and tok.convert_tokens_to_ids(eot) in (None, tok.unk_token_id):
        raise ConfigError(f"{key}.chat_template: its end-of-turn token {eot!r} is not a single token of this "
                          "tokenizer; pick the template family of the model (gemma for Gemma, llama3 for Llama-3)")
