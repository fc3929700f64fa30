"""Current model families on their real chat templates (tests/fixtures) and tokenizers that mirror their token
flags (tests/families.py): stops from the template's structure, reasoning split into its own field, pinned dates,
BOS as the template renders it, tool-use templates. Fast: no weights, no engine."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CACHE, schema
from families import FAMILIES, FIXTURES, build
from magpie_exp import reasoning
from magpie_exp.config import ConfigError
from magpie_exp.engines import Completion, Engine
from magpie_exp.stages.generate import run_generate
from magpie_exp.generators import Side, load_side
from magpie_exp.templates import response_prompt

THINK = {"<think>", "</think>"}
HARMONY = {"<|end|>", "<|start|>", "<|message|>", "<|channel|>"}
# family -> (reasoning format, instruction stops that must be there, response stops that must be there, never)
EXPECT = {
    "qwen3": ("think", {"<|im_end|>", "<|im_start|>"}, {"<|im_end|>", "<|im_start|>"}, THINK),
    "qwen3.5": ("think", {"<|im_end|>", "<|im_start|>"}, {"<|im_end|>", "<|im_start|>"}, THINK),
    "gpt-oss": ("harmony", {"<|end|>", "<|start|>"}, {"<|return|>", "<|call|>"}, HARMONY),
    "deepseek-r1-distill-llama": ("think", {"<｜Assistant｜>"}, {"<｜end▁of▁sentence｜>", "<｜User｜>"}, THINK),
    "deepseek-r1-distill-qwen": ("think", {"<｜Assistant｜>"}, {"<｜end▁of▁sentence｜>", "<｜User｜>"}, THINK),
    "deepseek-v3.1": ("think", {"<｜Assistant｜>"}, {"<｜end▁of▁sentence｜>", "<｜User｜>"}, THINK),
    "gemma-4": ("gemma4", {"<turn|>", "<|turn>"}, {"<turn|>", "<|turn>"}, {"<|channel>", "<channel|>"}),
    "llama3.2": ("none", {"<|eot_id|>", "<|start_header_id|>"}, {"<|eot_id|>", "<|start_header_id|>"}, set()),
    "mistral-small-3.2": ("none", {"[/INST]"}, {"</s>", "[INST]"}, set()),
    "granite-4": ("none", {"<|end_of_text|>", "<|start_of_role|>"}, {"<|end_of_text|>", "<|start_of_role|>"}, set()),
    "smollm3": ("think", {"<|im_end|>", "<|im_start|>"}, {"<|im_end|>", "<|im_start|>"}, THINK),
    "phi3.5": ("none", {"<|end|>", "<|assistant|>"}, {"<|end|>", "<|user|>"}, set()),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("families")
    return {name: build(name, out) for name in FAMILIES}


def side(folders: dict[str, Path], name: str, *overrides: str) -> Side:
    gen = schema(f"generator.model={folders[name]}", f"generator.name={name}", *overrides).generator
    return load_side("generator", gen, CACHE)


def tokens(s: Side, ids) -> set[str]:
    return set(s.tokenizer.convert_ids_to_tokens(list(ids)))


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_stops_come_from_the_template_structure(folders, name: str) -> None:
    s = side(folders, name)
    fmt, ins_must, res_must, never = EXPECT[name]
    assert s.reasoning_format == fmt
    ins, res = tokens(s, s.instruction_stops.token_ids), tokens(s, s.response_stops.token_ids)
    assert ins_must <= ins, (ins_must - ins, ins)
    assert res_must <= res, (res_must - res, res)
    assert not res & never, res & never  # markers inside an assistant message never end it
    assert s.templates.pre_query and s.templates.post_query


def test_gpt_oss_responses_are_not_cut_at_their_channel_header(folders) -> None:
    """The harmony reply begins <|channel|>analysis<|message|>: none of it may stop the response (it did)."""
    s = side(folders, "gpt-oss")
    reply = "<|channel|>analysis<|message|>The user asks for 2+2.<|end|><|start|>assistant<|channel|>final<|message|>4"
    ids = s.tokenizer.encode(reply, add_special_tokens=False)
    assert not set(ids) & set(s.response_stops.token_ids)
    assert not any(stop in reply for stop in s.response_stops.strings)


def test_deepseek_instructions_stop_at_the_assistant_marker_that_is_not_special(folders) -> None:
    s = side(folders, "deepseek-r1-distill-llama")
    assistant = s.tokenizer.convert_tokens_to_ids("<｜Assistant｜>")
    assert assistant not in s.tokenizer.all_special_ids  # the real flag: "special": false
    assert assistant in s.instruction_stops.token_ids
    assert s.templates.post_query.endswith("<｜Assistant｜><think>\n")  # the template opens the trace


def _round_trip(s: Side, history: list[dict], reply: str, tail: str) -> None:
    """Render history + a reasoning reply through the template, cut the reply out, parse it back."""
    messages = [*history, {"role": "assistant", "content": reply, "reasoning_content": "R2 steps", "thinking": "R2 steps"}]
    full = s.render(messages, False)
    prompt = response_prompt(s.render, history)
    assert full.startswith(prompt), (prompt[-80:], full[len(prompt) - 80:])
    generated = full[len(prompt):]
    assert generated.endswith(tail), generated[-40:]
    generated = generated[: len(generated) - len(tail)]
    message, closed = s.assistant_message(Completion(generated, 9, "stop"), prompt)
    assert closed and message == {"role": "assistant", "content": reply, "reasoning_content": "R2 steps"}, generated


HISTORY = [{"role": "user", "content": "What is 2+2?"},
           {"role": "assistant", "content": "4", "reasoning_content": "R1 adds", "thinking": "R1 adds"},
           {"role": "user", "content": "And 3+3?"}]


@pytest.mark.parametrize(("name", "tail"), [("qwen3", "<|im_end|>\n"), ("qwen3.5", "<|im_end|>\n"),
                                             ("gpt-oss", "<|return|>")])
def test_reasoning_is_split_from_a_real_multi_turn_render(folders, name: str, tail: str) -> None:
    _round_trip(side(folders, name), HISTORY, "6", tail)


def test_smollm3_writes_its_trace_after_the_generation_prompt(folders) -> None:
    s = side(folders, "smollm3")  # its template renders no trace of earlier turns; the model writes <think> itself
    prompt = response_prompt(s.render, HISTORY)
    assert prompt.endswith("<|im_start|>assistant\n") and "Reasoning Mode: /think" in prompt
    message, closed = s.assistant_message(Completion("<think>\nadd 3 and 3\n</think>\n6", 9, "stop"), prompt)
    assert closed and message == {"role": "assistant", "content": "6", "reasoning_content": "add 3 and 3"}
    off = side(folders, "smollm3", "generator.reasoning=off")
    assert off.templates.post_query.endswith("<think>\n\n</think>\n")  # a closed empty trace: answers only
    assert off.assistant_message(Completion("6", 1, "stop"), off.templates.post_query)[0] == {"role": "assistant", "content": "6"}


def test_reasoning_opened_by_the_template_deepseek_r1(folders) -> None:
    # llama.cpp's copy of this template closes the trace unless enable_thinking (the model's own always opens it)
    assert side(folders, "deepseek-r1-distill-qwen").templates.post_query.endswith("<｜Assistant｜><think>\n</think>")
    s = side(folders, "deepseek-r1-distill-qwen", "generator.reasoning=on")
    prompt = response_prompt(s.render, HISTORY)
    assert prompt.endswith("<｜Assistant｜><think>\n") and "R1 adds" not in prompt  # history traces are dropped
    message, closed = s.assistant_message(Completion("Add 3 and 3.\n</think>\n\n6", 9, "stop"), prompt)
    assert closed and message == {"role": "assistant", "content": "6", "reasoning_content": "Add 3 and 3."}
    cut, closed = s.assistant_message(Completion("Add 3 and 3, then keep thinking and", 512, "length"), prompt)
    assert not closed and cut["content"] == ""  # cut inside the trace: never passed off as an answer


def test_deepseek_v31_and_gemma4_switches(folders) -> None:
    on, off = side(folders, "deepseek-v3.1", "generator.reasoning=on"), side(folders, "deepseek-v3.1", "generator.reasoning=off")
    assert on.templates.post_query.endswith("<｜Assistant｜><think>") and off.templates.post_query.endswith("</think>")
    msg, _ = off.assistant_message(Completion("Six.", 2, "stop"), off.templates.post_query)
    assert msg == {"role": "assistant", "content": "Six."}
    g_off, g_on = side(folders, "gemma-4", "generator.reasoning=off"), side(folders, "gemma-4", "generator.reasoning=on")
    assert g_off.templates.post_query.endswith("<|turn>model\n<|channel>thought\n<channel|>")
    assert "<|think|>" in g_on.templates.pre_query and g_on.templates.post_query.endswith("<|turn>model\n")
    msg, closed = g_on.assistant_message(Completion("<|channel>thought\nadd them<channel|>6", 9, "stop"), g_on.templates.post_query)
    assert closed and msg == {"role": "assistant", "content": "6", "reasoning_content": "add them"}
    with pytest.raises(ConfigError, match="generator.reasoning=on but llama3.2's chat template writes no reasoning"):
        side(folders, "llama3.2", "generator.reasoning=on")


def test_instructions_carry_no_trace() -> None:
    assert reasoning.has_markers("think", "<think>hmm</think> Write a poem")
    assert not reasoning.has_markers("think", "Write a poem about thinking")
    assert not reasoning.has_markers("none", "<think>")


def test_template_dates_are_pinned(folders, monkeypatch) -> None:
    """Llama-3.2 and gpt-oss print today's date: the same config renders the same prompt on any day."""
    import transformers.utils.chat_template_utils as ctu

    renders = []
    for day in (datetime.datetime(2030, 5, 17), datetime.datetime(2031, 12, 1)):
        class Frozen(datetime.datetime):
            today = day

            @classmethod
            def now(cls, tz=None):  # noqa: ANN206
                return cls.today
        monkeypatch.setattr(ctu, "datetime", Frozen)
        renders.append((side(folders, "llama3.2").templates.pre_query, side(folders, "gpt-oss").templates.pre_query))
    assert renders[0] == renders[1]
    llama, oss = renders[0]
    assert "Today Date: 01 Jan 2026" in llama and "Current date: 2026-01-01" in oss
    other = side(folders, "llama3.2", "generator.template_date=2025-06-30").templates.pre_query
    assert "Today Date: 30 Jun 2025" in other
    from magpie_exp.stages.keys import generate_payload  # the date is part of the stage hash

    assert generate_payload(schema())["generator"]["template_date"] == "2026-01-01"
    with pytest.raises(ConfigError, match="generator.template_date must be a date like 2026-01-01; got 'soon'"):
        schema("generator.template_date=soon")


