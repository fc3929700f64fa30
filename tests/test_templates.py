"""Template derivation over real chat templates, checked against the official Magpie table (reference section 2.2
of the official repository's model_configs.json) and the overrides in conf/generator/.

The core tests read the project's own copies (tests/fixtures/chat_templates, sources in its SOURCES.md), so they
run, and can fail, on a fresh clone; the sweep adds every template of ../shared/data/chat_templates when present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SHARED
from magpie_exp.templates import (
    ASSISTANT_SENTINEL,
    USER_SENTINEL,
    TemplateError,
    derive_templates,
    derive_with_tools,
    jinja_render,
    next_user_prefix,
    response_prompt,
)

TEMPLATES = REPO / "tests" / "fixtures" / "chat_templates"
SPECIAL = json.loads((TEMPLATES / "special_tokens.json").read_text())
EXTRA = SHARED / "data" / "chat_templates"  # more coverage where ../shared is beside the clone
FILES = sorted(TEMPLATES.glob("*.jinja")) + sorted(
    p for p in [*EXTRA.glob("*.jinja"), *(EXTRA / "history").glob("*.jinja")] if not (TEMPLATES / p.name).exists())

# Official pre-query templates (magpie configs/model_configs.json, reference section 2.2).
OFFICIAL = {
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
    "qwen2.5": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
    "gemma2": "<bos><start_of_turn>user\n\n",
    "phi3": "<s> <|user|>\n",
    "mistral": "<s> [INST] ",
}


def _render(path: Path, **tokens: str):
    special = {k: v for k, v in SPECIAL.get(path.name, {}).items() if k in ("bos_token", "eos_token")}
    return jinja_render(path.read_text(), {**special, **tokens})


def _generator(name: str) -> dict:
    return yaml.safe_load((REPO / "conf" / "generator" / f"{name}.yaml").read_text())


def _derive(path: Path):
    """Derive as load_side does: a tool-use template gets an empty tools list when it needs one."""
    return derive_with_tools(lambda extra: _render(path, **extra), path.read_text())


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_template_derives_or_says_why(path: Path) -> None:
    try:
        render, templates, _ = _derive(path)
    except TemplateError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < 400
        assert "fails to render" in message or "set generator." in message or "cannot" in message
        return
    full = render([{"role": "user", "content": USER_SENTINEL}], True)
    assert templates.pre_query and full == templates.pre_query + USER_SENTINEL + templates.post_query
    assert USER_SENTINEL not in templates.post_query
    if templates.end_of_turn is not None:
        two = render([{"role": "user", "content": USER_SENTINEL}, {"role": "assistant", "content": ASSISTANT_SENTINEL}], False)
        # what follows a finished assistant turn starts with its end of turn (and is nothing more, except in
        # templates that always append the next header or a tool preamble: cut back, see derive_templates)
        after = two.split(ASSISTANT_SENTINEL, 1)[1]
        assert after.startswith(templates.end_of_turn)
        assert after == templates.end_of_turn or not (templates.mt_append or "").startswith(after)


def test_the_fixtures_and_their_sources_are_complete() -> None:
    listed = (TEMPLATES / "SOURCES.md").read_text()
    files = sorted(p.name for p in TEMPLATES.glob("*.jinja"))
    assert len(files) >= 19 and all(f"`{name}`" in listed for name in files)


def test_a_good_share_of_real_templates_derive() -> None:
    derived = 0
    for path in FILES:
        try:
            _derive(path)
            derived += 1
        except TemplateError:
            pass
    assert derived >= 0.8 * len(FILES)


def test_qwen25_derived_equals_official_with_default_system() -> None:
    templates = derive_templates(_render(TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja"))
    assert templates.pre_query == OFFICIAL["qwen2.5"]
    assert templates.post_query == "<|im_end|>\n<|im_start|>assistant\n"
    assert templates.mt_append == "<|im_end|>\n<|im_start|>user\n"


@pytest.mark.parametrize("file,config", [
    ("meta-llama-Llama-3.1-8B-Instruct.jinja", "llama3.1-8b-instruct"),
    ("meta-llama-Llama-3.3-70B-Instruct.jinja", "llama3.3-70b-instruct"),
])
def test_llama31_dated_preamble_is_a_documented_override(file: str, config: str) -> None:
    derived = derive_templates(_render(TEMPLATES / file))
    # The template always writes a dated system turn; the official table leaves it out on purpose.
    assert derived.pre_query.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date")
    assert derived.pre_query.endswith("<|start_header_id|>user<|end_header_id|>\n\n")
    assert derived.post_query == "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    override = _generator(config)["pre_query_template"]
    assert override == OFFICIAL["llama3"]
    with_override = derive_templates(_render(TEMPLATES / file), pre_query_override=override)
    assert with_override.pre_query == OFFICIAL["llama3"] and with_override.pre_query_source == "override"
    assert "dated system preamble" in (REPO / "conf" / "generator" / f"{config}.yaml").read_text()


def test_gemma2_double_newline_is_a_documented_override() -> None:
    derived = derive_templates(_render(TEMPLATES / "google-gemma-2-2b-it.jinja"))
    assert derived.pre_query == "<bos><start_of_turn>user\n"
    assert derived.pre_query + "\n" == OFFICIAL["gemma2"]
    assert _generator("gemma2-9b-it")["pre_query_template"] == OFFICIAL["gemma2"]
    assert derived.mt_append == "<end_of_turn>\n<start_of_turn>user\n"
    with pytest.raises(TemplateError, match="fails to render"):  # Gemma-2 refuses system turns
        derive_templates(_render(TEMPLATES / "google-gemma-2-2b-it.jinja"), system_prompt="You do maths.")


def test_phi35_gets_no_bos_as_vllm_serves_it() -> None:
    derived = derive_templates(_render(TEMPLATES / "microsoft-Phi-3.5-mini-instruct.jinja"))
    # Official "<s> <|user|>\n" writes a BOS as text; Phi-3.5's template renders none and its tokenizer adds none
    # (add_bos_token: false), so vLLM's chat path sends none: we follow the model as it is served
    # (tests/test_families.py checks the ids on a tokenizer with Phi-3.5's flags).
    assert derived.pre_query == "<|user|>\n" == OFFICIAL["phi3"].replace("<s> ", "")
    assert "no BOS" in (REPO / "conf" / "generator" / "phi3.5-mini-instruct.yaml").read_text()


def test_mistral_differs_only_in_sentencepiece_spacing() -> None:
    derived = derive_templates(_render(TEMPLATES / "mistralai-Mistral-Nemo-Instruct-2407.jinja", bos_token="<s>", eos_token="</s>"))
    assert derived.pre_query == "<s>[INST]"
    assert derived.pre_query.replace(" ", "") == OFFICIAL["mistral"].replace(" ", "")


def test_control_task_system_prompt_goes_before_the_user_turn() -> None:
    render = _render(TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja")
    templates = derive_templates(render, system_prompt="Du hilfst bei Mathematik.")
    assert templates.pre_query == "<|im_start|>system\nDu hilfst bei Mathematik.<|im_end|>\n<|im_start|>user\n"


def test_multi_turn_prefix_works_for_every_family_not_only_llama() -> None:
    history = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}]
    gemma = next_user_prefix(_render(TEMPLATES / "google-gemma-2-2b-it.jinja"), history)
    assert gemma == "<bos><start_of_turn>user\nHi?<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\n"
    phi = next_user_prefix(_render(TEMPLATES / "microsoft-Phi-3.5-mini-instruct.jinja"), history)
    assert phi.endswith("<|assistant|>\nHello!<|end|>\n<|user|>\n")
    llama = response_prompt(_render(TEMPLATES / "meta-llama-Llama-3.1-8B-Instruct.jinja"), history + [{"role": "user", "content": "More?"}])
    assert llama.endswith("More?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_template_that_drops_the_message_is_refused_with_the_fix() -> None:
    def render(messages, add_generation_prompt):
        return "<|user|>\n" + ("<|assistant|>\n" if add_generation_prompt else "")

    with pytest.raises(TemplateError, match="set generator.pre_query_template"):
        derive_templates(render)


def test_template_without_generation_prompt_is_refused() -> None:
    def render(messages, add_generation_prompt):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages)

    with pytest.raises(TemplateError, match="generation prompt"):
        derive_templates(render)


def test_a_template_that_always_writes_the_assistant_header_is_cut_at_the_end_of_the_turn() -> None:
    """Command-R7B's tool-use template writes <|CHATBOT_TOKEN|> after an assistant turn even with
    add_generation_prompt=False (and needs a tools list): the end of turn must not include the next header."""
    path = TEMPLATES / "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja"
    render, templates, needed_tools = _derive(path)
    finished = render([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}], False)
    assert finished.endswith("<|CHATBOT_TOKEN|><|START_THINKING|><|END_THINKING|>")  # what the template writes
    assert templates.end_of_turn == "<|END_RESPONSE|><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
    assert "<|CHATBOT_TOKEN|>" not in templates.end_of_turn and templates.mt_append.startswith(templates.end_of_turn)