@pytest.mark.parametrize(("name", "bos"), [("phi3.5", None), ("llama3.2", "<|begin_of_text|>"),
                                           ("deepseek-r1-distill-llama", "<｜begin▁of▁sentence｜>"), ("qwen3", None)])
def test_bos_is_what_the_template_renders_never_twice(folders, name: str, bos: str | None) -> None:
    s = side(folders, name)
    ids = s.encode(s.templates.pre_query)
    first = s.tokenizer.convert_ids_to_tokens(ids[:1])[0]
    if bos is None:  # Phi-3.5: no BOS in its template nor from its tokenizer, as vLLM's chat path sends it
        assert s.bos_id is None and first != "<s>"
    else:
        assert s.bos_id == s.tokenizer.convert_tokens_to_ids(bos) and first == bos
        assert ids.count(s.bos_id) == 1  # the tokenizer adds one too: not applied


def test_tool_use_template_renders_with_an_empty_tools_list(folders) -> None:
    s = side(folders, "hermes-2-pro-tool-use")
    assert s.template_kwargs.get("tools") == [] and s.templates.pre_query.endswith("<|im_start|>user\n")


def test_formats_listed_in_the_schema_match_the_parsers() -> None:
    schema_formats = ("auto", "none", "think", "harmony", "gemma4")  # config._validate_generator
    assert reasoning.FORMATS == schema_formats
    for fmt in reasoning.FORMATS:
        schema(f"generator.reasoning_format={fmt}")
    with pytest.raises(ConfigError, match="generator.reasoning_format must be one of"):
        schema("generator.reasoning_format=xml")


def test_sft_text_includes_traces_only_when_asked() -> None:
    from magpie_exp.records import training_messages

    record = {"messages": [{"role": "user", "content": "2+2?"},
                           {"role": "assistant", "content": "4", "reasoning_content": "add"}]}
    assert training_messages(record)[1] == {"role": "assistant", "content": "4"}
    assert training_messages(record, include_reasoning=True)[1]["content"] == "<think>\nadd\n</think>\n\n4"


CONFIGS = {  # conf/generator/<name>.yaml -> the family whose template and token flags it runs on
    "qwen3-8b": "qwen3", "qwen3-8b-thinking": "qwen3", "gpt-oss-20b": "gpt-oss", "gpt-oss-120b": "gpt-oss",
    "deepseek-r1-distill-llama-8b": "deepseek-r1-distill-llama", "deepseek-r1-distill-llama-70b": "deepseek-r1-distill-llama",
    "deepseek-r1-distill-qwen-32b": "deepseek-r1-distill-qwen", "deepseek-v3.1": "deepseek-v3.1",
    "llama3.2-3b-instruct": "llama3.2", "gemma4-31b-it": "gemma-4", "mistral-small-3.2-24b-instruct": "mistral-small-3.2",
    "granite4-h-small": "granite-4", "smollm3-3b": "smollm3",
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_current_family_configs_on_their_real_templates(folders, config: str) -> None:
    """Each shipped config, its model swapped for the mirrored tokenizer: templates, stops and reasoning format."""
    name = CONFIGS[config]
    cfg = schema(f"generator={config}")
    s = side(folders, name, f"generator={config}")
    fmt, ins_must, res_must, never = EXPECT[name]
    assert s.reasoning_format == fmt and cfg.generator.template_date == "2026-01-01"
    assert ins_must <= tokens(s, s.instruction_stops.token_ids) and res_must <= tokens(s, s.response_stops.token_ids)
    assert not tokens(s, s.response_stops.token_ids) & never
    post = s.templates.post_query
    if cfg.generator.reasoning == "off":  # answers only: the trace is closed empty or never opened
        assert not reasoning._open_block(post, "<think>", "</think>"), post
    if cfg.generator.reasoning == "on":  # the prompt leaves room for a trace: opened, or the model opens it
        assert not post.rstrip().endswith(("</think>", "<channel|>")), post
    assert cfg.generator.instruction.temperature == 1.0 and cfg.generator.response.max_tokens >= 4096


def _inspect(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("magpie-exp"))
    return subprocess.run([exe, "stage=inspect", *args, f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "MAGPIE_EXP_CACHE": str(CACHE)})


def test_inspect_a_tokenizer_folder_in_seconds(folders, tmp_path: Path) -> None:
    """The real command on a tokenizer-only folder (gpt-oss's flags and template): JSON on stdout, nothing started."""
    folder = tmp_path / "tok"
    shutil.copytree(folders["gpt-oss"], folder)
    (folder / "config.json").unlink()  # no model config, no weights: a tokenizer alone
    start = time.perf_counter()
    proc = _inspect("generator=gpt-oss-20b", f"generator.model={folder}", "inspect.json=true", tmp_path=tmp_path)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)["generator"]
    assert report["reasoning"]["format"] == "harmony" and report["template_date"] == "2026-01-01"
    assert report["template_prints_a_date"] and "Current date: 2026-01-01" in report["pre_query"]
    assert "<|return|>" in report["response_stops"]["tokens"] and "<|end|>" not in report["response_stops"]["tokens"]
    assert "<|end|>" in report["instruction_stops"]["tokens"] and report["bos"]["id"] is None
    assert "<<INSTRUCTION 2>>" in report["example"] and report["example"].endswith("<<RESPONSE 2>><|return|>")
    # the template writes earlier replies with their channel header (the model writes it itself in a new reply)
    assert report["example_matches_template"] is False
    assert report["reasoning"]["template_kwargs"] == {"reasoning_effort": "medium"}
    assert seconds < 60, seconds  # Hydra and transformers imports; no model, no engine
    assert not (tmp_path / "outputs").exists()


def test_inspect_text_report_with_a_template_file(folders, tmp_path: Path) -> None:
    """generator.chat_template=<file.jinja> overrides the folder's template: here DeepSeek-V3.1's on Qwen3's tokens."""
    template = tmp_path / "v31.jinja"
    template.write_text((FIXTURES / "deepseek-ai-DeepSeek-V3.1.jinja").read_text())
    proc = _inspect(f"generator.model={folders['deepseek-v3.1']}", f"generator.chat_template={template}",
                    "generator.reasoning=on", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "post-query:" in out and "<｜Assistant｜><think>" in out and "reasoning: format think, switch on" in out
    assert "instruction stops: ids [" in out and "'<｜Assistant｜>'" in out and "BOS: '<｜begin▁of▁sentence｜>'" in out


def test_harmony_parse_keeps_only_the_final_channel_as_the_answer() -> None:
    tool_call = ("<|channel|>analysis<|message|>call it<|end|><|start|>assistant<|channel|>commentary "
                 "to=functions.f <|constrain|>json<|message|>{}")
    parsed = reasoning.parse("harmony", tool_call)
    assert not parsed.closed and parsed.content == ""  # no final message: not an answer
    parsed = reasoning.parse("harmony", "<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>final<|message|>B")
    assert (parsed.content, parsed.reasoning, parsed.closed) == ("B", "a", True)
    assert reasoning.parse("harmony", "no channels at all") == reasoning.Parsed("no channels at all", None)


class _StopAfterPrepare(Engine):
    """Stands in for the engine of a run killed before its first shard (the manifest is written by then)."""

    def generate(self, requests):  # noqa: ANN001, ANN201
        raise KeyboardInterrupt


def test_a_resume_never_mixes_two_renderings_of_the_template(folders, tmp_path: Path) -> None:
    """The rendered pre-query is kept in the manifest; a resume whose template renders differently (the model's
    template changed since) is refused with one line instead of adding shards made from another prompt."""
    folder = tmp_path / "qwen3"
    shutil.copytree(folders["qwen3"], folder)
    cfg = schema(f"generator.model={folder}", "generator.name=qwen3", f"paths.outputs={tmp_path / 'out'}",
                 "generate.count=2", "generate.shard_size=2")
    with pytest.raises(KeyboardInterrupt):
        run_generate(cfg, engines={"generator": _StopAfterPrepare()}, show_progress=False)
    manifest = json.loads(next((tmp_path / "out").glob("stages/generate/*/manifest.json")).read_text())
    assert manifest["rendered_templates"]["generator"]["pre_query"] == "<|im_start|>user\n"
    with pytest.raises(KeyboardInterrupt):  # the same rendering: resumes
        run_generate(cfg, engines={"generator": _StopAfterPrepare()}, show_progress=False)
    template = folder / "chat_template.jinja"  # where transformers keeps a saved tokenizer's template
    template.write_text("{{ 'SYSTEM: be brief\\n' }}" + template.read_text())
    with pytest.raises(ConfigError, match="was begun with another rendering of generator's chat template"):
        run_generate(cfg, engines={"generator": _StopAfterPrepare()}, show_progress=False)
